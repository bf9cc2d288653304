import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.data import BatchLoader
from bnlab.models import MLPConfig, build_mlp
from bnlab import training
from bnlab.modes import freeze_batchnorm
from bnlab.training import (
    AutogradStep,
    Engine,
    FusedMLPStep,
    History,
    StepLoop,
    TrainConfig,
    accuracy,
    by_columns_wins,
    count_correct,
    cross_entropy_by_columns,
    cross_entropy_by_rows,
    epoch_order,
    fused_unsupported_reason,
    make_step,
    pick_device,
    swapped_product_wins,
    train,
    train_mlp,
    train_model,
)

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


def test_a_cpu_run_records_the_threads_it_computed_with(small_data):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, history = train_mlp(MLPConfig(), small_data, SHORT, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert history.threads == 1
    assert History.from_dict(history.to_dict()).threads == 1
    stored = history.to_dict()
    del stored["threads"]  # a History stored before the field existed
    assert History.from_dict(stored).threads is None


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


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": 0}, {"epochs": True}, {"batch_size": -1}, {"lr": 0}, {"lr": float("inf")}, {"lr": float("nan")},
        {"lr": True}, {"eval_batch_size": 1.5}, {"seed": "1"}, {"seed": -1}, {"seed": False},
        {"weight_decay": -0.1}, {"weight_decay": float("nan")}, {"momentum": 1.0}, {"momentum": -0.5},
        {"record_train_acc": 1},
    ],
    ids=repr,
)
def test_invalid_train_config_names_the_field(kwargs):
    (field,) = kwargs
    with pytest.raises(ValueError, match=f"TrainConfig.{field} must be"):
        TrainConfig(**kwargs)


def test_training_accuracy_is_recorded_only_when_asked_for(small_data):
    _, without = train_model(MLPConfig(), small_data, SHORT, device="cpu", progress=False)
    _, with_train = train_model(MLPConfig(), small_data, dataclasses.replace(SHORT, record_train_acc=True),
                                device="cpu", progress=False)
    assert [e.train_acc for e in without.epochs] == [None, None]
    assert all(0 <= e.train_acc <= 100 for e in with_train.epochs)
    assert [e.val_acc for e in without.epochs] == [e.val_acc for e in with_train.epochs]  # evaluation changes nothing
    assert History.from_dict(without.to_dict()) == without
    assert "-" in without.table().splitlines()[1]


def test_momentum_and_weight_decay_reach_torch_optim_sgd(small_data):
    config = dataclasses.replace(SHORT, epochs=1, momentum=0.9, weight_decay=5e-4, seed=4)
    torch.manual_seed(0)
    ours = build_mlp()
    plain = copy.deepcopy(ours)
    train(ours, small_data, config, device="cpu", progress=False)
    reference_loop(plain, small_data.train, steps=10, batch_size=100, lr=0.1, seed=4, momentum=0.9, weight_decay=5e-4)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), plain.state_dict().values()))
    torch.manual_seed(0)
    without = build_mlp()
    train(without, small_data, dataclasses.replace(config, momentum=0.0), device="cpu", progress=False)
    assert not torch.equal(without[1].weight, ours[1].weight)


def test_a_diverging_run_is_recorded_not_raised(small_data):
    _, history = train_model(MLPConfig(placement="none"), small_data, TrainConfig(epochs=2, batch_size=100, lr=1e6),
                             device="cpu", progress=False)
    assert len(history.epochs) == 2 and not math.isfinite(history.final.loss)
    assert 0 <= history.test_acc <= 100 and 0 <= history.final.val_acc <= 100


def test_train_model_builds_from_the_config_and_train_mlp_is_the_same_function(small_data):
    model, history = train_model(MLPConfig(hidden=(16,)), small_data, SHORT, device="cpu", progress=False)
    assert model[1].out_features == 16 and len(history.epochs) == 2
    assert train_mlp is train_model


def test_progress_bar_can_be_turned_off(small_data, capsys):
    train_mlp(MLPConfig(), small_data, TrainConfig(epochs=1, batch_size=500), device="cpu", progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


# --- the fast training path: exactly the plain loop, only faster --------------------------------------------------



def reference_loop(model, split, *, steps, batch_size, lr, seed, momentum=0.0, weight_decay=0.0):
    """The plain loop, written out: standard modules, autograd, torch.optim.SGD, BatchLoader's batch order."""
    torch.manual_seed(seed)  # dropout masks, as train() seeds them
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    for i in range(steps):
        index = order[i * batch_size : (i + 1) * batch_size]
        loss = F.cross_entropy(model(split.images[index]), split.labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


@pytest.mark.parametrize(
    "config",
    [MLPConfig(), MLPConfig(placement="after"), MLPConfig(placement="none"), MLPConfig(dropout=0.3), MLPConfig(init_std=0.001)],
    ids=["before", "after", "none", "dropout", "bad-init"],
)
def test_fast_path_gives_bitwise_the_parameters_of_a_plain_loop(small_data, config):
    torch.manual_seed(0)
    fast = build_mlp(config)
    plain = copy.deepcopy(fast)
    assert fused_unsupported_reason(fast) is None  # the fast path really is taken
    train(fast, small_data, TrainConfig(epochs=1, batch_size=100, seed=5), device="cpu", progress=False)
    reference_loop(plain, small_data.train, steps=10, batch_size=100, lr=0.1, seed=5)
    for (name, a), b in zip(fast.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name  # weights, biases, running statistics, num_batches_tracked
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        assert torch.equal(a.grad, b.grad), name  # the last step's gradients are left in .grad, as the plain loop does


def odd_batchnorm(kind: str) -> nn.Sequential:
    torch.manual_seed(0)
    model = build_mlp()
    if kind == "cumulative":
        model[2] = nn.BatchNorm1d(75, momentum=None)
    elif kind == "untracked":
        model[2] = nn.BatchNorm1d(75, track_running_stats=False)
    elif kind == "no-affine":
        model[5] = nn.BatchNorm1d(45, affine=False)
    elif kind == "frozen":
        freeze_batchnorm(model)  # eval-mode BatchNorm inside a training step
    return model


@pytest.mark.parametrize("kind", ["cumulative", "untracked", "no-affine", "frozen"])
def test_fused_step_follows_every_batchnorm_setting_exactly(small_data, kind):
    fused, plain = odd_batchnorm(kind), odd_batchnorm(kind)
    assert fused_unsupported_reason(fused) is None
    config = TrainConfig(epochs=2, batch_size=100)
    first = train(fused, small_data, config, device="cpu", progress=False)
    second = train(plain, small_data, config, device="cpu", progress=False, engine=Engine(fused=False))
    assert without_seconds(first) == without_seconds(second)
    assert all(torch.equal(a, b) for a, b in zip(fused.state_dict().values(), plain.state_dict().values()))


@pytest.fixture
def swapping_always_faster(monkeypatch):
    """Pretend every swapped product and every by-columns loss is the faster one, so only exactness decides."""
    monkeypatch.setattr(training, "_faster", lambda first, second: True)
    swapped_product_wins.cache_clear()
    by_columns_wins.cache_clear()
    yield
    swapped_product_wins.cache_clear()
    by_columns_wins.cache_clear()


def test_swapped_product_is_taken_only_where_it_gives_the_same_bits(swapping_always_faster):
    threads = torch.get_num_threads()
    x, w = torch.rand(100, 784), torch.randn(75, 784)
    assert swapped_product_wins(100, 784, 75, threads) == torch.equal(x @ w.t(), (w @ x.t()).t())
    for rows, n_out in [(100, 8), (3, 75)]:  # shapes where MKL rounds differently the other way round
        x, w = torch.rand(rows, 784), torch.randn(n_out, 784)
        if not torch.equal(x @ w.t(), (w @ x.t()).t()):
            assert not swapped_product_wins(rows, 784, n_out, threads)


def test_loss_by_columns_is_taken_only_where_it_gives_the_same_bits(swapping_always_faster):
    threads, one = torch.get_num_threads(), torch.ones(())
    for rows in (64, 100, 250, 256):
        z = 4 * torch.randn(rows, 10, generator=torch.Generator().manual_seed(rows))
        y = torch.randint(0, 10, (rows,))
        same = all(torch.equal(a, b) for a, b in zip(cross_entropy_by_rows(z, y, one), cross_entropy_by_columns(z, y, one)))
        assert by_columns_wins(rows, 10, threads) == same, rows  # the bits differ by shape, not by the logits


def test_loss_by_rows_is_cross_entropy_and_its_gradient():
    z = torch.randn(32, 10, requires_grad=True)
    y = torch.randint(0, 10, (32,))
    loss = F.cross_entropy(z, y)
    loss.backward()
    ours, grad = cross_entropy_by_rows(z.detach(), y, torch.ones(()))
    assert torch.equal(ours, loss.detach()) and torch.equal(grad, z.grad)


@pytest.mark.parametrize(
    "hidden, batch_size", [((75, 45), 100), ((8,), 100), ((75, 45), 64)], ids=["lecture", "narrow", "batch-64"]
)
def test_fused_step_with_swapped_products_is_still_bitwise_the_plain_loop(
    small_data, swapping_always_faster, hidden, batch_size
):
    torch.manual_seed(0)
    fast = build_mlp(MLPConfig(hidden=hidden))
    plain = copy.deepcopy(fast)
    train(fast, small_data, TrainConfig(epochs=1, batch_size=batch_size, seed=5), device="cpu", progress=False)
    reference_loop(plain, small_data.train, steps=len(small_data.train) // batch_size, batch_size=batch_size, lr=0.1, seed=5)
    assert swapped_product_wins.cache_info().currsize == len(hidden)  # each bias-free hidden Linear was considered
    assert by_columns_wins.cache_info().currsize == 1  # and so was the loss
    for (name, a), b in zip(fast.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name


def test_fused_step_declines_what_it_cannot_reproduce():
    assert fused_unsupported_reason(build_mlp(MLPConfig(placement="after", dropout=0.5))) is None
    hooked = build_mlp()
    hooked[3].register_forward_hook(lambda module, args, out: out * 2)
    patched = build_mlp()
    patched[2].forward = lambda x: x
    frozen = build_mlp()
    frozen[1].weight.requires_grad_(False)
    cases = {
        "has a hook": hooked,
        "replaced forward": patched,
        "does not require grad": frozen,
        "not one of": nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Tanh()),
        "first layer is not nn.Flatten": nn.Sequential(nn.Linear(784, 10)),
        "not an nn.Sequential": nn.Module(),
        "float64": build_mlp().double(),
    }
    for expected, model in cases.items():
        reason = fused_unsupported_reason(model)
        assert reason is not None and expected in reason, (expected, reason)
    assert isinstance(make_step(hooked, lr=0.1), AutogradStep)
    assert isinstance(make_step(build_mlp(), lr=0.1), FusedMLPStep)
    assert isinstance(make_step(build_mlp(), lr=0.1, engine=Engine(fused=False)), AutogradStep)
    assert isinstance(make_step(build_mlp(), lr=0.1, engine=Engine(amp=True)), AutogradStep)
    with pytest.raises(ValueError, match=r"FusedMLPStep cannot train this model: layer 3 \(ReLU\) has a hook"):
        FusedMLPStep(hooked, lr=0.1)


def test_fused_step_rejects_a_single_example_batch_like_batchnorm_does():
    step = FusedMLPStep(build_mlp(), lr=0.1)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        step(torch.rand(1, 1, 28, 28), torch.tensor([3]))


def test_step_loop_draws_the_batches_batchloader_draws(small_data):
    split = small_data.train
    seen = []
    loop = StepLoop(build_mlp(), lambda xb, yb: seen.append((xb.clone(), yb.clone())) or torch.zeros(()), split, 300)
    generator = torch.Generator().manual_seed(9)
    loader = BatchLoader(split, 300, shuffle=True, drop_last=True, seed=9)
    for _ in range(2):  # two epochs: the generator moves on between them
        seen.clear()
        loop.epoch(epoch_order(len(split), generator, torch.device("cpu")))
        expected = list(loader)
        assert len(seen) == len(expected) == len(loop) == 3  # drop_last
        assert all(torch.equal(x, ex) and torch.equal(y, ey) for (x, y), (ex, ey) in zip(seen, expected))


def test_step_loop_sums_the_batch_losses_on_the_device(small_data):
    losses = iter(torch.arange(1.0, 11.0))
    loop = StepLoop(build_mlp(), lambda xb, yb: next(losses), small_data.train, 100, graphs=True)
    assert loop.graph is None and not loop.graphs  # CUDA graphs only on CUDA; the CPU runs the same step eagerly
    total = loop.epoch(epoch_order(len(small_data.train), torch.Generator(), torch.device("cpu")))
    assert total.item() == sum(range(1, 11)) and total.dim() == 0


def test_count_correct_counts_on_the_device_and_matches_accuracy(small_data):
    model = build_mlp()
    correct = count_correct(model, small_data.val, batch_size=128)  # 1,000 is not a multiple of 128: a short last batch
    assert correct.dtype == torch.long and correct.device == small_data.val.images.device
    with torch.inference_mode():
        model.eval()
        expected = (model(small_data.val.images).argmax(1) == small_data.val.labels).sum().item()
    assert correct.item() == expected
    assert accuracy(model, small_data.val) == pytest.approx(100.0 * expected / len(small_data.val))


def test_amp_trains_under_bfloat16_autocast(small_data):
    _, history = train_mlp(MLPConfig(), small_data, SHORT, device="cpu", progress=False, engine=Engine(amp=True))
    _, exact = train_mlp(MLPConfig(), small_data, SHORT, device="cpu", progress=False)
    assert history.final.loss < history.epochs[0].loss and history.final.val_acc > 50
    assert without_seconds(history) != without_seconds(exact)  # bfloat16 rounds differently


@pytest.mark.parametrize("kwargs", [{"fused": 1}, {"cuda_graphs": "yes"}, {"amp": None}])
def test_invalid_engine_names_the_field(kwargs):
    (field,) = kwargs
    with pytest.raises(ValueError, match=f"Engine.{field} must be True or False"):
        Engine(**kwargs)


def test_train_rejects_a_batch_larger_than_the_training_split(small_data):
    with pytest.raises(ValueError, match="batch_size 5000 is larger than the training split"):
        train(build_mlp(), small_data, TrainConfig(epochs=1, batch_size=5_000), device="cpu", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replay_trains_like_eager_steps_on_the_gpu(small_data):
    config = TrainConfig(epochs=2, batch_size=100, seed=3)
    runs = {}
    for graphs in (True, False):
        model, history = train_mlp(MLPConfig(), small_data, config, device="cuda", progress=False,
                                   engine=Engine(cuda_graphs=graphs))
        runs[graphs] = (model.state_dict(), history)
    assert runs[True][1].device.startswith("cuda")
    for name, value in runs[True][0].items():
        assert torch.allclose(value.float(), runs[False][0][name].float(), rtol=1e-4, atol=1e-6), name
    assert runs[True][1].column("loss") == pytest.approx(runs[False][1].column("loss"), rel=1e-4)
