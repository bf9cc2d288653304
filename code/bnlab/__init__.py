"""bnlab: the code behind the course module *BatchNorm in PyTorch*.

Modules, named for the ideas the chapters use:

* ``data``: MNIST as tensors on the training device; the offline MNIST-10k subset; integrity checks.
* ``models``: the lecture's MLP from an ``MLPConfig`` (hidden sizes, BatchNorm placement, bias, dropout), a small
  CNN from a ``CNNConfig`` (channels, normaliser, placement); ``build_model(config)`` for either.
* ``layers``: what every module that looks inside a model needs: its BatchNorm layers, its device, every
  module's train/eval flag saved and restored.
* ``training``: the plain training loop (``TrainConfig``, ``train``, ``train_model``), ``accuracy``, device
  selection, seeding, the per-epoch ``History``.
* ``fast``: speed-ups beside the loop: a fused MLP step with the plain step's bits (checked at first use, with a
  fallback), CUDA graphs (opt-in).
* ``experiments``: runs cached on disk; several seeds per configuration in parallel worker processes; tables.
* ``stats``: the book's one statistical rule: ``Spread``, ``compare`` (paired t-test, 95 % CI), verdict sentences.
* ``batchnorm``: BatchNorm written out by hand (1d and 2d), checked against ``torch.nn.BatchNorm1d`` (chapter 1) and
  ``torch.nn.BatchNorm2d`` (chapter 6).
* ``folding``: folding an eval-mode BatchNorm into the Linear layer before or after it (chapter 3), or into the
  Conv2d layer before it (chapter 6).
* ``running_stats``: the momentum average of the statistics, and precise BN (chapter 4).
* ``modes``: train mode and eval mode, freezing BatchNorm while fine-tuning (chapter 5).
* ``convnets`` and ``distributed``: BatchNorm in a CNN: small batches and other normalisers, fine-tuning, fusing;
  data-parallel statistics and a synchronised BatchNorm with ``torch.distributed`` (chapter 6).
* ``explanations``: why BatchNorm helps: covariate shift and noise after BatchNorm, the loss landscape along the
  gradient, a learning-rate sweep (chapter "Why does BatchNorm help?"); ``scale_invariance``: a weight before
  BatchNorm, its gradient, its norm and the effective learning rate (same chapter).
* ``plots``: every figure: curves, seed spreads, running statistics, and explorers, embedded in the page (Altair)
  or live (ipywidgets).
* ``exercises``: the graded exercises (the framework, the probe that runs an answer, one module per chapter).
* ``grading``: ``python -m bnlab.grade`` for instructors: sandboxed kernels, reports, the Gradescope autograder,
  and ``grading.kernels``, running notebooks without sleeping through a kernel's message (grader, book build).
* ``bench``: ``python -m bnlab.bench``, how fast the plain loop and the fused step train against the standard
  DataLoader pipeline.
* ``profiles``, ``reference``, ``book``: run sizes (``BNLAB_PROFILE``), the lecture's recorded numbers, glue.
"""

from .data import DataError, Dataset, Split, load_mnist
from .models import CNNConfig, MLPConfig, build_cnn, build_mlp, build_model, count_parameters
from .profiles import Profile, current_profile
from .training import EpochStats, History, TrainConfig, accuracy, pick_device, train, train_mlp, train_model

__version__ = "0.1.0"

__all__ = [
    "CNNConfig",
    "DataError",
    "Dataset",
    "EpochStats",
    "History",
    "MLPConfig",
    "Profile",
    "Split",
    "TrainConfig",
    "accuracy",
    "build_cnn",
    "build_mlp",
    "build_model",
    "count_parameters",
    "current_profile",
    "load_mnist",
    "pick_device",
    "train",
    "train_mlp",
    "train_model",
]
