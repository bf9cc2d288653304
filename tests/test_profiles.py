import pytest

from bnlab.profiles import PROFILE_ENV, current_profile


def test_default_profile_is_the_full_course(monkeypatch):
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    profile = current_profile()
    assert profile.name == "full" and profile.epochs == 50 and profile.train_samples is None
    assert len(profile.seeds) >= 3


def test_ci_profile_is_smaller_in_epochs_seeds_and_samples(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "ci")
    ci = current_profile()
    monkeypatch.setenv(PROFILE_ENV, "full")
    full = current_profile()
    assert ci.epochs < full.epochs and len(ci.seeds) <= len(full.seeds) and ci.train_samples is not None
    assert len(ci.seeds) >= 2  # a spread needs two seeds at least


def test_unknown_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "fast")
    with pytest.raises(ValueError, match="'ci', 'full'"):
        current_profile()
