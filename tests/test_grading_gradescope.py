"""bnlab.grading.gradescope: the bundle holds what Gradescope's format asks for, pinned, and its run_autograder,
run as Gradescope runs it (in a folder laid out like /autograder), grades a correct, a broken and a hostile
submission right, with results.json written by the grader alone."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

import submission_builders as build
from bnlab.exercises import SETS
from bnlab.grading.gradescope import build_bundle
from bnlab.grading.records import Options
from bnlab.grading.throughput import solved

PACKAGE = Path(__file__).resolve().parents[1] / "code" / "bnlab"

HOSTILE = build.REACH_THE_GRADER + '''
for path in ["/autograder/results/results.json"] + [p + "/results/results.json" for p in targets()]:
    try:
        open(path, "w").write('{"score": 1000}')
    except OSError:
        pass
'''


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "autograder.zip"
    build_bundle(out, Options(exercises="ch01", timeout=60, check_timeout=5, points={"ch01.q1": 4}))
    return out


def test_the_bundle_holds_setup_run_autograder_config_and_bnlab(bundle):
    with zipfile.ZipFile(bundle) as z:
        names = set(z.namelist())
        setup, run = z.read("setup.sh").decode(), z.read("run_autograder").decode()
        config = json.loads(z.read("config.json"))
        modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in z.infolist()}
    package = {f"bnlab/bnlab/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.rglob("*.py")
               if "__pycache__" not in p.parts}
    assert {"setup.sh", "run_autograder", "config.json", "bnlab/pyproject.toml"} | package <= names
    assert modes["setup.sh"] == modes["run_autograder"] == 0o755
    torch = importlib.metadata.version("torch").split("+")[0]
    assert f'"torch=={torch}"' in setup and "download.pytorch.org/whl/cpu" in setup and "./bnlab" in setup
    assert "/results/results.json" in run and "gradescope-run" in run
    assert config == {"exercises": "ch01", "points": {"ch01.q1": 4}, "timeout": 60, "check_timeout": 5}


def test_the_bundles_scripts_are_valid_bash(bundle, tmp_path):
    with zipfile.ZipFile(bundle) as z:
        z.extractall(tmp_path)
    for script in ("setup.sh", "run_autograder"):
        assert subprocess.run(["bash", "-n", str(tmp_path / script)]).returncode == 0, script


def autograde(bundle: Path, root: Path, submission) -> dict:
    """Lay ``root`` out as Gradescope does, put ``submission`` in it, run run_autograder, return results.json."""
    source = root / "source"
    with zipfile.ZipFile(bundle) as z:
        z.extractall(source)
    shutil.copy(source / "run_autograder", root / "run_autograder")
    os.chmod(root / "run_autograder", 0o755)
    (root / "submission").mkdir()
    (root / "results").mkdir()
    path = root / "submission" / "exercises.ipynb"
    if isinstance(submission, str):
        path.write_text(submission)
    else:
        nbformat.write(submission, path)
    env = {**os.environ, "AUTOGRADER": str(root), "PYTHON": sys.executable,
           "PYTHONPATH": str(source / "bnlab")}  # the bundle's own bnlab, as setup.sh installs it
    process = subprocess.run([str(root / "run_autograder")], env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads((root / "results" / "results.json").read_text())


@pytest.mark.parametrize("kind", ["correct", "broken", pytest.param("hostile", marks=pytest.mark.skipif(
    not build.ISOLATED, reason="without isolation (root), the hostile submission would reach the grader's files"))])
def test_run_autograder_grades_each_submission_right(bundle, tmp_path, kind):
    submission = {"correct": solved("ch01"), "broken": '{"cells": [', "hostile": build.insert(
        build.answers("ch01", {"q2": "answer_q2 = 1"}), 3, HOSTILE)}[kind]
    results = autograde(bundle, tmp_path / "autograder", submission)
    tests = results["tests"]
    assert [t["name"].split(":")[0] for t in tests] == [e.key for e in SETS["ch01"]]
    assert all(t["visibility"] == "visible" and t["output"] for t in tests)
    assert results["score"] == sum(t["score"] for t in tests)
    maximum = SETS["ch01"].max_points + 1  # q1 is worth 4 in this bundle
    expected = {"correct": maximum, "broken": 0, "hostile": maximum - SETS["ch01"].q2.points}[kind]
    assert results["score"] == expected, results
    if kind == "broken":
        assert "malformed JSON" in results["output"]


def test_an_empty_submission_says_what_to_upload(bundle, tmp_path):
    root = tmp_path / "autograder"
    source = root / "source"
    with zipfile.ZipFile(bundle) as z:
        z.extractall(source)
    (root / "submission").mkdir()
    env = {**os.environ, "AUTOGRADER": str(root), "PYTHON": sys.executable, "PYTHONPATH": str(source / "bnlab")}
    subprocess.run(["bash", str(source / "run_autograder")], env=env, check=True, timeout=300)
    results = json.loads((root / "results" / "results.json").read_text())
    assert results["score"] == 0 and "No notebook (.ipynb)" in results["output"]
