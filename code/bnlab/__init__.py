"""bnlab: the code behind the course module *BatchNorm in PyTorch*.

Modules: ``data`` (MNIST on the training device), ``models`` (the lecture's MLP), ``training`` (train and
evaluate), ``plots`` (training curves), ``profiles`` (full or CI-sized runs).
"""

from .data import DataError, Dataset, Split, load_mnist
from .models import MLPConfig, build_mlp, count_parameters
from .profiles import Profile, current_profile
from .training import History, TrainConfig, accuracy, pick_device, train, train_mlp

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "Dataset",
    "History",
    "MLPConfig",
    "Profile",
    "Split",
    "TrainConfig",
    "accuracy",
    "build_mlp",
    "count_parameters",
    "current_profile",
    "load_mnist",
    "pick_device",
    "train",
    "train_mlp",
]
