import dataclasses

import pytest
import torch

from bnlab.models import MLPConfig, build_mlp
from bnlab.training import History, TrainConfig, accuracy, pick_device, train, train_mlp

SHORT = TrainConfig(epochs=2, batch_size=100)


def without_seconds(history: History) -> list[tuple]:
    return [(e.epoch, e.loss, e.train_acc, e.val_acc) for e in history.epochs] + [history.test_acc]


def test_same_seed_gives_an_identical_history_on_the_cpu(small_data):
    _, first = train_mlp(MLPConfig(dropout=0.3), small_data, SHORT, device="cpu", progress=False)
    _, again = train_mlp(MLPConfig(dropout=0.3), small_data, SHORT, device="cpu", progress=False)
    assert without_seconds(first) == without_seconds(again)


def test_different_seeds_give_different_runs(small_data):
    _, first = train_mlp(MLPConfig(), small_data, SHORT, device="cpu", progress=False)
    _, other = train_mlp(MLPConfig(), small_data, dataclasses.replace(SHORT, seed=7), device="cpu", progress=False)
    assert without_seconds(first) != without_seconds(other)


def test_history_has_one_row_per_epoch_and_names_the_data(small_data):
    _, history = train_mlp(MLPConfig(), small_data, SHORT, device="cpu", progress=False)
    assert [e.epoch for e in history.epochs] == [1, 2]
    assert history.dataset == "MNIST-10k subset" and history.device == "cpu"
    assert all(e.seconds > 0 for e in history.epochs)
    assert history.final.loss < history.epochs[0].loss
    assert "MNIST-10k subset" in history.table()
    assert History.from_dict(history.to_dict()) == history


def test_training_learns_far_above_chance(small_data):
    _, history = train_mlp(MLPConfig(), small_data, TrainConfig(epochs=5, batch_size=100), device="cpu", progress=False)
    assert history.test_acc > 70  # chance is 10 %


def test_train_uses_train_mode_and_evaluation_uses_eval_mode(small_data, monkeypatch):
    model = build_mlp()
    seen = []
    bn = model[2]
    original = bn.forward

    def spy(x):
        seen.append((bn.training, torch.is_inference_mode_enabled()))
        return original(x)

    monkeypatch.setattr(bn, "forward", spy)
    train(model, small_data, TrainConfig(epochs=1, batch_size=500), device="cpu", progress=False)
    assert (True, False) in seen  # training steps
    assert (False, True) in seen  # evaluation: eval mode under inference_mode
    assert set(seen) == {(True, False), (False, True)}
    assert model.training  # left in train mode, as a plain loop would


def test_accuracy_restores_the_mode_and_leaves_running_statistics_alone(small_data):
    model = build_mlp()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    accuracy(model, small_data.val)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_pick_device_prefers_an_available_accelerator_and_checks_overrides():
    device = pick_device()
    assert device.type == ("cuda" if torch.cuda.is_available() else device.type)
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no usable CUDA"):
            pick_device("cuda")


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"batch_size": -1}, {"lr": 0}, {"eval_batch_size": 1.5}])
def test_invalid_train_config_names_the_field(kwargs):
    (field,) = kwargs
    with pytest.raises(ValueError, match=f"TrainConfig.{field} must be"):
        TrainConfig(**kwargs)


def test_progress_bar_can_be_turned_off(small_data, capsys):
    train_mlp(MLPConfig(), small_data, TrainConfig(epochs=1, batch_size=500), device="cpu", progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
