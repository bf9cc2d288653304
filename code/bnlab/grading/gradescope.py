"""A Gradescope autograder: ``python -m bnlab.grade gradescope-bundle --out autograder.zip``.

The zip holds what Gradescope's autograder format asks for:

* ``setup.sh``: run once, as root, when Gradescope builds the image: installs the pinned torch and torchvision
  (CPU builds), then this very ``bnlab`` (its source is in the zip) and a Jupyter kernel;
* ``run_autograder``: run for every submission, as root: grades the notebooks in ``/autograder/submission`` and
  writes ``/autograder/results/results.json``, one test per exercise, each visible to the student with its
  message. ``AUTOGRADER`` (default ``/autograder``) and ``PYTHON`` (default ``python3``) move it elsewhere, for a
  test;
* ``config.json``: the grading options the bundle was made with (exercise set, points, time limits);
* ``bnlab/``: the package's source, and a ``pyproject.toml`` to install it.

Gradescope runs the autograder as root in a container, so kernels run as sandbox users (``sandbox``).
"""

from __future__ import annotations

import importlib.metadata
import json
import zipfile
from pathlib import Path

AUTOGRADER = "/autograder"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
PACKAGE = Path(__file__).resolve().parents[1]  # bnlab/

SETUP = """\
#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image.
set -euo pipefail
cd "$(dirname "$0")"
install() {{  # pip refuses system-wide installs on newer images unless told it may
  python3 -m pip install --no-cache-dir "$@" || python3 -m pip install --no-cache-dir --break-system-packages "$@"
}}
install --index-url {index} "torch=={torch}" "torchvision=={torchvision}"
install ./bnlab "ipykernel>=6"
python3 -c "import bnlab.grading, torch; print('bnlab', bnlab.__version__, 'torch', torch.__version__)"
"""

RUN = """\
#!/usr/bin/env bash
# Gradescope runs this for every submission, as root: grade the notebooks in $AUTOGRADER/submission and write
# $AUTOGRADER/results/results.json.
set -uo pipefail
AUTOGRADER="${AUTOGRADER:-/autograder}"
exec "${PYTHON:-python3}" -m bnlab.grade gradescope-run --root "$AUTOGRADER"
"""

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "bnlab"
version = "{version}"
requires-python = ">=3.10"
dependencies = {dependencies}

[tool.setuptools.packages.find]
include = ["bnlab*"]
"""

DEPENDENCIES = ["torch>=2.0", "torchvision>=0.15", "matplotlib>=3.5", "tqdm>=4.60", "ipywidgets>=7.6",
                "nbclient>=0.5", "nbformat>=5.0"]


def base_version(name: str) -> str:
    """The installed version of ``name`` without its local part (``2.15.0+cu132`` -> ``2.15.0``)."""
    return importlib.metadata.version(name).split("+")[0]


def dependencies() -> list:
    try:
        found = [r for r in importlib.metadata.requires("bnlab") or [] if "extra ==" not in r]
    except importlib.metadata.PackageNotFoundError:
        found = []
    return found or DEPENDENCIES


def config_of(options) -> dict:
    return {"exercises": options.exercises, "points": options.points, "timeout": options.timeout,
            "check_timeout": options.check_timeout}


def build_bundle(out, options) -> Path:
    """Write the autograder zip for grading with ``options`` (a ``records.Options``) to ``out``."""
    from .. import __version__

    out = Path(out)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bundle:
        def add(name: str, text: str, mode: int = 0o644) -> None:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            bundle.writestr(info, text)

        add("setup.sh", SETUP.format(index=TORCH_INDEX, torch=base_version("torch"),
                                     torchvision=base_version("torchvision")), 0o755)
        add("run_autograder", RUN, 0o755)
        add("config.json", json.dumps(config_of(options), indent=1) + "\n")
        add("bnlab/pyproject.toml", PYPROJECT.format(version=__version__, dependencies=json.dumps(dependencies())))
        for path in sorted(PACKAGE.rglob("*.py")):
            if "__pycache__" not in path.parts:
                add(f"bnlab/bnlab/{path.relative_to(PACKAGE).as_posix()}", path.read_text(encoding="utf-8"))
    return out


def notebooks_in(folder: Path) -> list:
    """Every notebook a student uploaded (in sub-folders too; Jupyter's checkpoints left out), sorted."""
    return sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def run_autograder(root: Path) -> int:
    """Grade ``root/submission`` into ``root/results/results.json`` with ``root/source/config.json``'s options."""
    from .grader import grade_submissions, isolation
    from .records import Options
    from .reports import write_atomically, write_gradescope

    results = root / "results" / "results.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    config_path = root / "source" / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    options = Options(**{k: v for k, v in config.items() if k in ("exercises", "points", "timeout", "check_timeout")})
    paths = notebooks_in(root / "submission")
    if not paths:
        write_atomically(results, json.dumps({"score": 0, "visibility": "visible", "tests": [],
                                              "output": "No notebook (.ipynb) was found in the submission: upload "
                                                        "the exercise notebook itself."}))
        return 0
    reason = isolation(options)
    grades = grade_submissions(paths, options)
    write_gradescope(results, grades, notice=reason and f"Learner code was not isolated: {reason}.")
    return 0
