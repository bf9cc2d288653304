"""bnlab.layers: the BatchNorm layers of a model, its device, and every module's mode flag."""

import pytest
import torch
from torch import nn

from bnlab.layers import batchnorm_layers, called_layers, mode_flags, model_device, preserved_modes
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


class Residual(nn.Module):
    """Conv -> BN -> ReLU, added to its input, then the same ReLU again: the order lives in forward()."""

    def __init__(self):
        super().__init__()
        self.relu, self.bn, self.conv = nn.ReLU(), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return self.relu(self.relu(self.bn(self.conv(x))) + x)


def test_called_layers_follows_the_forward_pass_not_the_order_of_registration():
    assert called_layers(Residual(), torch.randn(2, 2, 4, 4)) == ["Conv2d", "BatchNorm2d", "ReLU", "ReLU"]
    mlp = build_mlp()
    assert called_layers(mlp, torch.randn(3, 1, 28, 28)) == [
        "Flatten", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"
    ]


def test_called_layers_changes_neither_buffers_nor_modes():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    model[2].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert called_layers(model, torch.randn(5, 3)) == ["Linear", "BatchNorm1d", "Dropout"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert mode_flags(model) == (True, True, True, False)
    assert not model[1]._forward_hooks


def test_called_layers_needs_a_module_and_an_input():
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        called_layers("mlp", torch.randn(2, 3))
    with pytest.raises(ValueError, match="inputs is empty"):
        called_layers(nn.Linear(3, 2))
