import pytest
import torch
from torch import nn

from bnlab.models import MLPConfig, build_mlp, build_model, count_parameters


def layer_types(model):
    return [type(m).__name__ for m in model]


def test_default_is_the_lectures_reference_model():
    model = build_mlp()
    assert layer_types(model) == [
        "Flatten", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear",
    ]
    assert [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)] == [(784, 75), (75, 45), (45, 10)]
    hidden, _, output = [m for m in model if isinstance(m, nn.Linear)]
    assert hidden.bias is None and output.bias is not None


@pytest.mark.parametrize(
    "placement, dropout, block",
    [
        ("before", 0.0, ["Linear", "BatchNorm1d", "ReLU"]),
        ("after", 0.0, ["Linear", "ReLU", "BatchNorm1d"]),
        ("none", 0.0, ["Linear", "ReLU"]),
        ("before", 0.5, ["Linear", "BatchNorm1d", "ReLU", "Dropout"]),
        ("after", 0.5, ["Linear", "ReLU", "BatchNorm1d", "Dropout"]),
        ("none", 0.2, ["Linear", "ReLU", "Dropout"]),
    ],
)
def test_each_placement_gives_its_layer_order(placement, dropout, block):
    model = build_mlp(MLPConfig(hidden=(20, 10), placement=placement, dropout=dropout))
    assert layer_types(model) == ["Flatten", *block, *block, "Linear"]
    if dropout:
        assert all(m.p == dropout for m in model if isinstance(m, nn.Dropout))


@pytest.mark.parametrize("placement, expected", [("before", False), ("after", True), ("none", True)])
def test_automatic_bias_only_where_batchnorm_does_not_follow(placement, expected):
    model = build_mlp(MLPConfig(placement=placement))
    first = model[1]
    assert (first.bias is not None) == expected
    assert (build_mlp(MLPConfig(placement=placement, bias=True))[1].bias is not None)
    assert build_mlp(MLPConfig(placement=placement, bias=False))[1].bias is None


def test_forward_shape_and_parameter_count():
    model = build_mlp()
    assert model(torch.zeros(4, 1, 28, 28)).shape == (4, 10)
    expected = 784 * 75 + 2 * 75 + 75 * 45 + 2 * 45 + 45 * 10 + 10  # weights, BN gamma/beta, output bias
    assert count_parameters(model) == expected
    assert count_parameters(build_mlp(MLPConfig(bias=True))) == expected + 75 + 45


def test_init_std_draws_small_weights_and_zero_biases():
    torch.manual_seed(0)
    model = build_mlp(MLPConfig(init_std=0.001, bias=True))
    for linear in (m for m in model if isinstance(m, nn.Linear)):
        assert linear.weight.std().item() == pytest.approx(0.001, rel=0.1)
        assert torch.count_nonzero(linear.bias) == 0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"placement": "middle"}, "placement"),
        ({"hidden": ()}, "hidden"),
        ({"hidden": (10, -1)}, "hidden"),
        ({"bias": "yes"}, "bias"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"init_std": 0}, "init_std"),
        ({"in_features": 0}, "in_features"),
    ],
)
def test_invalid_config_names_the_field_and_allowed_values(kwargs, field):
    with pytest.raises(ValueError, match=f"MLPConfig.{field} must be"):
        MLPConfig(**kwargs)


def test_placement_error_lists_the_allowed_values():
    with pytest.raises(ValueError, match="'none', 'before', 'after'"):
        MLPConfig(placement="middle")


@pytest.mark.parametrize(
    "kwargs",
    [{"hidden": 75}, {"hidden": "75"}, {"hidden": (True, 45)}, {"hidden": (75.0,)}, {"in_features": True},
     {"num_classes": False}, {"init_std": float("inf")}, {"init_std": float("nan")}, {"dropout": float("nan")},
     {"dropout": True}, {"bias": 1}],
    ids=repr,
)
def test_invalid_model_config_raises_a_value_error_naming_the_field(kwargs):
    (field,) = kwargs
    with pytest.raises(ValueError, match=f"MLPConfig.{field} must"):
        MLPConfig(**kwargs)


def test_build_model_builds_an_mlp_and_rejects_what_it_does_not_know():
    assert str(build_model(MLPConfig(hidden=(8,)))) == str(build_mlp(MLPConfig(hidden=(8,))))
    with pytest.raises(ValueError, match="build_model needs"):
        build_model({"hidden": (8,)})
