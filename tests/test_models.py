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


# --- the CNN -----------------------------------------------------------------------------------------------------

from bnlab.models import NORMS, CNNConfig, build_cnn, build_model  # noqa: E402


def test_default_cnn_is_three_conv_batchnorm_relu_pool_blocks_and_a_linear_head():
    model = build_cnn()
    block = ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert layer_types(model) == [*block, *block, *block, "Flatten", "Linear"]
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(1, 8), (8, 16), (16, 32)]
    assert all(m.bias is None for m in convs)  # BatchNorm follows each Conv directly
    assert model[-1].in_features == 32 * 3 * 3
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    "norm, placement, block",
    [
        ("batch", "before", ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]),
        ("batch", "after", ["Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d"]),
        ("group", "before", ["Conv2d", "GroupNorm", "ReLU", "MaxPool2d"]),
        ("layer", "after", ["Conv2d", "ReLU", "GroupNorm", "MaxPool2d"]),
        ("none", "before", ["Conv2d", "ReLU", "MaxPool2d"]),
        ("none", "after", ["Conv2d", "ReLU", "MaxPool2d"]),
    ],
)
def test_each_norm_and_placement_gives_its_block(norm, placement, block):
    model = build_cnn(CNNConfig(channels=(4, 8), norm=norm, placement=placement))
    assert layer_types(model) == [*block, *block, "Flatten", "Linear"]


def test_group_norm_uses_the_configured_groups_and_layer_style_uses_one_group():
    group = [m for m in build_cnn(CNNConfig(norm="group", groups=4)) if isinstance(m, nn.GroupNorm)]
    layer = [m for m in build_cnn(CNNConfig(norm="layer")) if isinstance(m, nn.GroupNorm)]
    assert [(m.num_groups, m.num_channels) for m in group] == [(4, 8), (4, 16), (4, 32)]
    assert [(m.num_groups, m.num_channels) for m in layer] == [(1, 8), (1, 16), (1, 32)]


def test_layer_style_norm_normalises_each_example_over_channels_and_positions():
    x = torch.randn(3, 8, 5, 5) * 4 + 2
    y = nn.GroupNorm(1, 8)(x)
    expected = nn.functional.layer_norm(x, (8, 5, 5))  # no affine: LayerNorm over (C, H, W)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "norm, placement, expected",
    [("batch", "before", False), ("batch", "after", True), ("group", "before", True), ("layer", "before", True), ("none", "before", True)],
)
def test_automatic_conv_bias_only_where_batchnorm_directly_follows(norm, placement, expected):
    config = CNNConfig(norm=norm, placement=placement)
    assert config.conv_bias == expected
    assert all((m.bias is not None) == expected for m in build_cnn(config) if isinstance(m, nn.Conv2d))
    assert all(m.bias is not None for m in build_cnn(CNNConfig(norm=norm, bias=True)) if isinstance(m, nn.Conv2d))
    assert all(m.bias is None for m in build_cnn(CNNConfig(norm=norm, bias=False)) if isinstance(m, nn.Conv2d))


def test_cnn_head_size_follows_the_number_of_blocks_and_the_image_size():
    assert CNNConfig(channels=(4,)).final_size == 14
    assert CNNConfig(channels=(4, 4)).final_size == 7
    assert CNNConfig(channels=(4, 4, 4, 4)).final_size == 1
    model = build_cnn(CNNConfig(channels=(4, 6), in_channels=3, image_size=32, num_classes=5))
    assert model[-1].in_features == 6 * 8 * 8
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_cnn_channels_given_as_a_list_become_a_tuple():
    assert CNNConfig(channels=[4, 8]).channels == (4, 8)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"channels": ()}, "channels"),
        ({"channels": (8, 0)}, "channels"),
        ({"channels": 8}, "channels"),
        ({"channels": (8, True)}, "channels"),
        ({"norm": "instance"}, "norm"),
        ({"placement": "none"}, "placement"),
        ({"bias": 1}, "bias"),
        ({"groups": 0}, "groups"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"kernel_size": True}, "kernel_size"),
        ({"image_size": 0}, "image_size"),
        ({"num_classes": 2.0}, "num_classes"),
    ],
)
def test_invalid_cnn_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"CNNConfig.{field}"):
        CNNConfig(**kwargs)


def test_cnn_config_error_messages_say_what_to_do():
    with pytest.raises(ValueError, match=r"groups=3 must divide every entry of channels=\(8, 16, 32\)"):
        CNNConfig(norm="group", groups=3)
    CNNConfig(norm="batch", groups=3)  # groups only matter for GroupNorm
    with pytest.raises(ValueError, match="use norm='none'"):
        CNNConfig(placement="none")
    with pytest.raises(ValueError, match="too small for 5 blocks"):
        CNNConfig(channels=(2, 2, 2, 2, 2), image_size=28)
    with pytest.raises(ValueError, match="'batch', 'group', 'layer', 'none'"):
        CNNConfig(norm="Batch")
    assert NORMS == ("batch", "group", "layer", "none")


def test_cnn_config_is_frozen_and_hashable():
    config = CNNConfig()
    with pytest.raises(AttributeError):
        config.norm = "group"
    assert hash(config) == hash(CNNConfig())


def test_build_model_builds_either_config():
    assert layer_types(build_model(MLPConfig())) == layer_types(build_mlp(MLPConfig()))
    assert layer_types(build_model(CNNConfig(norm="group"))) == layer_types(build_cnn(CNNConfig(norm="group")))
    with pytest.raises(ValueError, match="build_model needs a bnlab.models.MLPConfig or CNNConfig; got dict"):
        build_model({"hidden": (75, 45)})


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
