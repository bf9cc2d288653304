import json
import math
import statistics

import pytest

from bnlab import experiments
from bnlab.data import Dataset, load_mnist
from bnlab.experiments import (
    Spread,
    SeedRuns,
    compare,
    results_table,
    run,
    run_key,
    run_seeds,
    run_variants,
    comparisons_table,
)
from bnlab.models import MLPConfig
from bnlab.training import EpochStats, History, TrainConfig

SHORT = TrainConfig(epochs=1, batch_size=200)


def without_seconds(history: History) -> list[tuple]:
    return [(e.epoch, e.loss, e.train_acc, e.val_acc) for e in history.epochs] + [history.test_acc]


def fake_history(dataset="MNIST-10k subset", losses=(1.0, 0.5), test_acc=90.0) -> History:
    epochs = [EpochStats(i + 1, loss, 80.0 + i, 70.0 + i, 0.1) for i, loss in enumerate(losses)]
    return History(dataset, "cpu", epochs, test_acc)


class CountingTrainer:
    """Stands in for ``train_mlp``: records each call and returns a History that tells the calls apart."""

    def __init__(self):
        self.calls = []

    def __call__(self, model_config, data, config, *, device=None, progress=True):
        self.calls.append((model_config, config, data.name))
        return None, fake_history(data.name, losses=(1.0, 1.0 / len(self.calls)), test_acc=float(len(self.calls)))


@pytest.fixture
def trainer(monkeypatch):
    counting = CountingTrainer()
    monkeypatch.setattr(experiments, "train_mlp", counting)
    return counting


def cache_files(cache):
    return sorted(p.name for p in cache.iterdir())


# --- the cache ------------------------------------------------------------------------------------------------------


def test_a_cache_hit_returns_the_same_history_without_training(small_data, tmp_path, monkeypatch):
    first = run(MLPConfig(), SHORT, small_data, cache=tmp_path, device="cpu")

    def must_not_train(*args, **kwargs):
        raise AssertionError("train_mlp was called although the run is cached")

    monkeypatch.setattr(experiments, "train_mlp", must_not_train)
    again = run(MLPConfig(), SHORT, small_data, cache=tmp_path, device="cpu")
    assert again == first
    assert without_seconds(again) == without_seconds(first)
    assert len(cache_files(tmp_path)) == 1


def test_the_cache_lives_where_BNLAB_CACHE_says(small_data, tmp_path, monkeypatch, trainer):
    monkeypatch.setenv("BNLAB_CACHE", str(tmp_path / "from-env"))
    run(MLPConfig(), SHORT, small_data)
    assert len(cache_files(tmp_path / "from-env")) == 1


@pytest.mark.parametrize(
    "model, config",
    [
        (MLPConfig(placement="after"), SHORT),
        (MLPConfig(dropout=0.5), SHORT),
        (MLPConfig(hidden=(75, 40)), SHORT),
        (MLPConfig(), TrainConfig(epochs=2, batch_size=200)),
        (MLPConfig(), TrainConfig(epochs=1, batch_size=200, lr=0.05)),
        (MLPConfig(), TrainConfig(epochs=1, batch_size=200, seed=7)),
    ],
)
def test_a_changed_model_or_train_config_trains_anew(small_data, tmp_path, trainer, model, config):
    baseline = run(MLPConfig(), SHORT, small_data, cache=tmp_path)
    changed = run(model, config, small_data, cache=tmp_path)
    assert len(trainer.calls) == 2 and trainer.calls[1][:2] == (model, config)
    assert changed != baseline
    assert len(cache_files(tmp_path)) == 2
    assert run(MLPConfig(), SHORT, small_data, cache=tmp_path) == baseline  # both stay cached
    assert len(trainer.calls) == 2


def test_a_changed_data_set_trains_anew(small_data, subset_root, tmp_path, trainer):
    run(MLPConfig(), SHORT, small_data, cache=tmp_path)
    fewer_images = load_mnist(subset_root, train_samples=500)
    renamed = Dataset("another name", small_data.train, small_data.val, small_data.test)
    run(MLPConfig(), SHORT, fewer_images, cache=tmp_path)
    run(MLPConfig(), SHORT, renamed, cache=tmp_path)
    assert len(trainer.calls) == 3
    keys = {run_key(MLPConfig(), SHORT, d) for d in (small_data, fewer_images, renamed)}
    assert len(keys) == 3


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: "",  # empty
        lambda text: "\x00\xff garbage",  # not JSON
        lambda text: json.dumps({"dataset": "MNIST-10k subset"}),  # JSON, but not a History
        lambda text: json.dumps([1, 2, 3]),
    ],
    ids=["truncated", "empty", "garbage", "incomplete", "wrong-type"],
)
def test_a_corrupt_or_truncated_cache_file_is_recomputed_not_crashed_on(small_data, tmp_path, trainer, damage):
    first = run(MLPConfig(), SHORT, small_data, cache=tmp_path)
    (path,) = tmp_path.iterdir()
    path.write_text(damage(path.read_text()))
    again = run(MLPConfig(), SHORT, small_data, cache=tmp_path)
    assert len(trainer.calls) == 2
    assert again != first  # the second call's History, not the damaged file
    assert History.from_dict(json.loads(path.read_text())) == again  # and the file is whole again


def test_an_interrupted_write_leaves_no_partial_file(small_data, tmp_path, monkeypatch, trainer):
    real_dump = json.dump

    def dump_then_fail(payload, f, **kwargs):
        f.write(json.dumps(payload)[:20])  # part of the file is written...
        raise KeyboardInterrupt  # ...then the run is interrupted

    monkeypatch.setattr(experiments.json, "dump", dump_then_fail)
    with pytest.raises(KeyboardInterrupt):
        run(MLPConfig(), SHORT, small_data, cache=tmp_path)
    assert cache_files(tmp_path) == []  # neither the entry nor a temporary file

    monkeypatch.setattr(experiments.json, "dump", real_dump)
    stored = run(MLPConfig(), SHORT, small_data, cache=tmp_path)
    (path,) = tmp_path.iterdir()
    before = path.read_text()

    monkeypatch.setattr(experiments.json, "dump", dump_then_fail)
    with pytest.raises(KeyboardInterrupt):
        experiments.write_json_atomic(path, fake_history().to_dict())
    assert path.read_text() == before  # an interrupted overwrite keeps the old entry whole
    assert cache_files(tmp_path) == [path.name]
    assert run(MLPConfig(), SHORT, small_data, cache=tmp_path) == stored


def test_run_seeds_runs_each_seed_once_in_order(small_data, tmp_path, trainer):
    histories = run_seeds(MLPConfig(), SHORT, small_data, (3, 1, 2), cache=tmp_path)
    assert [call[1].seed for call in trainer.calls] == [3, 1, 2]
    assert all(call[1].epochs == SHORT.epochs for call in trainer.calls)
    assert len(histories) == 3
    assert run_seeds(MLPConfig(), SHORT, small_data, (3, 1, 2), cache=tmp_path) == histories
    assert len(trainer.calls) == 3
    with pytest.raises(ValueError, match="seeds is empty"):
        run_seeds(MLPConfig(), SHORT, small_data, (), cache=tmp_path)


# --- spread, tables and comparisons --------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [(97.5, 97.9, 98.1), (1.0, 2.0), (0.25, 0.5, 0.75, 3.0, -1.0)])
def test_spread_is_the_mean_and_sample_standard_deviation(values):
    spread = Spread.of(values)
    assert spread.mean == pytest.approx(statistics.fmean(values))
    assert spread.std == pytest.approx(statistics.stdev(values))
    assert spread.values == tuple(values)


def test_spread_of_one_value_has_no_spread_and_formats_like_a_number():
    assert Spread.of([3]).std == 0.0
    spread = Spread.of([1.0, 2.0])
    assert str(spread) == "1.50 ± 0.71"
    assert f"{spread:.4f}" == "1.5000 ± 0.7071"


def seed_runs(label, test_accs, *, losses=None, model=MLPConfig(), dataset="MNIST-10k subset", seeds=None):
    losses = losses or [0.1] * len(test_accs)
    histories = [fake_history(dataset, losses=(1.0, loss), test_acc=acc) for acc, loss in zip(test_accs, losses)]
    return SeedRuns(label, model, tuple(seeds or range(1, len(test_accs) + 1)), tuple(histories))


def test_seed_runs_give_one_value_per_seed_and_the_run_of_a_seed():
    runs = seed_runs("BN", [97.0, 98.0, 96.0], losses=[0.3, 0.2, 0.1], seeds=(5, 6, 7))
    assert runs.values("test_acc") == (97.0, 98.0, 96.0)
    assert runs.values("loss") == (0.3, 0.2, 0.1)  # the last epoch's training loss
    assert runs.spread("test_acc").mean == pytest.approx(97.0)
    assert runs.history(6).test_acc == 98.0
    assert runs.dataset == "MNIST-10k subset"
    with pytest.raises(ValueError, match="seed must be one of"):
        runs.history(1)
    with pytest.raises(ValueError, match="metric must be one of"):
        runs.values("accuracy")
    with pytest.raises(ValueError, match="equal length"):
        SeedRuns("x", MLPConfig(), (1, 2), (fake_history(),))


def test_a_difference_within_the_spread_is_not_larger_than_it():
    a = seed_runs("a", [97.0, 98.0, 96.0])  # std 1
    b = seed_runs("b", [97.5, 98.5, 96.5])
    c = compare(a, b)
    assert c.difference == pytest.approx(-0.5) and c.spread == pytest.approx(1.0)
    assert not c.exceeds_spread and c.verdict == "not larger than"


def test_a_difference_beyond_the_spread_is_larger_and_welch_t_matches_its_formula():
    a = seed_runs("a", [97.0, 97.2, 97.4, 97.1])
    b = seed_runs("b", [95.0, 95.5, 96.0])
    c = compare(a, b)
    sa, sb = statistics.stdev(a.values()), statistics.stdev(b.values())
    difference = statistics.fmean(a.values()) - statistics.fmean(b.values())
    assert c.difference == pytest.approx(difference)
    assert c.spread == pytest.approx(max(sa, sb))
    assert c.welch_t == pytest.approx(difference / math.sqrt(sa**2 / 4 + sb**2 / 3))
    assert c.exceeds_spread and c.verdict == "larger than"
    assert compare(b, a).welch_t == pytest.approx(-c.welch_t)


def test_identical_seed_values_compare_without_dividing_by_zero():
    same = compare(seed_runs("a", [90.0, 90.0]), seed_runs("b", [90.0, 90.0]))
    assert same.welch_t == 0.0 and same.verdict == "not larger than"
    apart = compare(seed_runs("a", [91.0, 91.0]), seed_runs("b", [90.0, 90.0]))
    assert apart.welch_t == math.inf and apart.verdict == "larger than"


def test_a_comparison_needs_two_seeds_per_variant():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        compare(seed_runs("a", [90.0]), seed_runs("b", [91.0, 92.0]))


def test_the_results_table_has_every_variant_and_seed_and_names_the_data_set():
    runs = {
        "BN before ReLU": seed_runs("BN before ReLU", [97.11, 97.52, 97.33], losses=[0.01, 0.02, 0.03]),
        "no BN": seed_runs("no BN", [96.01, 95.5, 96.9], losses=[0.2, 0.1, 0.3]),
    }
    table = results_table(runs)
    assert table.dataset == "MNIST-10k subset" and table.seeds == (1, 2, 3)
    assert [label for label, _ in table.rows] == ["BN before ReLU", "no BN"]
    assert table.rows[0][1][0].values == (97.11, 97.52, 97.33)
    assert table.rows[1][1][1].values == (0.2, 0.1, 0.3)
    text, html = str(table), table._repr_html_()
    for shown in (text, html):
        assert "MNIST-10k subset" in shown
        assert "97.32 ± 0.21" in shown and "0.0200 ± 0.0100" in shown
        assert "97.11, 97.52, 97.33" in shown and "96.01, 95.50, 96.90" in shown
    assert html.count("<tr>") == 3  # header and one row per variant


def test_results_table_refuses_what_cannot_share_a_table():
    with pytest.raises(ValueError, match="runs is empty"):
        results_table({})
    with pytest.raises(ValueError, match="metrics must be"):
        results_table({"a": seed_runs("a", [1.0, 2.0])}, metrics=("accuracy",))
    with pytest.raises(ValueError, match="same seeds"):
        results_table({"a": seed_runs("a", [1.0, 2.0]), "b": seed_runs("b", [1.0, 2.0], seeds=(3, 4))})


def test_the_comparisons_table_shows_each_comparison_with_its_verdict():
    a, b, c = seed_runs("a", [97.0, 97.2, 97.4]), seed_runs("b", [95.0, 95.5, 96.0]), seed_runs("c", [97.1, 97.0, 97.6])
    table = comparisons_table([compare(a, b), compare(a, c)], caption="test accuracy, MNIST-10k subset")
    assert table.caption == "test accuracy, MNIST-10k subset"
    assert table.rows[0][:4] == ("a", "b", "+1.70", "0.50") and table.rows[0][5] == "larger than"
    assert table.rows[1][:2] == ("a", "c") and table.rows[1][5] == "not larger than"
    assert "not larger than" in str(table) and table._repr_html_().count("<tr>") == 3
    with pytest.raises(ValueError, match="comparisons is empty"):
        comparisons_table([], caption="x")


def test_run_variants_trains_every_variant_with_every_seed(small_data, tmp_path, trainer):
    variants = {"before": MLPConfig(), "after": MLPConfig(placement="after")}
    runs = run_variants(variants, SHORT, small_data, (1, 2), cache=tmp_path)
    assert list(runs) == ["before", "after"]
    assert runs["after"].model == variants["after"] and runs["after"].seeds == (1, 2)
    assert [(call[0].placement, call[1].seed) for call in trainer.calls] == [
        ("before", 1), ("before", 2), ("after", 1), ("after", 2)
    ]
    with pytest.raises(ValueError, match="variants is empty"):
        run_variants({}, SHORT, small_data, (1, 2), cache=tmp_path)
