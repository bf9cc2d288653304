"""bnlab: the code behind the course module *BatchNorm in PyTorch*.

Modules, named for the ideas the chapters use:

* ``data``: MNIST as tensors on the training device; the offline MNIST-10k subset; integrity checks.
* ``models``: the lecture's MLP from an ``MLPConfig`` (hidden sizes, BatchNorm placement, bias, dropout), a small
  CNN from a ``CNNConfig`` (channels, normaliser, placement), ``build_model`` for either.
* ``training``: ``train`` and ``accuracy``, device selection, seeding, the per-epoch ``History``.
* ``experiments``: runs cached on disk; several seeds per configuration in parallel worker processes; tables.
* ``stats``: the book's one statistical rule: ``Spread``, ``compare`` (paired t-test, 95 % CI), verdict sentences.
* ``batchnorm``: BatchNorm written out by hand (1d and 2d), checked against ``torch.nn.BatchNorm1d``/``2d``.
* ``folding``: folding an eval-mode BatchNorm into the preceding Linear layer (chapter 3) or Conv2d layer.
* ``running_stats``: the momentum average of the statistics, and precise BN (chapter 4).
* ``modes``: train mode and eval mode, freezing BatchNorm while fine-tuning (chapter 5).
* ``convnets`` and ``distributed``: BatchNorm in a CNN: small batches and other normalisers, fine-tuning, fusing;
  data-parallel statistics and a synchronised BatchNorm with ``torch.distributed`` (chapter 6).
* ``plots`` and ``widgets``: figures and interactive explorers.
* ``exercises`` and ``grade``: the graded exercises' checks, and ``python -m bnlab.grade`` for instructors.
* ``notebooks``: running notebooks with nbclient without sleeping through a kernel's message (grader, book build).
* ``bench``: ``python -m bnlab.bench``, how fast training runs against the standard DataLoader pipeline.
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
