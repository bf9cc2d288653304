"""Command line: ``python -m bnlab train ...``, ``python -m bnlab build-mnist ...`` and
``python -m bnlab build-subset ...``.

Run ``python -m bnlab COMMAND --help`` for every option.
"""

from __future__ import annotations

import argparse
import sys

from .data import DataError, build_mnist, build_subset, load_mnist
from .fast import FusedEngine, GraphEngine
from .models import PLACEMENTS, MLPConfig
from .training import Engine, TrainConfig, train_model

ENGINES = {"fused": FusedEngine, "plain": Engine, "cuda-graphs": GraphEngine}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m bnlab", description="BatchNorm in PyTorch: course tools.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "train",
        help="train one MLP configuration and print the per-epoch table",
        description="Train one MLP configuration on MNIST and print loss and accuracy after every epoch. "
        "The defaults are the lecture's reference run: 784-75-45-10, BatchNorm before ReLU, no hidden bias, "
        "SGD lr 0.1, batch 256, 50 epochs, seed 123.",
    )
    run.add_argument("--hidden", type=int, nargs="+", default=[75, 45], metavar="N", help="hidden layer sizes (default: 75 45)")
    run.add_argument("--placement", choices=PLACEMENTS, default="before", help="where BatchNorm goes relative to the ReLU (default: before)")
    bias = run.add_mutually_exclusive_group()
    bias.add_argument("--bias", dest="bias", action="store_true", default=None, help="give every hidden Linear layer a bias")
    bias.add_argument("--no-bias", dest="bias", action="store_false", help="no bias in the hidden Linear layers")
    run.add_argument("--dropout", type=float, default=0.0, help="dropout probability after each hidden block (default: 0)")
    run.add_argument("--init-std", type=float, default=None, help="start weights from N(0, STD^2), e.g. 0.001 (default: PyTorch's init)")
    run.add_argument("--epochs", type=int, default=50, help="number of epochs (default: 50)")
    run.add_argument("--batch-size", type=int, default=256, help="mini-batch size (default: 256)")
    run.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default: 0.1)")
    run.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default: 0, plain SGD)")
    run.add_argument("--weight-decay", type=float, default=0.0, help="SGD weight decay (default: 0)")
    run.add_argument("--seed", type=int, default=123, help="random seed for init, batch order and dropout (default: 123)")
    run.add_argument("--train-samples", type=int, default=None, help="use only the first N training images (default: all)")
    run.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    run.add_argument("--data", default=None, help="data folder (default: $BNLAB_DATA, else ./data)")
    run.add_argument("--no-train-acc", action="store_true",
                     help="skip the training-set accuracy after every epoch (about a third of the time)")
    run.add_argument("--engine", choices=tuple(ENGINES), default="fused",
                     help="how steps run: fused (default; bitwise the plain loop's results, faster), plain "
                     "(bnlab.training's loop as written), cuda-graphs (the fused step replayed as a CUDA graph)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    full = commands.add_parser(
        "build-mnist",
        help="build the full MNIST offline from the official IDX files (results labelled 'MNIST')",
        description="Build a torchvision-layout MNIST root (ROOT/MNIST/raw/) from the official IDX files: "
        "train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz (60,000 training images) and "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (10,000 test images), gzipped or not. "
        "Each file's uncompressed content is checked against the official MD5 first. "
        "torchvision.datasets.MNIST(ROOT, download=True) then loads it and downloads nothing. "
        "Results from it are labelled 'MNIST'. Use build-subset instead when only the test-set files exist.",
    )
    full.add_argument("--train-source", required=True, help="folder holding the two official train-*.gz files")
    full.add_argument("--test-source", required=True, help="folder holding the two official t10k-*.gz files")
    full.add_argument("--root", required=True, help="data folder to create (then set BNLAB_DATA to it)")

    subset = commands.add_parser(
        "build-subset",
        help="build the offline MNIST-10k subset from the official test-set files alone (not the full MNIST)",
        description="Build a torchvision-layout MNIST root from t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz (the official 10,000-image MNIST test set), re-split into train, "
        "validation and test. Results from it are labelled 'MNIST-10k subset'. Where the training-set files "
        "exist too, build-mnist builds the full MNIST instead.",
    )
    subset.add_argument("--source", required=True, help="folder holding the two official t10k .gz files")
    subset.add_argument("--root", required=True, help="data folder to create (then set BNLAB_DATA to it)")
    subset.add_argument("--train", type=int, default=8_000, help="training images (default: 8000)")
    subset.add_argument("--val", type=int, default=1_000, help="validation images (default: 1000)")
    subset.add_argument("--test", type=int, default=1_000, help="test images (default: 1000)")
    return top


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    try:
        if args.command == "train":
            model_config = MLPConfig(
                hidden=tuple(args.hidden), placement=args.placement, bias=args.bias,
                dropout=args.dropout, init_std=args.init_std,
            )
            train_config = TrainConfig(
                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, momentum=args.momentum,
                weight_decay=args.weight_decay, record_train_acc=not args.no_train_acc,
            )
            data = load_mnist(args.data, train_samples=args.train_samples)
            print(data.describe())
            _, history = train_model(model_config, data, train_config, device=args.device,
                                     progress=not args.no_progress, engine=ENGINES[args.engine]())
            print(history.table())
        elif args.command == "build-mnist":
            root = build_mnist(args.train_source, args.test_source, args.root)
            print(f"built the full MNIST in {root}; use it with: export BNLAB_DATA={root}")
        else:
            root = build_subset(args.source, args.root, train=args.train, val=args.val, test=args.test)
            print(f"built the MNIST-10k subset in {root}; use it with: export BNLAB_DATA={root}")
    except (ValueError, DataError) as err:
        first, *rest = str(err).splitlines()
        print(f"error: {first}", file=sys.stderr)
        for line in rest:
            print(line, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
