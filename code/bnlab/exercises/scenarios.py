"""Models and data that exercise notebooks hand to the learner to investigate with code (not random check inputs:
those are in ``inputs``). Each is deterministic, small enough to build in about a second on a CPU, and leaves the
global random generator as it was.

``collapsed_model()`` (ch05.q6): a model whose eval accuracy collapsed, and its data.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def single_threaded():
    """Run the block on one CPU thread, then restore the thread count. For tiny tensors one thread is fastest, gives
    the same bits on every machine, and never waits on a busy thread pool (on a loaded machine, a BatchNorm forward
    pass of a few hundred numbers can take a thousand times longer on two threads than on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# collapsed_model's data set, model and training.
COLLAPSE = {"features": 16, "classes": 4, "hidden": 32, "train": 800, "test": 400, "batch_size": 32, "epochs": 5,
            "lr": 0.1, "seed": 0, "offset": 20.0}


def readings(generator: torch.Generator, centres: torch.Tensor, n: int) -> tuple:
    """``n`` examples of the synthetic data set: each class a cloud around its centre, classes in turn."""
    y = torch.arange(n) % len(centres)
    x = centres[y] + 1.5 * torch.randn(n, centres.shape[1], generator=generator)
    return x, y


def collapsed_model() -> tuple:
    """The model of ch05.q6 and its data: ``model, (train_x, train_y), (test_x, test_y)``.

    A synthetic four-class data set of 16 features (values around 20, like unnormalised sensor readings), and an
    MLP with two BatchNorm layers trained on it with plain SGD for ``epochs`` epochs, with BatchNorm's momentum set
    to 0: its running statistics never leave their start values 0 and 1, so eval mode normalises with numbers that
    are not the data's, and its accuracy collapses to about chance, while train mode does well. Deterministic; the
    global random generator is left as it was.
    """
    p = COLLAPSE
    generator = torch.Generator().manual_seed(p["seed"])
    centres = p["offset"] + 2.0 * torch.randn(p["classes"], p["features"], generator=generator)
    train, test = readings(generator, centres, p["train"]), readings(generator, centres, p["test"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p["seed"])
        model = nn.Sequential(
            nn.Linear(p["features"], p["hidden"], bias=False), nn.BatchNorm1d(p["hidden"], momentum=0.0), nn.ReLU(),
            nn.Linear(p["hidden"], p["hidden"], bias=False), nn.BatchNorm1d(p["hidden"], momentum=0.0), nn.ReLU(),
            nn.Linear(p["hidden"], p["classes"]))
    with single_threaded():
        model.train()
        for _ in range(p["epochs"]):
            order = torch.randperm(p["train"], generator=generator)
            for start in range(0, p["train"], p["batch_size"]):
                batch = order[start:start + p["batch_size"]]
                loss = nn.functional.cross_entropy(model(train[0][batch]), train[1][batch])
                model.zero_grad()
                loss.backward()
                with torch.no_grad():  # plain SGD
                    for parameter in model.parameters():
                        parameter -= p["lr"] * parameter.grad
    return model, train, test
