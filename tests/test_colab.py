"""Colab: every notebook's setup cell installs bnlab from the course repository, and bnlab works on Colab's stack.

The repository's address is written once, in _config.yml; each notebook's first cell must install bnlab from exactly
that address, in Colab only, and install nothing else (Colab has torch, torchvision, matplotlib and ipywidgets).

The Colab-like environment is a virtual environment with Colab's torch and torchvision (not the book's pins) and
Colab's widget and kernel stack (``COLAB_STACK``; Python 3.11 here stands in for Colab's newer Python). Building it
downloads about 3 GB (torch's CUDA libraries) and takes a few minutes, so it is kept in ``_build/colab-venv`` and
reused while ``COLAB_STACK`` and the Python version are unchanged (``make clean`` removes it). In it:

* bnlab's unit tests for training, the fused step, BatchNorm, folding, running statistics and modes run against
  Colab's torch (``COLAB_UNIT_TESTS``);
* the chapters with widgets run end to end in a kernel that starts as Colab's does, with ``google.colab`` imported,
  so the setup cell runs its ``%pip install``; git rewrites the repository's address to this checkout, so pip
  clones this checkout's committed HEAD;
* the chapters' explorer cells display their interactive figures under Colab's Altair.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import nbformat
import pytest
import yaml

from bnlab.grading.kernels import notebook_client

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "_config.yml").read_text())
REPOSITORY_URL = CONFIG["repository"]["url"]
NOTEBOOKS = sorted((REPO / "chapters").rglob("*.ipynb"))

# Colab's packages, pinned as a Colab runtime has them (torch and torchvision there are CUDA builds, as from PyPI).
COLAB_TORCH = {"torch": "2.11.0", "torchvision": "0.26.0"}
COLAB_STACK = [
    *(f"{name}=={version}" for name, version in COLAB_TORCH.items()),
    "ipywidgets==7.7.1",
    "widgetsnbextension==3.6.10",
    "notebook==6.5.7",
    "ipykernel==6.17.1",
    "ipython==7.34.0",
    "jupyter-client==7.4.9",
    "traitlets==5.7.1",
    "tornado==6.5.7",
    "nbclient==0.10.4",
    "matplotlib==3.10.0",
    "numpy==2.1.3",
    "tqdm==4.67.3",
    "altair==5.5.0",  # the interactive figures' library
    "pytest==9.2.0",  # to run bnlab's unit tests there
]
COLAB_VENV = REPO / "_build" / "colab-venv"
COLAB_UNIT_TESTS = [
    "tests/test_training.py", "tests/test_fast_fused.py", "tests/test_fast_graphs.py", "tests/test_batchnorm.py",
    "tests/test_folding.py", "tests/test_running_stats.py", "tests/test_modes.py", "tests/test_layers.py",
    "tests/test_models.py",
]
WIDGET_CHAPTERS = [REPO / "chapters" / "02_placement.ipynb", REPO / "chapters" / "04_running_statistics.ipynb"]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def setup_cell(notebook: Path) -> nbformat.NotebookNode:
    return nbformat.read(notebook, as_version=4).cells[0]


# --- every notebook's setup cell ------------------------------------------------------------------------------------


def test_there_are_notebooks_to_check():
    assert len(NOTEBOOKS) >= 10, [str(n.relative_to(REPO)) for n in NOTEBOOKS]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda n: str(n.relative_to(REPO)))
def test_setup_cell_installs_bnlab_from_the_configured_repository_in_colab_only(notebook):
    cell = setup_cell(notebook)
    assert cell.cell_type == "code" and "remove-cell" in cell.metadata.get("tags", []), "the first cell is the setup cell"
    lines = [line.strip() for line in cell.source.splitlines() if line.strip() and not line.strip().startswith("#")]
    installs = [line for line in lines if re.search(r"\bpip\b|apt(-get)?\b|conda\b", line)]
    assert installs == [f'%pip install --quiet "bnlab @ git+{REPOSITORY_URL}#subdirectory=code"'], (
        f"the setup cell must install bnlab from {REPOSITORY_URL} (repository.url in _config.yml) and nothing else"
    )
    guard = 'if "google.colab" in sys.modules:'
    assert guard in lines and lines.index(guard) < lines.index(installs[0]), "the install runs in Colab only"
    assert cell.source.splitlines()[-1].startswith("    "), "the install is inside the Colab guard"


def test_every_notebook_has_the_same_setup_cell():
    cells = {setup_cell(n).source for n in NOTEBOOKS}
    assert len(cells) == 1, "setup cells differ; they should be byte-for-byte the same"


def test_setup_cell_does_nothing_outside_colab():
    namespace: dict = {}
    source = setup_cell(NOTEBOOKS[0]).source.replace("%pip", "raise AssertionError  # pip:")
    exec(compile(source, "setup-cell", "exec"), namespace)  # no google.colab here: the install must not run


def test_the_colab_like_environment_pins_colabs_torch_not_the_books():
    books = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().splitlines()
                 if line.startswith(("torch==", "torchvision==")))
    assert COLAB_TORCH != books  # both pairs are tested: the book's by the suite itself, Colab's here
    readme = (REPO / "README.md").read_text()
    for name, version in [*COLAB_TORCH.items(), *books.items()]:
        assert f"{name} {version}" in readme, f"README.md does not say bnlab is tested with {name} {version}"


# --- the Colab-like environment -------------------------------------------------------------------------------------

FAKE_COLAB_STARTUP = """\
# Colab imports google.colab before the first cell runs; the course's setup cell checks for it.
import sys, types
sys.modules.setdefault("google.colab", types.ModuleType("google.colab"))
"""

PROBE = """\
import json, sys
import IPython, bnlab, ipykernel, ipywidgets, jupyter_client, torch, torchvision
from bnlab.training import pick_device
print("COLAB-PROBE " + json.dumps({
    "executable": sys.executable, "colab": "google.colab" in sys.modules, "ipywidgets": ipywidgets.__version__,
    "ipython": IPython.__version__, "ipykernel": ipykernel.__version__, "jupyter_client": jupyter_client.__version__,
    "bnlab": bnlab.__file__, "torch": torch.__version__, "torchvision": torchvision.__version__,
    "device": pick_device().type,
}))
"""


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    return result


def installed_distributions(site_packages: Path) -> set[str]:
    return {p.name for p in site_packages.glob("*.dist-info")}


def colab_venv() -> Path:
    """``_build/colab-venv`` with ``COLAB_STACK`` installed, built once and reused while the stack and the Python
    version stay the same (a marker file, written last, records them). Returns its Python."""
    python = COLAB_VENV / "bin" / "python"
    marker = COLAB_VENV / "colab-stack.txt"
    wanted = "\n".join([sys.version.split()[0], *COLAB_STACK]) + "\n"
    if not (marker.exists() and marker.read_text() == wanted and python.exists()):
        shutil.rmtree(COLAB_VENV, ignore_errors=True)
        venv.EnvBuilder(with_pip=True).create(COLAB_VENV)
        run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *COLAB_STACK, timeout=3600)
        marker.write_text(wanted)
    # every run starts without bnlab: the unit tests import this checkout, the chapters' setup cell installs it
    run(python, "-m", "pip", "uninstall", "--quiet", "--yes", "bnlab")
    return python


@pytest.fixture(scope="module")
def colab_env(tmp_path_factory):
    """The Colab-like environment, and a kernel spec that starts a kernel in it as Colab does."""
    if not (REPO / ".git").exists():
        pytest.skip("the Colab-like run installs bnlab from this checkout's git history, and there is none")
    python = colab_venv()
    site_packages = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    root = tmp_path_factory.mktemp("colab")
    ipython_dir = root / "ipython"
    (ipython_dir / "profile_default" / "startup").mkdir(parents=True)
    (ipython_dir / "profile_default" / "startup" / "00-colab.py").write_text(FAKE_COLAB_STARTUP)
    kernel_dir = root / "jupyter" / "kernels" / "colab-like"
    kernel_dir.mkdir(parents=True)
    git_rewrites = {  # the repository's address -> this checkout; and trust it whoever owns it
        f"url.{REPO.as_uri()}.insteadOf": REPOSITORY_URL,
        "safe.directory": "*",
    }
    # PYTHONPATH emptied: the kernel imports only what its environment holds (this test's own may point at code/)
    kernel_env = {"IPYTHONDIR": str(ipython_dir), "GIT_CONFIG_COUNT": str(len(git_rewrites)), "PYTHONPATH": ""}
    for i, (key, value) in enumerate(git_rewrites.items()):
        kernel_env |= {f"GIT_CONFIG_KEY_{i}": key, f"GIT_CONFIG_VALUE_{i}": value}
    kernel_spec = {
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (Colab-like)",
        "language": "python",
        "env": kernel_env,
    }
    (kernel_dir / "kernel.json").write_text(json.dumps(kernel_spec))
    return {"python": python, "site_packages": site_packages, "jupyter_path": root / "jupyter"}


def test_unit_tests_pass_with_colabs_torch(colab_env):
    python = colab_env["python"]
    versions = run(python, "-c", "import torch, torchvision; print(torch.__version__, torchvision.__version__)")
    torch_version, torchvision_version = versions.stdout.split()
    assert torch_version.split("+")[0] == COLAB_TORCH["torch"]
    assert torchvision_version.split("+")[0] == COLAB_TORCH["torchvision"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "code")}
    result = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *COLAB_UNIT_TESTS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=3600,
    )
    assert result.returncode == 0, f"unit tests failed with torch {torch_version}:\n{result.stdout[-8000:]}"
    assert re.search(r"\d+ passed", result.stdout)


@pytest.mark.parametrize("chapter", WIDGET_CHAPTERS, ids=lambda n: n.stem)
def test_widget_chapter_runs_end_to_end_in_a_colab_like_environment(chapter, colab_env, subset_root, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(colab_env["jupyter_path"]))
    monkeypatch.setenv("BNLAB_DATA", str(subset_root))
    monkeypatch.setenv("BNLAB_PROFILE", "ci")
    if not os.environ.get("BNLAB_CACHE"):  # make test shares the book build's cache of experiment results
        monkeypatch.setenv("BNLAB_CACHE", str(tmp_path / "cache"))
    before = installed_distributions(colab_env["site_packages"])

    nb = nbformat.read(chapter, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = notebook_client(
        nb, kernel_name="colab-like", timeout=600, resources={"metadata": {"path": str(chapter.parent)}}
    )
    client.execute()

    after = installed_distributions(colab_env["site_packages"])
    new = {d.split("-")[0] for d in after - before}
    assert new <= {"bnlab"}, f"the setup cell installed more than bnlab: {sorted(after - before)}"
    assert "bnlab" in {d.split("-")[0] for d in after}, "the setup cell did not install bnlab"
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    probe_line = next(line for out in outputs if out.get("name") == "stdout"
                      for line in out.text.splitlines() if line.startswith("COLAB-PROBE "))
    probe = json.loads(probe_line.removeprefix("COLAB-PROBE "))
    assert probe["colab"] and Path(probe["executable"]).parent.parent == colab_env["python"].parent.parent
    assert (probe["ipywidgets"], probe["ipython"], probe["ipykernel"], probe["jupyter_client"]) == (
        "7.7.1", "7.34.0", "6.17.1", "7.4.9")
    assert probe["torch"].split("+")[0] == COLAB_TORCH["torch"], "torch is Colab's, kept by the install"
    assert probe["torchvision"].split("+")[0] == COLAB_TORCH["torchvision"]
    assert Path(probe["bnlab"]).is_relative_to(colab_env["site_packages"]), "bnlab comes from the setup cell's install"

    views = [out for out in outputs if WIDGET_VIEW in out.get("data", {})]
    assert views, f"{chapter.name} displayed no widget"
    chapter_text = "\n".join(out.get("text", "") for out in outputs[:-1] if out.get("name") == "stdout")
    assert re.search(rf"\b{probe['device']}\b", chapter_text), f"the chapter does not say it trains on {probe['device']}"


# --- the interactive figures in a Colab-like environment -------------------------------------------------------------

EXPLORER_CHAPTERS = {"02_placement": "placement_explorer(runs)", "04_running_statistics": "momentum_explorer()"}

# What chapter 2's explorer cell needs: runs shaped like run_variants' (two variants, three seeds, a few epochs).
EXPLORER_PRELUDE = """\
import altair
from bnlab.experiments import SeedRuns
from bnlab.models import MLPConfig
from bnlab.plots import running_mean
from bnlab.plots.placement import placement_explorer
from bnlab.training import EpochStats, History

def history(seed, shift):
    epochs = [EpochStats(e, shift + seed / e, 80.0, 90.0 + e, 0.1) for e in range(1, 5)]
    return History("MNIST-10k subset", "cpu", epochs, 95.0)

runs = {p: SeedRuns(p, MLPConfig(placement=p), (1, 2, 3), tuple(history(s, i) for s in (1, 2, 3)))
        for i, p in enumerate(("before", "after"))}
print("ALTAIR " + altair.__version__)
"""


def explorer_cell(chapter: str) -> str:
    """The chapter's explorer cell, as the chapter has it."""
    nb = nbformat.read(REPO / "chapters" / f"{chapter}.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("explorer = ")
               and EXPLORER_CHAPTERS[chapter] in c.source]
    return cell.source


def test_explorer_cells_display_their_interactive_figure_under_colabs_altair(colab_env, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(colab_env["jupyter_path"]))
    setup = setup_cell(NOTEBOOKS[0]).source
    cells = [setup, EXPLORER_PRELUDE, *(explorer_cell(chapter) for chapter in EXPLORER_CHAPTERS)]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    notebook_client(nb, kernel_name="colab-like", timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [cell.outputs for cell in nb.cells]
    assert not [o for cell in outputs for o in cell if o.output_type == "error"]
    assert any("ALTAIR 5.5.0" in o.get("text", "") for o in outputs[1]), "Colab's Altair is 5.5.0"
    for chapter, figure in zip(EXPLORER_CHAPTERS, outputs[2:]):
        (shown,) = [o for o in figure if o.output_type == "execute_result"]
        assert set(shown.data) == {"text/html", "image/png", "text/plain"}, chapter
        html = shown.data["text/html"]
        assert html.startswith('<figure class="bnlab-explorer"'), chapter
        spec = json.loads(html.split('class="bnlab-explorer-spec">')[1].split("</script>")[0].replace("<\\/", "</"))
        assert spec["$schema"].endswith("/v5.20.1.json") and spec["params"], chapter

