"""The command line, ``python -m bnlab`` (bnlab/__main__.py)."""

import subprocess
import sys

import pytest

from bnlab.__main__ import main
from bnlab.data import OFFICIAL_RAW


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--hidden", "--placement", "--bias", "--no-bias", "--dropout", "--init-std", "--epochs",
                   "--batch-size", "--lr", "--momentum", "--weight-decay", "--seed", "--device", "--data",
                   "--no-progress", "--train-samples", "--no-train-acc", "--engine"):
        assert option in text


def test_a_short_run_prints_the_per_epoch_table(subset_root, capsys):
    code = main(["train", "--epochs", "2", "--train-samples", "1000", "--data", str(subset_root),
                 "--no-progress", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "MNIST-10k subset (first 1,000 training images): 1,000 train" in out
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 2 and "test accuracy" in out


def per_epoch_rows(out: str) -> list[str]:
    return [line.rsplit(None, 1)[0] for line in out.splitlines() if line.strip()[:1].isdigit()]  # without seconds


def test_every_engine_prints_the_same_numbers_and_training_accuracy_is_optional(subset_root, capsys):
    common = ["train", "--epochs", "1", "--train-samples", "500", "--batch-size", "100", "--data", str(subset_root),
              "--no-progress", "--device", "cpu", "--momentum", "0.9", "--weight-decay", "0.001"]
    tables = {}
    for engine in ("fused", "plain", "cuda-graphs"):
        assert main([*common, "--engine", engine]) == 0
        tables[engine] = per_epoch_rows(capsys.readouterr().out)
    assert tables["fused"] == tables["plain"] == tables["cuda-graphs"] and len(tables["plain"]) == 1
    assert main([*common, "--no-train-acc"]) == 0
    (row,) = per_epoch_rows(capsys.readouterr().out)
    assert row.split()[2] == "-" and row.split()[1] == tables["plain"][0].split()[1]  # same loss, no train %


def test_bad_value_is_a_one_line_error_not_a_traceback(subset_root, capsys):
    code = main(["train", "--dropout", "1.5", "--data", str(subset_root)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: MLPConfig.dropout") and "Traceback" not in err


def test_bad_choice_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--placement", "middle"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_missing_data_is_reported_with_what_to_do(tmp_path, capsys, monkeypatch):
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    code = main(["train", "--data", str(tmp_path), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "could not be downloaded" in err and "build-mnist" in err and "build-subset" in err


def test_build_subset_command_builds_a_loadable_root(t10k_source, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bnlab", "build-subset", "--source", str(t10k_source), "--root", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "BNLAB_DATA" in result.stdout and (tmp_path / "MNIST" / "bnlab-subset.json").exists()


def test_build_mnist_command_builds_the_full_mnist(train_source, t10k_source, tmp_path, capsys):
    args = ["build-mnist", "--train-source", str(train_source), "--test-source", str(t10k_source)]
    assert main([*args, "--root", str(tmp_path)]) == 0
    assert f"BNLAB_DATA={tmp_path}" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir()) == sorted(OFFICIAL_RAW)


def test_build_mnist_from_a_wrong_folder_fails_clearly(t10k_source, tmp_path, capsys):
    args = ["build-mnist", "--train-source", str(tmp_path), "--test-source", str(t10k_source)]
    assert main([*args, "--root", str(tmp_path / "out")]) == 2
    assert "train-images-idx3-ubyte.gz not found" in capsys.readouterr().err


def test_build_subset_from_a_wrong_folder_fails_clearly(tmp_path, capsys):
    assert main(["build-subset", "--source", str(tmp_path), "--root", str(tmp_path / "out")]) == 2
    assert "not found" in capsys.readouterr().err
