"""bnlab.fast.products: a Linear layer's forward product swaps its order only where both orders give the same bits."""

import copy

import pytest
import torch

from bnlab.fast import FusedEngine, fused, products
from bnlab.models import MLPConfig, build_mlp
from bnlab.training import TrainConfig, train


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    """Every test starts as a fresh process would: no order chosen, no model shape checked."""
    monkeypatch.setattr(products, "_SWAP", {})
    monkeypatch.setattr(fused, "_CHECKED", {})


def operands(batch: int, n_in: int, n_out: int, bias: bool):
    generator = torch.Generator().manual_seed(batch * 1000 + n_out)
    x = torch.rand(batch, n_in, generator=generator)
    weight = torch.randn(n_out, n_in, generator=generator) * 0.05
    return x, weight, (torch.randn(n_out, generator=generator) if bias else None)


@pytest.mark.parametrize("bias", [False, True])
def test_the_swapped_order_computes_the_same_product(bias):
    x, weight, b = operands(64, 784, 75, bias)
    expected = torch.nn.functional.linear(x, weight, b)
    y = products.swapped(x, weight, b)
    assert y.is_contiguous() and y.shape == expected.shape
    torch.testing.assert_close(y, expected)


def test_same_bits_tells_signed_zeros_apart_and_matches_nans():
    assert products.same_bits(torch.tensor([0.0, float("nan")]), torch.tensor([0.0, float("nan")]))
    assert not products.same_bits(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert not products.same_bits(torch.tensor([1.0]), torch.tensor([1.0, 1.0]))
    assert not products.same_bits(torch.zeros(2), torch.zeros(3))
    assert products.same_bits(None, None) and not products.same_bits(torch.zeros(1), None)
    assert fused.same_bits is products.same_bits  # one comparison for the fused step's check and the products'


def in_float64(x, weight, bias):
    """The same product, rounded once at the end: different bits from float32 sums in most entries."""
    y = x.double() @ weight.double().t() + (0 if bias is None else bias.double())
    return y.float()


def wrong_for_negative_inputs(x, weight, bias):
    """Autograd's bits for inputs >= 0 (pixels), different ones as soon as an input is negative."""
    y = products.direct(x, weight, bias)
    return y if (x >= 0).all() else y + 1


def test_orders_agree_only_where_the_bits_match_on_the_input_and_on_random_data(monkeypatch):
    x, weight, bias = operands(64, 784, 75, True)
    monkeypatch.setattr(products, "swapped", products.direct)
    assert products.orders_agree(x, weight, bias)
    monkeypatch.setattr(products, "swapped", in_float64)
    assert not products.orders_agree(x, weight, bias)
    monkeypatch.setattr(products, "swapped", wrong_for_negative_inputs)  # the random probe has negative entries
    assert not products.orders_agree(x, weight, bias)


@pytest.mark.parametrize("agree, faster", [(True, True), (True, False), (False, True), (False, False)])
def test_the_order_swaps_only_where_both_give_the_same_bits_and_it_is_faster(monkeypatch, agree, faster):
    monkeypatch.setattr(products, "swapped", products.direct if agree else in_float64)
    monkeypatch.setattr(products, "swapped_is_faster", lambda *args: faster)
    x, weight, bias = operands(256, 784, 75, False)
    assert products.use_swapped(x, weight, bias) is (agree and faster)


def test_a_gpu_tensor_or_a_batch_of_images_never_swaps(monkeypatch):
    monkeypatch.setattr(products, "swapped_is_faster", lambda *args: True)
    x, weight, bias = operands(256, 784, 75, False)
    assert products.use_swapped(x.view(256, 1, 28, 28), weight, bias) is False
    assert products.use_swapped(torch.empty(256, 784, device="meta"), weight, bias) is False


def test_the_choice_is_made_once_per_shape_and_thread_count(monkeypatch):
    calls = []
    monkeypatch.setattr(products, "swapped_is_faster", lambda *args: calls.append(args[0].shape) or True)
    x, weight, bias = operands(256, 784, 75, False)
    for _ in range(3):
        products.use_swapped(x, weight, bias)
    assert len(calls) == 1
    products.use_swapped(x[:128], weight, bias)
    assert len(calls) == 2
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        products.use_swapped(x, weight, bias)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 3


def test_the_choice_leaves_the_global_random_state_alone():
    x, weight, bias = operands(256, 784, 75, False)
    state = torch.get_rng_state()
    products.use_swapped(x, weight, bias)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("faster", [True, False], ids=["timing-says-swap", "timing-says-keep"])
def test_training_gives_the_same_bits_whichever_order_the_timing_picks(small_data, monkeypatch, faster):
    monkeypatch.setattr(products, "swapped_is_faster", lambda *args: faster)
    torch.manual_seed(0)
    model = build_mlp(MLPConfig())
    plain = copy.deepcopy(model)
    config = TrainConfig(epochs=1, batch_size=100, seed=3)
    train(model, small_data, config, device="cpu", progress=False, engine=FusedEngine())
    train(plain, small_data, config, device="cpu", progress=False)
    first_layer = ((100, 784), (75, 784), False, torch.float32, torch.get_num_threads())
    x, weight, _ = operands(100, 784, 75, False)
    # the order that ran: the swapped one wherever its bits match (with MKL here they do for this shape)
    assert products._SWAP[first_layer] is (faster and products.orders_agree(x, weight, None))
    assert all(fused.same_bits(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))


def test_a_layer_decides_again_when_the_thread_count_changes(monkeypatch):
    """The bits of the two orders may agree with one thread count and not with another: a step that lives across a
    change of threads must not keep the old decision."""
    decided = []
    monkeypatch.setattr(products, "use_swapped", lambda x, w, b: decided.append(torch.get_num_threads()) or False)
    torch.manual_seed(0)
    model = build_mlp(MLPConfig(hidden=(8,)))
    step = fused.FusedStep(model, torch.optim.SGD(model.parameters(), lr=0.1), check=False)
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    threads = torch.get_num_threads()
    step(x, y)
    step(x, y)
    assert len(decided) == 2  # two Linear layers, once each
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        step(x, y)
    finally:
        torch.set_num_threads(threads)
    assert len(decided) == 4 and decided[2:] == [1 if threads > 1 else 2] * 2
