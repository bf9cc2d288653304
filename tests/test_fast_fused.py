"""bnlab.fast.fused: the fused step gives bitwise the plain loop's results, or the plain loop runs instead."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.fast import FusedEngine, FusedStep, default_engine, fused
from bnlab.models import MLPConfig, build_mlp
from bnlab.modes import freeze_batchnorm
from bnlab.training import Engine, PlainStep, TrainConfig, train, train_model


@pytest.fixture(autouse=True)
def fresh_checks(monkeypatch):
    """Every test starts as a fresh process would: no model shape checked yet."""
    monkeypatch.setattr(fused, "_CHECKED", {})


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(fused.same_bits(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def train_both(data, model: nn.Module, config: TrainConfig):
    """``model`` trained with the fused engine and a copy of it with the plain loop; both histories and models."""
    plain = copy.deepcopy(model)
    fast_history = train(model, data, config, device="cpu", progress=False, engine=FusedEngine())
    plain_history = train(plain, data, config, device="cpu", progress=False)
    return (model, fast_history), (plain, plain_history)


def losses(history) -> list[float]:
    return [e.loss for e in history.epochs] + [e.val_acc for e in history.epochs] + [history.test_acc]


@pytest.mark.parametrize(
    "config, batch_size",
    [(MLPConfig(), 100), (MLPConfig(), 64), (MLPConfig(), 250), (MLPConfig(), 256),
     (MLPConfig(placement="after"), 100), (MLPConfig(placement="none"), 100), (MLPConfig(dropout=0.3), 100),
     (MLPConfig(init_std=0.001), 100), (MLPConfig(hidden=(8,)), 100)],
    ids=["before", "batch-64", "batch-250", "batch-256", "after", "none", "dropout", "bad-init", "narrow"],
)
def test_fused_engine_gives_bitwise_the_plain_loops_parameters(small_data, config, batch_size):
    torch.manual_seed(0)
    (fast, fast_history), (plain, plain_history) = train_both(
        small_data, build_mlp(config), TrainConfig(epochs=1, batch_size=batch_size, seed=5)
    )
    assert state_equal(fast, plain)  # weights, biases, running statistics, num_batches_tracked
    assert all(fused.same_bits(a.grad, b.grad) for a, b in zip(fast.parameters(), plain.parameters()))
    assert losses(fast_history) == losses(plain_history)


def test_fused_engine_follows_momentum_and_weight_decay_exactly(small_data):
    torch.manual_seed(0)
    config = TrainConfig(epochs=2, batch_size=100, momentum=0.9, weight_decay=1e-3)
    (fast, _), (plain, _) = train_both(small_data, build_mlp(MLPConfig(dropout=0.1)), config)
    assert state_equal(fast, plain)


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
    model = odd_batchnorm(kind)
    assert fused.unsupported_reason(model) is None
    (fast, fast_history), (plain, plain_history) = train_both(small_data, model, TrainConfig(epochs=2, batch_size=100))
    assert losses(fast_history) == losses(plain_history)
    assert state_equal(fast, plain)


def test_the_fused_step_really_runs_when_it_is_exact(small_data, monkeypatch):
    calls = []
    original = FusedStep.fused
    monkeypatch.setattr(FusedStep, "fused", lambda self, xb, yb: calls.append(1) or original(self, xb, yb))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        train(build_mlp(), small_data, TrainConfig(epochs=1, batch_size=100), device="cpu", progress=False,
              engine=FusedEngine())
    assert len(calls) == 10 + 2  # ten steps, and two on the check's fused twin
    assert fused._CHECKED and all(verdict is None for verdict in fused._CHECKED.values())


def test_same_seed_twice_gives_the_same_bits_with_the_fused_engine(small_data):
    config = TrainConfig(epochs=2, batch_size=100, seed=3)
    first, _ = train_model(MLPConfig(dropout=0.3), small_data, config, device="cpu", progress=False,
                           engine=FusedEngine())
    again, _ = train_model(MLPConfig(dropout=0.3), small_data, config, device="cpu", progress=False,
                           engine=FusedEngine())
    assert state_equal(first, again)


# --- the check and the fallback -----------------------------------------------------------------------------------


def batch(n: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def test_check_exact_passes_and_leaves_model_optimizer_and_generators_alone():
    torch.manual_seed(0)
    model = build_mlp(MLPConfig(dropout=0.5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = copy.deepcopy(model.state_dict())
    random_state = torch.get_rng_state()
    assert fused.check_exact(model, optimizer, *batch()) is None
    assert torch.equal(torch.get_rng_state(), random_state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not optimizer.state and all(p.grad is None for p in model.parameters())


def relu_backward_off_by_one_ulp(self, g, y, grads):
    dx = fused.aten.threshold_backward(g, y, 0)
    return torch.nextafter(dx, torch.full_like(dx, float("inf")))  # a kernel that rounds differently


def test_a_step_that_differs_falls_back_to_the_plain_step_with_one_warning(small_data, monkeypatch):
    monkeypatch.setattr(fused._ReLU, "backward", relu_backward_off_by_one_ulp)
    torch.manual_seed(0)
    model = build_mlp()
    plain = copy.deepcopy(model)
    config = TrainConfig(epochs=2, batch_size=100)
    with pytest.warns(RuntimeWarning, match="does not reproduce the plain step") as caught:
        fast_history = train(model, small_data, config, device="cpu", progress=False, engine=FusedEngine())
        train(copy.deepcopy(plain), small_data, config, device="cpu", progress=False, engine=FusedEngine())
    assert len([w for w in caught if "does not reproduce" in str(w.message)]) == 1  # once per process and shape
    plain_history = train(plain, small_data, config, device="cpu", progress=False)
    assert losses(fast_history) == losses(plain_history) and state_equal(model, plain)


def test_a_missing_op_falls_back_to_the_plain_step_with_a_warning(small_data, monkeypatch):
    class AtenWithoutBatchNormBackward:
        def __getattr__(self, name):
            if name == "native_batch_norm_backward":
                raise AttributeError(f"'_OpNamespace' 'aten' object has no attribute '{name}'")
            return getattr(torch.ops.aten, name)

    monkeypatch.setattr(fused, "aten", AtenWithoutBatchNormBackward())
    torch.manual_seed(0)
    model = build_mlp()
    plain = copy.deepcopy(model)
    config = TrainConfig(epochs=1, batch_size=100)
    with pytest.warns(RuntimeWarning, match="the fused step failed: AttributeError"):
        train(model, small_data, config, device="cpu", progress=False, engine=FusedEngine())
    train(plain, small_data, config, device="cpu", progress=False)
    assert state_equal(model, plain)


def counted_checks(monkeypatch) -> list:
    """A list that grows by one with every ``check_exact`` call (which still runs)."""
    seen = []
    original = fused.check_exact
    monkeypatch.setattr(fused, "check_exact", lambda *args, **kw: seen.append(1) or original(*args, **kw))
    return seen


def test_a_new_mode_flag_is_checked_again(monkeypatch):
    seen = counted_checks(monkeypatch)
    model = build_mlp()
    step = FusedStep(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = batch()
    step(x, y)
    step(x, y)
    assert len(seen) == 1
    freeze_batchnorm(model)
    step(x, y)
    assert len(seen) == 2


def test_a_new_thread_count_is_checked_again(monkeypatch):
    """A product can round differently with another number of threads: the check runs again for it."""
    seen = counted_checks(monkeypatch)
    model = build_mlp()
    step = FusedStep(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = batch()
    threads = torch.get_num_threads()
    step(x, y)
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        step(x, y)
    finally:
        torch.set_num_threads(threads)
    assert len(seen) == 2


# --- what it declines ---------------------------------------------------------------------------------------------


def test_fused_engine_declines_what_it_cannot_reproduce_and_trains_it_plainly():
    assert fused.unsupported_reason(build_mlp(MLPConfig(placement="after", dropout=0.5))) is None
    hooked = build_mlp()
    hooked[3].register_forward_hook(lambda module, args, out: out * 2)
    patched = build_mlp()
    patched[2].forward = lambda x: x
    frozen = build_mlp()
    frozen[1].weight.requires_grad_(False)
    relu = nn.ReLU()
    shared = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), relu, nn.Linear(10, 10), relu, nn.Linear(10, 10))
    cases = {
        "has a hook": hooked,
        "replaced forward": patched,
        "does not require grad": frozen,
        "appears twice": shared,
        "not one of": nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Tanh()),
        "first layer is not nn.Flatten": nn.Sequential(nn.Linear(784, 10)),
        "not an nn.Sequential": nn.Module(),
        "float64": build_mlp().double(),
    }
    for expected, model in cases.items():
        reason = fused.unsupported_reason(model)
        assert reason is not None and expected in reason, (expected, reason)
    optimizer = torch.optim.SGD(build_mlp().parameters(), lr=0.1)
    assert type(FusedEngine().make_step(hooked, optimizer)) is PlainStep
    assert type(FusedEngine().make_step(build_mlp(), optimizer)) is FusedStep
    assert type(Engine().make_step(build_mlp(), optimizer)) is PlainStep
    with pytest.raises(ValueError, match=r"FusedStep cannot train this model: layer 3 \(ReLU\) has a hook"):
        FusedStep(hooked, optimizer)


def test_fused_step_rejects_a_single_example_batch_like_batchnorm_does():
    model = build_mlp()
    step = FusedStep(model, torch.optim.SGD(model.parameters(), lr=0.1), check=False)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        step(torch.rand(1, 1, 28, 28), torch.tensor([3]))


def test_cross_entropy_is_f_cross_entropy_and_its_gradient():
    z = torch.randn(32, 10, requires_grad=True)
    y = torch.randint(0, 10, (32,))
    loss = F.cross_entropy(z, y)
    loss.backward()
    ours, grad = fused.cross_entropy(z.detach(), y, torch.ones(()))
    assert torch.equal(ours, loss.detach()) and torch.equal(grad, z.grad)


def test_default_engine_is_the_fused_engine():
    assert isinstance(default_engine(), FusedEngine)


def test_plain_sgd_is_applied_directly_and_every_other_optimizer_through_its_step():
    model = build_mlp()
    params = list(model.parameters())
    direct = {
        "plain SGD": torch.optim.SGD(params, lr=0.1),
        "momentum": torch.optim.SGD(params, lr=0.1, momentum=0.9),
        "weight decay": torch.optim.SGD(params, lr=0.1, weight_decay=1e-4),
        "foreach": torch.optim.SGD(params, lr=0.1, foreach=True),
        "some parameters only": torch.optim.SGD(params[:2], lr=0.1),
        "Adam": torch.optim.Adam(params),
    }
    assert {name: FusedStep(model, opt).direct_sgd for name, opt in direct.items()} == {
        "plain SGD": True, "momentum": False, "weight decay": False, "foreach": False,
        "some parameters only": False, "Adam": False,
    }


@pytest.mark.parametrize("make", [lambda p: torch.optim.Adam(p, lr=1e-3), lambda p: torch.optim.SGD(p, lr=0.05, foreach=True)],
                         ids=["adam", "sgd-foreach"])
def test_any_optimizer_gets_the_plain_steps_bits_through_its_own_step(make):
    torch.manual_seed(0)
    model = build_mlp(MLPConfig(dropout=0.2))
    assert fused.check_exact(model, make(model.parameters()), *batch(64), steps=3) is None
