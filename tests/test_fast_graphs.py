"""bnlab.fast.graphs: CUDA graphs, opt-in. What a CPU can check runs everywhere; replay itself needs a GPU."""

import contextlib
import copy
import warnings

import pytest
import torch
from torch import nn

from bnlab.fast import FusedEngine, FusedStep, GraphEngine, fused, graphs
from bnlab.models import MLPConfig, build_mlp
from bnlab.training import Engine, PlainStep, TrainConfig, train, train_model

CUDA = torch.device("cuda")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def sgd(model, **settings):
    return torch.optim.SGD(model.parameters(), lr=0.1, **settings)


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(fused.same_bits(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_graphs_are_declined_off_cuda_and_for_steps_that_read_the_host():
    model = build_mlp()
    assert "CUDA device" in graphs.graph_unsupported_reason(model, sgd(model), torch.device("cpu"))
    assert graphs.graph_unsupported_reason(model, sgd(model), CUDA) is None
    assert graphs.graph_unsupported_reason(model, sgd(model, weight_decay=1e-4), CUDA) is None
    cumulative = build_mlp()
    cumulative[2] = nn.BatchNorm1d(75, momentum=None)
    assert "momentum=None" in graphs.graph_unsupported_reason(cumulative, sgd(cumulative), CUDA)
    assert "momentum buffers" in graphs.graph_unsupported_reason(model, sgd(model, momentum=0.9), CUDA)
    adam = torch.optim.Adam(model.parameters())
    assert "only torch.optim.SGD" in graphs.graph_unsupported_reason(model, adam, CUDA)


def test_graph_engine_off_cuda_runs_the_inner_engines_step_without_a_warning():
    model = build_mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert type(GraphEngine().make_step(model, sgd(model))) is FusedStep
        assert type(GraphEngine(Engine()).make_step(model, sgd(model))) is PlainStep
    with pytest.raises(ValueError, match="inner must be a bnlab.training.Engine"):
        GraphEngine("fused")


def test_graph_engine_is_opt_in():
    from bnlab.fast import default_engine

    assert not isinstance(default_engine(), GraphEngine)


def test_training_state_puts_parameters_buffers_and_generators_back_in_place():
    torch.manual_seed(0)
    model = build_mlp(MLPConfig(dropout=0.5))
    optimizer = sgd(model)
    step = PlainStep(model, optimizer)
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    reference = copy.deepcopy(model)
    tensors = [*model.parameters(), *model.buffers()]
    random_state = torch.get_rng_state()
    saved = graphs.TrainingState(model, optimizer, torch.device("cpu"))
    for _ in range(3):  # warm-up steps: they train, update the running statistics and draw dropout masks
        step(x, y)
    saved.restore()
    assert state_equal(model, reference)
    assert all(a is b for a, b in zip(tensors, [*model.parameters(), *model.buffers()]))  # the same tensors
    assert torch.equal(torch.get_rng_state(), random_state)
    after_restore = step(x, y)
    torch.set_rng_state(random_state)
    assert torch.equal(after_restore, PlainStep(reference, sgd(reference))(x, y))  # same dropout masks
    assert state_equal(model, reference)


def test_a_failed_capture_warns_undoes_its_warm_up_and_trains_eagerly(small_data, monkeypatch):
    """The capture path on a CPU, with CUDA's stream and graph calls stubbed and the capture failing."""

    class Stream:
        def __init__(self, *args, **kwargs):
            pass

        def wait_stream(self, other):
            pass

    def failing_graph(graph):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", object)
    monkeypatch.setattr(torch.cuda, "graph", failing_graph)
    monkeypatch.setattr(graphs, "graph_unsupported_reason", lambda model, optimizer, device: None)

    config = TrainConfig(epochs=2, batch_size=100, seed=2)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        captured, captured_history = train_model(MLPConfig(dropout=0.3), small_data, config, device="cpu",
                                                 progress=False, engine=GraphEngine())
    eager, eager_history = train_model(MLPConfig(dropout=0.3), small_data, config, device="cpu", progress=False)
    assert state_equal(captured, eager)  # the three warm-up steps left no trace, dropout masks included
    assert [e.loss for e in captured_history.epochs] == [e.loss for e in eager_history.epochs]


# --- on a GPU -----------------------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("inner", [FusedEngine(), Engine()], ids=["fused", "plain"])
def test_cuda_graph_replay_trains_like_eager_steps_dropout_included(small_data, inner):
    config = TrainConfig(epochs=2, batch_size=100, seed=3)
    runs = {}
    for label, engine in (("graph", GraphEngine(inner)), ("eager", inner)):
        torch.cuda.manual_seed(3)
        model, history = train_model(MLPConfig(dropout=0.3), small_data, config, device="cuda", progress=False,
                                     engine=engine)
        runs[label] = (model, history, torch.cuda.get_rng_state())
    (graph_model, graph_history, graph_random), (eager_model, eager_history, eager_random) = runs.values()
    assert graph_history.device.startswith("cuda")
    assert torch.equal(graph_random, eager_random)  # the warm-up drew nothing; each replay drew what a step draws
    for (name, a), b in zip(graph_model.state_dict().items(), eager_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)  # different dropout masks differ far more
    assert [e.loss for e in graph_history.epochs] == pytest.approx([e.loss for e in eager_history.epochs], rel=1e-5)


@needs_cuda
def test_the_first_replay_starts_from_the_state_before_the_capture():
    torch.manual_seed(0)
    model = build_mlp(MLPConfig(dropout=0.5)).to(CUDA)
    twin = copy.deepcopy(model)
    x, y = torch.rand(64, 1, 28, 28, device=CUDA), torch.randint(0, 10, (64,), device=CUDA)
    graph_step = GraphEngine(Engine()).make_step(model, sgd(model))
    assert isinstance(graph_step, graphs.GraphStep)
    torch.cuda.manual_seed(7)
    graph_loss = graph_step(x, y)
    torch.cuda.manual_seed(7)
    eager_loss = PlainStep(twin, sgd(twin))(x, y)
    torch.testing.assert_close(graph_loss, eager_loss, rtol=1e-6, atol=1e-7)
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
