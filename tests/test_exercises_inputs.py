"""bnlab.exercises.inputs: random inputs come from the check's generator only, so a seed repeats them exactly."""

import torch

from bnlab.exercises.inputs import (
    batch_and_features, build_sequential, eval_batchnorm, feature_batch, image_batch, normal, randint,
    random_mlp_layers, uniform,
)


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_draws_are_float32_and_repeat_with_the_seed():
    a, b = normal(generator(), 3, 2), normal(generator(), 3, 2)
    assert a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.equal(a, normal(generator(1), 3, 2))
    u = uniform(generator(), 0.5, 0.6, 100)
    assert 0.5 <= float(u.min()) and float(u.max()) <= 0.6
    assert {randint(generator(s), 2, 4) for s in range(50)} == {2, 3, 4}


def test_batches_have_as_many_examples_as_features_never_and_feature_scales_differ():
    for seed in range(50):
        n, c = batch_and_features(generator(seed))
        assert n != c
        x = feature_batch(generator(seed), 64, 5)
        stds = x.std(0)
        assert x.dtype == torch.float32 and float(stds.max() / stds.min()) > 2


def test_a_model_built_with_a_generator_repeats_its_weights():
    layers = random_mlp_layers(generator(), placements=["before", "after", "none"], flatten=True, dropout=True)
    kinds = [layer[0] for layer in layers]
    assert kinds[0] == "Flatten" and kinds[-1] == "Linear" and kinds.count("BatchNorm1d") == 2
    a, b = build_sequential(layers, generator(5)), build_sequential(layers, generator(5))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_block_can_put_dropout_between_the_linear_layer_and_batchnorm_and_unknown_placements_are_refused():
    import pytest

    layers = random_mlp_layers(generator(), placements=["dropout before"], flatten=False, dropout=False)
    assert [layer[0] for layer in layers] == ["Linear", "Dropout", "BatchNorm1d", "ReLU", "Linear"]
    with pytest.raises(ValueError, match="placement must be .* got 'middle'"):
        random_mlp_layers(generator(), placements=["middle"], flatten=False, dropout=False)


def test_image_batches_have_channels_unlike_their_height_and_width():
    for seed in range(30):
        x = image_batch(torch.Generator().manual_seed(seed))
        n, c, h, w = x.shape
        assert x.dtype == torch.float32 and 2 <= n <= 4 and 2 <= c <= 4 and c not in (h, w)


def test_eval_batchnorms_come_in_eval_mode_with_running_statistics_from_the_generator():
    a = eval_batchnorm(generator(3), 4, 0.1, torch.nn.BatchNorm2d)
    b = eval_batchnorm(generator(3), 4, 0.1, torch.nn.BatchNorm2d)
    assert isinstance(a, torch.nn.BatchNorm2d) and not a.training and a.eps == 0.1
    assert torch.equal(a.running_var, b.running_var) and (a.running_var > 0).all()
    assert not torch.equal(a.running_mean, torch.zeros(4))
