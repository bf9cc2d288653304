"""bnlab.layers: the BatchNorm layers of a model, its device, and every module's mode flag."""

import pytest
import torch
from torch import nn

from bnlab.layers import batchnorm_layers, mode_flags, model_device, preserved_modes
from bnlab.models import build_mlp


def test_batchnorm_layers_lists_every_kind_with_its_name_in_order():
    model = nn.Sequential(
        nn.BatchNorm1d(3), nn.Sequential(nn.Linear(3, 3), nn.BatchNorm2d(2)),
        nn.BatchNorm1d(3, track_running_stats=False), nn.BatchNorm3d(1),
    )
    listed = batchnorm_layers(model)
    assert [name for name, _ in listed] == ["0", "1.1", "2", "3"]
    assert [type(layer).__name__ for _, layer in listed] == ["BatchNorm1d", "BatchNorm2d", "BatchNorm1d", "BatchNorm3d"]
    assert batchnorm_layers(nn.Linear(3, 3)) == []


def test_batchnorm_layers_lists_a_layer_used_twice_once():
    bn = nn.BatchNorm1d(3)
    assert batchnorm_layers(nn.Sequential(bn, nn.ReLU(), bn)) == [("0", bn)]


def test_model_device_is_the_first_tensors_device_or_the_cpu():
    assert model_device(build_mlp()) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")
    assert model_device(nn.Sequential(nn.BatchNorm1d(2, affine=False))) == torch.device("cpu")  # buffers only
    assert model_device(build_mlp().to(torch.float64)).type == "cpu"
    assert model_device(nn.Linear(2, 2, device="meta")).type == "meta"


def test_preserved_modes_restores_each_modules_flag_also_after_an_error():
    model = build_mlp().train()
    model[2].eval()
    before = mode_flags(model)
    assert before.count(False) == 1
    with pytest.raises(RuntimeError, match="boom"):
        with preserved_modes(model):
            model.eval()
            raise RuntimeError("boom")
    assert mode_flags(model) == before
    with preserved_modes(model):
        model.train()
    assert mode_flags(model) == before and not model[2].training


@pytest.mark.parametrize("helper", [batchnorm_layers, model_device, mode_flags, preserved_modes])
def test_helpers_reject_what_is_not_a_module(helper):
    with pytest.raises(ValueError, match="model must be a torch.nn.Module; got str"):
        result = helper("model")
        if hasattr(result, "__enter__"):
            with result:
                pass
