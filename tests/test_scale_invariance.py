import copy

import pytest
import torch
from torch import nn

from bnlab import explanations as ex
from bnlab import scale_invariance as si

from model_state import same_state, state, with_eps


def test_effective_learning_rate_divides_by_the_mean_squared_row_length_and_quarters_when_the_weight_doubles():
    weight = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]])  # squared row lengths 25, 1, 1: mean 9
    assert si.effective_learning_rate(weight, 0.9) == pytest.approx(0.1)
    assert si.effective_learning_rate(2 * weight, 0.9) == pytest.approx(0.1 / 4)


@pytest.mark.parametrize("factor", [0.5, 2.0, 10.0])
def test_scaling_a_weight_before_batchnorm_keeps_the_output_and_divides_the_gradient(split, factor):
    model = ex.build_variant("BatchNorm", 5)
    xb, yb = split.images[:256], split.labels[:256]
    before = state(model)
    for layer in (0, 1):
        check = si.scale_check(model, layer, factor, xb, yb)
        assert check.output_difference < 2e-3
        assert check.gradient_ratio == pytest.approx(1 / factor, rel=2e-3)
        assert check.orthogonality < 1e-3  # each unit's weight row is orthogonal to its gradient
    assert same_state(before, state(model))
    exact = si.scale_check(with_eps(model.double(), 1e-20), 0, factor, xb.double(), yb)  # BatchNorm's eps is all
    assert exact.output_difference < 1e-10 and exact.gradient_error < 1e-10 and exact.orthogonality < 1e-10


def test_scale_check_rejects_a_layer_without_batchnorm_after_it(split):
    with pytest.raises(ValueError, match="layer"):
        si.scale_check(ex.build_variant("BatchNorm", 0), 2, 2.0, split.images[:8], split.labels[:8])
    assert si.hidden_linears(ex.build_variant("without BatchNorm", 0)) == []


def test_weight_norms_follow_the_exact_update_and_weight_decay_keeps_them_smaller(split):
    runs = {
        wd: si.norm_run(ex.build_variant("BatchNorm", 6), split, steps=12, lr=0.5, weight_decay=wd, seed=6)
        for wd in (0.0, 0.05)
    }
    for records in runs.values():
        later = [r for r in records if r["step"] > 0]
        assert len(later) == 12 * 2
        for r in later:
            assert r["predicted_norm"] == pytest.approx(r["weight_norm"], rel=1e-4)
    grown = {wd: [r["weight_norm"] for r in records if r["layer"] == 1] for wd, records in runs.items()}
    assert all(a < b for a, b in zip(grown[0.0], grown[0.0][1:]))  # without weight decay the norm only grows
    assert grown[0.05][-1] < grown[0.0][-1]
    r = runs[0.0][0]
    w = si.hidden_linears(ex.build_variant("BatchNorm", 6))[0].weight
    assert r["effective_lr"] == pytest.approx(0.5 / (w.detach() ** 2).sum(1).mean().item(), rel=1e-5)


def test_a_twin_with_larger_weights_and_a_matching_learning_rate_computes_the_same_function(split):
    model = ex.build_variant("BatchNorm", 7)
    exact = si.scaled_twin_difference(with_eps(copy.deepcopy(model), 1e-20), split, factor=2.0, steps=5, seed=7)
    assert exact == 0.0  # factor 2 is exact in floating point, and without eps BatchNorm cannot tell the twins apart
    compensated = si.scaled_twin_difference(copy.deepcopy(model), split, factor=2.0, steps=20, seed=7)
    uncompensated = si.scaled_twin_difference(
        copy.deepcopy(model), split, factor=2.0, steps=20, seed=7, compensate=False
    )
    assert compensated < uncompensated / 5
