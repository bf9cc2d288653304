"""Speed-ups beside the training loop, never inside it.

``bnlab.training`` is the plain loop; the engines here change how its steps run, not what they compute:

* ``fused``: ``FusedEngine``, a training step for the course's MLPs without an autograd graph, bitwise the plain
  step's (checked against it at first use; it falls back to the plain step with a warning where it is not);
* ``products``: a Linear layer's forward product, ``x W^T`` or ``(W x^T)^T``, whichever is faster where the two
  give the same bits (the fused step's one choice made by a timing, and it cannot change a result);
* ``graphs``: ``GraphEngine``, a step captured once as a CUDA graph and replayed for every batch (opt-in);
* ``stacked``: ``train_stacked``, all seeds of one MLP configuration trained together as one stacked model, equal
  to the seeds trained alone up to rounding (opt-in: ``bnlab.experiments.run_seeds(..., stacked=True)``).

Use one with ``train(model, data, config, engine=default_engine())``.
"""

from __future__ import annotations

from ..training import Engine
from .fused import FusedEngine, FusedStep
from .graphs import GraphEngine


def default_engine() -> Engine:
    """The engine ``bnlab`` trains with where speed matters (experiments, the command line, the benchmark):
    ``FusedEngine()`` on every device. It gives bitwise the results of the plain loop (``bnlab.training.Engine()``)
    or, where it cannot on this PyTorch, runs the plain loop. CUDA graphs (``GraphEngine``) stay opt-in."""
    return FusedEngine()


__all__ = ["FusedEngine", "FusedStep", "GraphEngine", "default_engine"]
