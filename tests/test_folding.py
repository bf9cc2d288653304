import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from bnlab.folding import (count_batchnorms, fold_batchnorm, fold_batchnorms, fold_conv_batchnorm,
                           fold_conv_batchnorms, fold_into_next)
from bnlab.models import CNNConfig, MLPConfig, build_model


def random_statistics(bn: nn.BatchNorm1d, generator: torch.Generator) -> nn.BatchNorm1d:
    """Give ``bn`` random running statistics and affine parameters (as training would), and put it in eval mode."""
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=generator) * 3)
        bn.running_var.copy_(torch.rand(n, generator=generator) * 4 + 0.01)
        if bn.affine:
            bn.weight.copy_(torch.randn(n, generator=generator))
            bn.bias.copy_(torch.randn(n, generator=generator))
    return bn.eval()


def linear_and_bn(*, bias: bool, seed: int, n_in: int = 20, n_out: int = 7, affine: bool = True):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    linear = nn.Linear(n_in, n_out, bias=bias)
    bn = random_statistics(nn.BatchNorm1d(n_out, affine=affine), generator)
    return linear, bn, torch.randn(64, n_in, generator=generator)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_folded_linear_equals_linear_then_batchnorm_in_eval(bias, seed):
    linear, bn, x = linear_and_bn(bias=bias, seed=seed)
    folded = fold_batchnorm(linear, bn)
    expected = bn(linear(x))
    torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_folded_linear_agrees_with_pytorch_fuse_linear_bn_eval(bias):
    linear, bn, _ = linear_and_bn(bias=bias, seed=11)
    ours = fold_batchnorm(linear, bn)
    theirs = fuse_linear_bn_eval(linear.eval(), bn)
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.bias, theirs.bias, rtol=1e-6, atol=1e-6)


def test_folding_follows_the_formula():
    linear, bn, _ = linear_and_bn(bias=True, seed=3)
    folded = fold_batchnorm(linear, bn)
    sigma = torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(folded.weight, (bn.weight / sigma)[:, None] * linear.weight)
    torch.testing.assert_close(folded.bias, bn.weight * (linear.bias - bn.running_mean) / sigma + bn.bias)


def test_the_bias_comes_back_when_the_linear_layer_had_none():
    linear, bn, _ = linear_and_bn(bias=False, seed=4)
    folded = fold_batchnorm(linear, bn)
    assert linear.bias is None
    assert folded.bias is not None
    expected = bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(folded.bias, expected)


def test_batchnorm_without_affine_parameters_folds():
    linear, bn, x = linear_and_bn(bias=True, seed=5, affine=False)
    torch.testing.assert_close(fold_batchnorm(linear, bn)(x), bn(linear(x)), rtol=1e-5, atol=1e-5)


def test_folding_leaves_the_original_layers_unchanged():
    linear, bn, _ = linear_and_bn(bias=True, seed=6)
    before = {k: v.clone() for k, v in {**linear.state_dict(), **bn.state_dict()}.items()}
    folded = fold_batchnorm(linear, bn)
    with torch.no_grad():
        folded.weight.add_(1.0)
    after = {**linear.state_dict(), **bn.state_dict()}
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_folded_layer_keeps_the_dtype_of_the_linear_layer():
    linear, bn, x = linear_and_bn(bias=True, seed=7)
    linear, bn = linear.double(), bn.double()
    folded = fold_batchnorm(linear, bn)
    assert folded.weight.dtype == torch.float64
    torch.testing.assert_close(folded(x.double()), bn(linear(x.double())), rtol=1e-12, atol=1e-12)


def test_batchnorm_in_train_mode_is_refused():
    linear, bn, _ = linear_and_bn(bias=True, seed=8)
    with pytest.raises(ValueError, match=r"train mode.*model\.eval\(\)"):
        fold_batchnorm(linear, bn.train())


def test_batchnorm_without_running_statistics_is_refused():
    linear = nn.Linear(5, 3)
    bn = nn.BatchNorm1d(3, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="track_running_stats=False"):
        fold_batchnorm(linear, bn)


def test_size_mismatch_is_refused():
    linear = nn.Linear(5, 4)
    bn = nn.BatchNorm1d(3).eval()
    with pytest.raises(ValueError, match="4 output features but bn has num_features=3"):
        fold_batchnorm(linear, bn)


@pytest.mark.parametrize(
    "linear, bn, argument",
    [
        (nn.Conv1d(3, 3, 1), nn.BatchNorm1d(3).eval(), "linear must be an nn.Linear"),
        (nn.Linear(3, 3), nn.BatchNorm2d(3).eval(), "bn must be an nn.BatchNorm1d"),
        (nn.Linear(3, 3), nn.LayerNorm(3), "bn must be an nn.BatchNorm1d"),
    ],
)
def test_wrong_layer_types_are_refused(linear, bn, argument):
    with pytest.raises(ValueError, match=argument):
        fold_batchnorm(linear, bn)


def trained_like(config: MLPConfig | CNNConfig, seed: int = 0) -> nn.Sequential:
    """The course's MLP or CNN with random BatchNorm statistics and parameters, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(config)
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            random_statistics(module, generator)
    return model.eval()


@pytest.mark.parametrize("bias", [True, False])
def test_folded_model_has_no_batchnorm_and_equals_the_model_in_eval(bias):
    model = trained_like(MLPConfig(bias=bias))
    folded = fold_batchnorms(model)
    assert count_batchnorms(model) == 2
    assert count_batchnorms(folded) == 0
    assert [type(m).__name__ for m in folded] == ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert all(m.bias is not None for m in folded if isinstance(m, nn.Linear))
    x = torch.rand(128, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_folding_a_model_with_dropout_keeps_the_dropout_layers():
    model = trained_like(MLPConfig(dropout=0.5))
    folded = fold_batchnorms(model)
    assert sum(isinstance(m, nn.Dropout) for m in folded) == 2
    x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_folding_a_model_leaves_it_unchanged():
    model = trained_like(MLPConfig())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold_batchnorms(model)
    assert count_batchnorms(model) == 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_nested_sequential_blocks_are_folded():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    block = nn.Sequential(nn.Linear(6, 4, bias=False), random_statistics(nn.BatchNorm1d(4), generator), nn.ReLU())
    model = nn.Sequential(block, nn.Linear(4, 2)).eval()
    folded = fold_batchnorms(model)
    assert count_batchnorms(folded) == 0
    x = torch.randn(16, 6, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_model_in_train_mode_is_refused():
    model = trained_like(MLPConfig()).train()
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        fold_batchnorms(model)


def outputs_agree(folded: nn.Module, model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def images(n: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_batchnorm_after_the_activation_folds_into_the_next_linear_layer(dropout):
    model = trained_like(MLPConfig(placement="after", dropout=dropout))
    folded = fold_batchnorms(model)
    expected = ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    if dropout:
        expected = ["Flatten", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert [type(m).__name__ for m in folded] == expected
    outputs_agree(folded, model, images())


@pytest.mark.parametrize("bias", [True, False])
def test_fold_into_next_computes_linear_of_batchnorm(bias):
    generator = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    bn = random_statistics(nn.BatchNorm1d(7), generator)
    linear = nn.Linear(7, 4, bias=bias)
    x = torch.randn(64, 7, generator=generator)
    folded = fold_into_next(bn, linear)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), linear(bn(x)), rtol=1e-5, atol=1e-5)
        sigma = torch.sqrt(bn.running_var + bn.eps)
        torch.testing.assert_close(folded.weight, linear.weight * (bn.weight / sigma))  # W'' = W diag(gamma / sigma)
    assert folded.bias is not None and folded is not linear


def test_fold_into_next_checks_mode_statistics_and_sizes():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="train mode"):
        fold_into_next(nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="no running statistics"):
        fold_into_next(nn.BatchNorm1d(4, track_running_stats=False).eval(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="4 input features but bn has num_features=5"):
        fold_into_next(random_statistics(nn.BatchNorm1d(5), generator), nn.Linear(4, 2))


def test_a_module_used_twice_is_folded_at_both_places():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    relu = nn.ReLU()  # one instance after both hidden layers
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 20, bias=False), random_statistics(nn.BatchNorm1d(20), generator), relu,
        nn.Linear(20, 12, bias=False), random_statistics(nn.BatchNorm1d(12), generator), relu, nn.Linear(12, 10),
    ).eval()
    folded = fold_batchnorms(model)
    assert [type(m).__name__ for m in folded] == ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert folded[2] is folded[4]  # still one shared module
    outputs_agree(folded, model, images())


def test_chained_batchnorms_and_blocks_fold_across_their_boundaries():
    generator = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    bn = lambda n: random_statistics(nn.BatchNorm1d(n), generator)  # noqa: E731
    model = nn.Sequential(
        bn(6),  # normalises the input: folds into the Linear layer after it
        nn.Sequential(nn.Linear(6, 5), nn.ReLU(), bn(5)),  # after the ReLU: into the next block's Linear layer
        nn.Sequential(nn.Dropout(0.3), nn.Linear(5, 4), bn(4), bn(4), nn.Identity()),  # two in a row: both back
        nn.ReLU(),
        nn.Linear(4, 2),
    ).eval()
    folded = fold_batchnorms(model)
    assert count_batchnorms(folded) == 0
    assert [type(m).__name__ for m in folded] == ["Linear", "ReLU", "Dropout", "Linear", "Identity", "ReLU", "Linear"]
    outputs_agree(folded, model, torch.randn(32, 6, generator=generator))


@pytest.mark.parametrize(
    "layers, match",
    [
        (lambda bn: [nn.Linear(4, 4), nn.ReLU(), bn], "follows ReLU and is followed by the end of the model"),
        (lambda bn: [nn.Linear(4, 4), nn.ReLU(), bn, nn.ReLU(), nn.Linear(4, 2)], "follows ReLU and is followed by ReLU"),
        (lambda bn: [nn.Linear(4, 4), nn.Tanh(), bn, nn.Sigmoid()], "follows Tanh and is followed by Sigmoid"),
    ],
    ids=["relu-end", "between-relus", "between-other-nonlinearities"],
)
def test_batchnorm_with_a_nonlinearity_on_both_sides_is_refused(layers, match):
    bn = random_statistics(nn.BatchNorm1d(4), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=match):
        fold_batchnorms(nn.Sequential(*layers(bn)).eval())


def test_batchnorm_inside_another_container_is_refused():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.bn = nn.Linear(3, 3), nn.BatchNorm1d(3)

        def forward(self, x):
            return self.bn(self.linear(x))

    with pytest.raises(ValueError, match="not an nn.Sequential"):
        fold_batchnorms(nn.Sequential(Block()).eval())


def test_a_model_that_is_not_sequential_is_refused():
    with pytest.raises(ValueError, match="model must be an nn.Sequential"):
        fold_batchnorms(nn.Linear(3, 3))


def test_count_batchnorms_counts_every_kind_at_any_depth():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Sequential(nn.BatchNorm2d(3), nn.ReLU()), nn.BatchNorm3d(3))
    assert count_batchnorms(model) == 3
    assert count_batchnorms(nn.Linear(3, 3)) == 0


# --- Conv2d + BatchNorm2d ------------------------------------------------------------------------------------------


def conv_and_bn(*, bias: bool, seed: int, affine: bool = True, **conv_kwargs):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    conv = nn.Conv2d(conv_kwargs.pop("in_channels", 3), 6, conv_kwargs.pop("kernel_size", 3), bias=bias, **conv_kwargs)
    bn = random_statistics(nn.BatchNorm2d(6, affine=affine), generator)
    return conv, bn, torch.randn(8, conv.in_channels, 10, 10, generator=generator)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_folded_conv_equals_conv_then_batchnorm_in_eval(bias, seed):
    conv, bn, x = conv_and_bn(bias=bias, seed=seed, padding=1)
    folded = fold_conv_batchnorm(conv, bn)
    assert isinstance(folded, nn.Conv2d) and folded.bias is not None
    torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_folded_conv_agrees_with_pytorch_fuse_conv_bn_eval(bias):
    conv, bn, _ = conv_and_bn(bias=bias, seed=11)
    ours = fold_conv_batchnorm(conv, bn)
    theirs = fuse_conv_bn_eval(conv.eval(), bn)
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.bias, theirs.bias, rtol=1e-6, atol=1e-6)


def test_conv_folding_scales_each_output_channels_filter_and_keeps_the_geometry():
    conv, bn, x = conv_and_bn(bias=True, seed=3, stride=2, padding=2, dilation=2, in_channels=6, groups=3)
    folded = fold_conv_batchnorm(conv, bn)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(folded.weight, scale.view(-1, 1, 1, 1) * conv.weight)
    torch.testing.assert_close(folded.bias, scale * (conv.bias - bn.running_mean) + bn.bias)
    assert (folded.stride, folded.padding, folded.dilation, folded.groups) == (conv.stride, conv.padding, conv.dilation, conv.groups)
    torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_conv_folding_leaves_the_originals_unchanged_and_works_without_affine():
    conv, bn, x = conv_and_bn(bias=False, seed=4, affine=False)
    before = {k: v.clone() for k, v in {**conv.state_dict(), **bn.state_dict()}.items()}
    folded = fold_conv_batchnorm(conv, bn)
    torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    assert conv.bias is None
    assert all(torch.equal(before[k], v) for k, v in {**conv.state_dict(), **bn.state_dict()}.items())


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: (nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6).train()), r"train mode.*model\.eval\(\)"),
        (lambda: (nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6, track_running_stats=False).eval()), "track_running_stats=False"),
        (lambda: (nn.Conv2d(3, 5, 3), nn.BatchNorm2d(6).eval()), "5 output channels but bn has num_features=6"),
        (lambda: (nn.Linear(3, 6), nn.BatchNorm2d(6).eval()), "conv must be an nn.Conv2d"),
        (lambda: (nn.Conv2d(3, 6, 3), nn.BatchNorm1d(6).eval()), "bn must be an nn.BatchNorm2d"),
    ],
)
def test_conv_folding_refuses_what_cannot_fold(make, message):
    conv, bn = make()
    with pytest.raises(ValueError, match=message):
        fold_conv_batchnorm(conv, bn)


@pytest.mark.parametrize("bias", [True, False, None])
def test_folded_cnn_has_no_batchnorm_and_equals_the_cnn_in_eval(bias):
    model = trained_like(CNNConfig(channels=(4, 8), bias=bias))
    folded = fold_conv_batchnorms(model)
    assert count_batchnorms(model) == 2 and count_batchnorms(folded) == 0
    block = ["Conv2d", "ReLU", "MaxPool2d"]
    assert [type(m).__name__ for m in folded] == [*block, *block, "Flatten", "Linear"]
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    assert not folded.training


def test_folding_a_cnn_keeps_a_layer_used_twice():
    relu = nn.ReLU()
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), random_statistics(nn.BatchNorm2d(3), generator), relu,
        nn.Conv2d(3, 3, 3), random_statistics(nn.BatchNorm2d(3), generator), relu,
    ).eval()
    folded = fold_conv_batchnorms(model)
    assert [type(m).__name__ for m in folded] == ["Conv2d", "ReLU", "Conv2d", "ReLU"]
    x = torch.randn(2, 1, 9, 9, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_folding_a_cnn_with_batchnorm_after_the_relu_is_refused():
    with pytest.raises(ValueError, match="follows ReLU, not an nn.Conv2d"):
        fold_conv_batchnorms(trained_like(CNNConfig(channels=(4,), placement="after")))


def test_folding_a_cnn_in_train_mode_or_not_sequential_is_refused():
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        fold_conv_batchnorms(trained_like(CNNConfig(channels=(4,))).train())
    with pytest.raises(ValueError, match="model must be an nn.Sequential"):
        fold_conv_batchnorms(nn.Conv2d(1, 1, 1))


class ConvBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_folding_a_cnn_expands_nested_sequentials_and_refuses_other_containers():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(1, 2, 3), random_statistics(nn.BatchNorm2d(2), generator), nn.ReLU())
    model = nn.Sequential(block, nn.Flatten()).eval()
    folded = fold_conv_batchnorms(model)
    assert [type(m).__name__ for m in folded] == ["Conv2d", "ReLU", "Flatten"]
    x = torch.randn(2, 1, 6, 6, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="contains BatchNorm inside a module that is not an nn.Sequential"):
        fold_conv_batchnorms(nn.Sequential(ConvBlock()).eval())


def test_a_cnn_without_batchnorm_folds_to_an_equal_copy():
    model = trained_like(CNNConfig(channels=(4,), norm="group"))
    folded = fold_conv_batchnorms(model)
    assert folded is not model and [type(m) for m in folded] == [type(m) for m in model]
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))
