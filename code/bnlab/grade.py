"""Grade exercise notebooks: ``python -m bnlab.grade SUBMISSION.ipynb... --out grades.csv``.

For every submission the grader

1. reads the notebook leniently: malformed JSON, a missing file or a wrong format gives a row with the reason;
2. decides which exercises it holds: ``--exercises ch04``, else the notebook's ``bnlab.exercises`` metadata, its
   ``from bnlab.exercises import ch04`` line, or a file name like ``ex04_running_statistics.ipynb``;
3. runs the notebook's code cells in a fresh Jupyter kernel (nbclient), in a separate worker process, with a time
   budget for the whole notebook. Outputs are thrown away as they arrive: scores never come from anything the
   notebook printed or stored. A cell that raises is recorded and the next one runs; a cell that runs past the
   budget is interrupted and the cells after it are not run; a cell that ends the kernel (``exit()``,
   ``os._exit``, a crash) or will not stop is left out and the notebook is run again in a new kernel (at most
   ``max_restarts`` times); a kernel that fails to start is started again (at most ``KERNEL_START_TRIES`` tries);
4. then appends one *probe* cell per exercise. The probe loads a fresh copy of ``bnlab/exercises.py`` by its file
   path (not anything the notebook imported or patched), finds the answer by its name (``batchnorm_forward``,
   ``answer_q2``, ...), runs it on fresh random inputs that only the grader knew until then, with a time limit,
   and writes what came back to a file whose name and contents carry a random nonce;
5. judges those records in its own process, where no learner code runs, and writes one row per submission:
   points per exercise, the total, and the reasons. It reads a record only if it is a plain, small file: the
   submission can reach the run's folder, and a link or a named pipe there must not stall the grader.

A submission can tamper with anything inside its own kernel, but it cannot reach the grader's process, and a
record only earns points when it holds the right values for inputs the submission could not see in advance.

The grader runs learner code: run it inside a container or a throwaway machine (as Gradescope does).

``--gradescope results.json`` also writes Gradescope's autograder results: one file for everything graded in
that run (Gradescope runs the grader once per student), with one test per exercise.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

try:
    from . import exercises
    from .exercises import ERROR, SETS
except ImportError:  # run as a script: the worker process (``--worker``) needs none of it, nor torch
    exercises, ERROR, SETS = None, "not checked", {}

DEFAULT_TIMEOUT = 120.0  # seconds for a notebook's own cells
DEFAULT_CHECK_TIMEOUT = 10.0  # seconds for one exercise's check
MAX_NOTEBOOK_BYTES = 50_000_000
MAX_RECORD_BYTES = 5_000_000
KERNEL_STARTUP = 60  # seconds a kernel may take to start
PROBE_MARGIN = 10  # seconds a probe cell gets beyond its check's own time limit
KERNEL_START_TRIES = 3  # a kernel can fail to start for a passing reason (a port another process took meanwhile)
MAX_NOTES = 6


def describe_error(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 400 else text[:397] + "..."


class SubmissionError(Exception):
    """The submission cannot be graded at all; the message says why."""


@dataclass(frozen=True)
class Options:
    """How to grade.

    Attributes:
        timeout: seconds the notebook's own cells may run, all together.
        check_timeout: seconds each exercise's check may run.
        kernel: the Jupyter kernel to run submissions in.
        exercises: the exercise set every submission holds (``"ch01"`` ... ``"ch05"``); ``None`` detects it.
        points: points per exercise key, overriding ``bnlab.exercises.POINTS``.
        max_restarts: how often a notebook is run again after a cell killed its kernel or would not stop.
    """

    timeout: float = DEFAULT_TIMEOUT
    check_timeout: float = DEFAULT_CHECK_TIMEOUT
    kernel: str = "python3"
    exercises: str | None = None
    points: dict | None = None
    max_restarts: int = 2

    def __post_init__(self):
        for name in ("timeout", "check_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"Options.{name} must be a positive number of seconds; got {value!r}.")
        if self.exercises is not None and self.exercises not in SETS:
            raise ValueError(f"Options.exercises must be one of {sorted(SETS)} or None; got {self.exercises!r}.")
        if not (isinstance(self.max_restarts, int) and self.max_restarts >= 0):
            raise ValueError(f"Options.max_restarts must be a non-negative integer; got {self.max_restarts!r}.")
        if self.points is not None and not isinstance(self.points, dict):
            raise ValueError(f"Options.points must map exercise keys ({', '.join(exercises.POINTS)}) to "
                             f"non-negative numbers; got a {type(self.points).__name__}.")
        for key, value in (self.points or {}).items():
            if key not in exercises.POINTS or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"Options.points maps exercise keys ({', '.join(exercises.POINTS)}) to "
                                 f"non-negative numbers; got {key!r}: {value!r}.")

    def max_points(self, key: str) -> float:
        return (self.points or {}).get(key, exercises.POINTS[key])


@dataclass
class Grade:
    """One submission's row: a result per exercise, and notes about the notebook as a whole."""

    submission: str
    exercise_set: str | None = None
    results: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(r.points for r in self.results)

    @property
    def max_total(self) -> float:
        return sum(r.max_points for r in self.results)

    @property
    def status(self) -> str:
        """``graded`` (every exercise checked), ``incomplete`` (some could not be) or ``not graded``."""
        if not self.results:
            return "not graded"
        return "incomplete" if any(r.status == ERROR for r in self.results) else "graded"

    @property
    def reason(self) -> str:
        """Why points are missing, in one line: the notes, then every exercise that did not pass."""
        parts = list(self.notes)
        for r in self.results:
            if not r.passed:
                parts.append(f"{r.name}: {r.status}" + (f" ({r.mistake})" if r.mistake else ""))
        return "; ".join(parts)


# --- reading a submission -------------------------------------------------------------------------------------------


def read_notebook(path: Path) -> dict:
    """The notebook's JSON, or ``SubmissionError`` saying what is wrong with the file."""
    try:
        size = path.stat().st_size
    except OSError as error:
        raise SubmissionError(f"cannot read the file: {error.strerror or error}") from None
    if size > MAX_NOTEBOOK_BYTES:
        raise SubmissionError(f"the file is {size / 1e6:.0f} MB, more than a notebook can be "
                              f"({MAX_NOTEBOOK_BYTES / 1e6:.0f} MB)")
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SubmissionError(f"not a notebook: cannot read it as UTF-8 text ({error})") from None
    try:
        notebook = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise SubmissionError(f"not a notebook: malformed JSON ({error})") from None
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells", notebook.get("worksheets")), list):
        raise SubmissionError("not a notebook: no list of cells in the JSON")
    return notebook


def source_text(source) -> str | None:
    if isinstance(source, str):
        return source
    if isinstance(source, list) and all(isinstance(line, str) for line in source):
        return "".join(source)
    return None


def code_cells(notebook: dict) -> list:
    """``[(cell number, source)]`` of the code cells, numbered 1, 2, ... over all the notebook's cells."""
    cells = notebook.get("cells")
    if cells is None:  # nbformat 3
        worksheets = notebook.get("worksheets") or [{}]
        cells = worksheets[0].get("cells", []) if isinstance(worksheets[0], dict) else []
    found = []
    for number, cell in enumerate(cells if isinstance(cells, list) else [], start=1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = source_text(cell.get("source", cell.get("input")))
        if source is not None and source.strip():
            found.append((number, source))
    return found


IMPORT_LINE = re.compile(r"from\s+bnlab\.exercises\s+import\s+(ch0[1-9])\b")
FILE_NAME = re.compile(r"ex(0[1-9])")


def detect_exercise_set(notebook: dict | None, path: Path) -> str | None:
    """Which exercises a notebook holds: its metadata, its import line, or its file name."""
    if isinstance(notebook, dict):
        meta = notebook.get("metadata")
        key = meta.get("bnlab", {}).get("exercises") if isinstance(meta, dict) and isinstance(meta.get("bnlab"), dict) else None
        if key in SETS:
            return key
        for _, source in code_cells(notebook):
            match = IMPORT_LINE.search(source)
            if match and match.group(1) in SETS:
                return match.group(1)
    match = FILE_NAME.search(path.name)
    if match and f"ch{match.group(1)}" in SETS:
        return f"ch{match.group(1)}"
    return None


def first_line(source: str) -> str:
    line = next((l.strip() for l in source.splitlines() if l.strip()), "")
    return line if len(line) <= 40 else line[:37] + "..."


# --- the run: the learner's cells, then one probe per exercise ---------------------------------------------------

PROBE = """\
def _bnlab_probe_{nonce}():
    import importlib.util
    import sys
    spec = importlib.util.spec_from_file_location("_bnlab_checks_{nonce}_{index}", {path!r})
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.probe({key!r}, globals(), {cases!r}, {out!r}, {nonce!r}, {limit!r})
_bnlab_probe_{nonce}()
"""


def record_path(folder: Path, key: str, nonce: str) -> Path:
    return folder / f"{key}-{nonce}.json"


def run_notebook(cells: list, probes: list) -> dict:
    """The notebook the kernel runs: the learner's code cells, then the probe cells, as nbformat JSON."""
    run = [{"cell_type": "code", "metadata": {"bnlab": {"cell": number, "first_line": first_line(source)}},
            "source": source, "outputs": [], "execution_count": None} for number, source in cells]
    run += [{"cell_type": "code", "metadata": {"bnlab": {"probe": key}}, "source": source, "outputs": [],
             "execution_count": None} for key, source in probes]
    for index, cell in enumerate(run):
        cell["id"] = f"cell-{index}"
    return {"cells": run, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                      "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def worker_time_limit(options: Options, n_probes: int) -> float:
    """The longest a worker may take before the grader stops it: every attempt at its slowest, plus a margin."""
    attempt = KERNEL_STARTUP + options.timeout + n_probes * (options.check_timeout + PROBE_MARGIN) + 15
    return attempt * (options.max_restarts + 1) + KERNEL_STARTUP * (KERNEL_START_TRIES - 1) + 30


def run_worker(job: dict, time_limit: float) -> dict:
    """Run a worker process on ``job``; return its status (with ``"stopped"`` set if it had to be killed)."""
    job_path = Path(job["folder"]) / "job.json"
    job_path.write_text(json.dumps(job))
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env.setdefault("MPLBACKEND", "Agg")
    # Output goes nowhere: a submission that writes to its process's stdout must not fill the disk.
    # The worker runs this file as a script: it needs nbclient, not the bnlab package (and so not torch).
    process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(job_path)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env, start_new_session=True)
    stopped = False
    try:
        process.wait(timeout=time_limit)
    except subprocess.TimeoutExpired:
        stopped = True
        kill_group(process.pid)
        process.wait()
    status = read_status(Path(job["status"]))
    if stopped or not status.get("finished"):
        if status.get("kernel_pid"):
            kill_group(status["kernel_pid"])
        status["stopped"] = f"stopped after {time_limit:.0f} s" if stopped else f"exit code {process.returncode}"
    return status


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def read_small_file(path: Path, *, limit: int = MAX_RECORD_BYTES) -> str | None:
    """The text of ``path`` if it is a plain file of at most ``limit`` bytes, else None.

    The run's folder is within reach of the submission's kernel: a link to ``/dev/zero``, a named pipe or a huge
    file in place of a record must not make the grader hang or run out of memory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > limit:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_status(path: Path) -> dict:
    text = read_small_file(path)
    try:
        status = json.loads(text) if text is not None else {}
    except (ValueError, RecursionError):
        return {}
    return status if isinstance(status, dict) else {}


def read_record(path: Path, nonce: str, key: str) -> dict | None:
    """The probe's record for ``key``, if it is there, readable, and carries this run's nonce."""
    text = read_small_file(path)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not (isinstance(record, dict) and record.get("nonce") == nonce and record.get("exercise") == key):
        return None
    observed = record.get("observed")
    return observed if isinstance(observed, dict) else None


# --- grading ----------------------------------------------------------------------------------------------------


def grade_submission(path, options: Options = Options()) -> Grade:
    """Grade one notebook. Never raises: whatever goes wrong becomes the row's reason."""
    path = Path(path)
    grade = Grade(submission=str(path))
    notebook = None
    try:
        notebook = read_notebook(path)
        grade.exercise_set = options.exercises or detect_exercise_set(notebook, path)
        if grade.exercise_set is None:
            raise SubmissionError("cannot tell which exercises it holds: no `from bnlab.exercises import chNN` "
                                  "line, no bnlab metadata, no exNN in the file name (use --exercises)")
        run_checks(path, notebook, grade, options)
    except SubmissionError as error:
        grade.notes.append(str(error))
    except Exception as error:  # a fault of the grader's own: the row survives, with the reason
        grade.notes.append(f"grading failed: {describe_error(error)}")
    if grade.exercise_set is None and notebook is None:
        grade.exercise_set = options.exercises or detect_exercise_set(None, path)
    if grade.exercise_set is not None:
        done = {r.exercise for r in grade.results}
        reason = grade.notes[-1] if grade.notes else "not checked"
        for exercise in SETS[grade.exercise_set]:
            if exercise.key not in done:
                grade.results.append(exercise.result(ERROR, f"Not checked: {reason}.").with_points(
                    options.max_points(exercise.key)))
        order = [e.key for e in SETS[grade.exercise_set]]
        grade.results.sort(key=lambda r: order.index(r.exercise))
    return grade


def run_checks(path: Path, notebook: dict, grade: Grade, options: Options) -> None:
    exercise_set = SETS[grade.exercise_set]
    nonce = secrets.token_hex(16)
    checks_file = str(Path(exercises.__file__).resolve())
    with tempfile.TemporaryDirectory(prefix="bnlab-grade-", ignore_cleanup_errors=True) as folder:
        folder = Path(folder)
        records, workdir = folder / "records", folder / "work"
        records.mkdir()
        workdir.mkdir()
        cases = {e.key: e.make_cases() for e in exercise_set}
        probes = [(e.key, PROBE.format(nonce=nonce, index=i, path=checks_file, key=e.key,
                                       cases=json.dumps(cases[e.key]), out=str(record_path(records, e.key, nonce)),
                                       limit=float(options.check_timeout)))
                  for i, e in enumerate(exercise_set)]
        run_path = folder / "run.ipynb"
        run_path.write_text(json.dumps(run_notebook(code_cells(notebook), probes)))
        job = {"folder": str(folder), "notebook": str(run_path), "workdir": str(workdir),
               "status": str(folder / "status.json"), "kernel": options.kernel, "timeout": options.timeout,
               "check_timeout": options.check_timeout, "max_restarts": options.max_restarts}
        status = run_worker(job, worker_time_limit(options, len(exercise_set)))
        grade.notes.extend(notes_from(status, options))
        for exercise in exercise_set:
            observed = read_record(record_path(records, exercise.key, nonce), nonce, exercise.key)
            if observed is None:
                result = exercise.result(ERROR, missing_record_reason(status, exercise.key, options))
            else:
                try:
                    result = exercise.judge(cases[exercise.key], observed)
                except Exception:
                    result = exercise.result(ERROR, "The check's record of the answer could not be judged.")
            grade.results.append(result.with_points(options.max_points(exercise.key)))


def notes_from(status: dict, options: Options) -> list:
    """The run's events, as short sentences for the row's reason."""
    notes = []
    for event in status.get("events", []):
        kind, cell = event.get("kind"), event.get("cell")
        where = f"cell {cell} (`{event.get('first_line', '')}`)" if cell else "a cell"
        if kind == "error":
            notes.append(f"{where} raised {event.get('error', 'an error')}")
        elif kind == "timeout":
            notes.append(f"the notebook ran past its {options.timeout:g} s time limit in {where}; the cells from "
                         f"there on were not run")
        elif kind == "died":
            notes.append(f"the kernel died or exited in {where}; the notebook was run again without it")
        elif kind == "unresponsive":
            notes.append(f"{where} did not stop when interrupted; the notebook was run again without it")
        elif kind == "kernel":
            notes.append(f"the kernel failed: {event.get('error')}")
        elif kind == "worker":
            notes.append(f"the run failed: {event.get('error')}")
    if "stopped" in status:
        notes.append(f"the run did not finish ({status['stopped']})")
    if len(notes) > MAX_NOTES:
        notes = notes[:MAX_NOTES] + [f"and {len(notes) - MAX_NOTES} more"]
    return notes


def missing_record_reason(status: dict, key: str, options: Options) -> str:
    probe = status.get("probes", {}).get(key)
    if probe == "timeout":
        return (f"The check ran past {options.check_timeout + PROBE_MARGIN:g} s and would not stop (an answer that "
                f"ignores interrupts?).")
    if probe == "died":
        return "The kernel died while this answer was checked (exit(), os._exit, or a crash in the answer)."
    if probe == "error":
        return "The check could not run: the notebook's code interfered with it."
    if probe == "ran":
        return "The check left no record: the notebook's code interfered with it."
    if "stopped" in status:
        return f"Not checked: the run did not finish ({status['stopped']})."
    return "Not checked: the notebook's kernel did not get that far."


def grade_submissions(paths, options: Options = Options(), *, jobs: int = 1):
    """Grade every notebook in ``paths``; yields a ``Grade`` for each, in order, as soon as it is ready."""
    paths = list(paths)
    if jobs <= 1:
        for path in paths:
            yield grade_submission(path, options)
        return
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        yield from pool.map(lambda p: grade_submission(p, options), paths)


# --- output: CSV and Gradescope ------------------------------------------------------------------------------------


def columns_for(set_keys) -> list:
    """The exercise columns for the sets graded, in course order."""
    keys = []
    for set_key in SETS:
        if set_key in set_keys:
            keys += [e.key for e in SETS[set_key]]
    return keys


def csv_header(exercise_keys: list) -> list:
    return ["submission", "exercises", *exercise_keys, "total", "max_total", "status", "reason", "details"]


def csv_row(grade: Grade, exercise_keys: list) -> list:
    points = {r.exercise: r.points for r in grade.results}
    details = " | ".join(f"{r.name}: {r.status}. {one_line(r.message)}" for r in grade.results)
    return [grade.submission, grade.exercise_set or "",
            *[f"{points[k]:g}" if k in points else "" for k in exercise_keys],
            f"{grade.total:g}", f"{grade.max_total:g}", grade.status, one_line(grade.reason), details]


def one_line(text: str, limit: int = 1_000) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def gradescope_results(grades: list) -> dict:
    """Gradescope's results.json: one test per exercise (prefixed by the notebook's name when there are several)."""
    tests = []
    for grade in grades:
        prefix = f"{Path(grade.submission).name}: " if len(grades) > 1 else ""
        if not grade.results:
            tests.append({"name": f"{prefix}{Path(grade.submission).name}", "score": 0, "max_score": 0,
                          "status": "failed", "output": grade.reason or "not graded"})
        for r in grade.results:
            tests.append({"name": f"{prefix}{r.exercise}: {r.title}", "score": r.points, "max_score": r.max_points,
                          "status": "passed" if r.passed else "failed", "output": str(r)})
    notes = [f"{Path(g.submission).name}: {'; '.join(g.notes)}" for g in grades if g.notes]
    return {"score": sum(t["score"] for t in tests), "output": "\n".join(notes) or "Every notebook ran.",
            "tests": tests, "stdout_visibility": "hidden"}


# --- the worker process: one notebook, one kernel at a time --------------------------------------------------------


class Status:
    """What the worker saw, saved to disk after every event, so that a killed worker still leaves it behind."""

    def __init__(self, path: Path):
        self.path = path
        self.data = {"events": [], "probes": {}, "kernel_pid": None, "finished": False}
        self.save()

    def event(self, **event) -> None:
        self.data["events"].append(event)
        self.save()

    def probe(self, key: str, outcome: str) -> None:
        self.data["probes"][key] = outcome
        self.save()

    def save(self) -> None:
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.data))
        os.replace(partial, self.path)


def worker(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    status = Status(Path(job["status"]))
    try:
        asyncio.run(execute(job, status))
    except BaseException as error:  # noqa: BLE001 - the status file must say what happened
        status.event(kind="worker", error=describe_error(error), trace=traceback.format_exc()[-2_000:])
    status.data["finished"] = True
    status.save()
    return 0


async def execute(job: dict, status: Status) -> None:
    import nbformat

    notebook = nbformat.reads(Path(job["notebook"]).read_text(), as_version=4)
    left_out: set = set()
    checked: set = set()
    attempts = failed_starts = 0
    while attempts <= job["max_restarts"]:
        try:
            culprit = await run_attempt(notebook, job, status, left_out, checked)
        except KernelNotStarted as error:
            failed_starts += 1
            if failed_starts >= KERNEL_START_TRIES:
                status.event(kind="kernel", error=f"it did not start in {failed_starts} tries ({error})")
                return
            continue
        if culprit is None:
            return
        left_out.add(culprit)
        attempts += 1


class KernelNotStarted(Exception):
    """The kernel did not start; the message says why."""


def quiet_client_class():
    from nbclient import NotebookClient

    class QuietClient(NotebookClient):
        """A notebook client that keeps no outputs: huge outputs cost nothing, and nothing printed is trusted."""

        def output(self, outs, msg, display_id, cell_index):
            return None

    return QuietClient


async def run_attempt(notebook, job: dict, status: Status, left_out: set, checked: set) -> int | None:
    """Run the notebook once in a new kernel. Returns None when done, or the index of a cell that killed the kernel
    or would not stop (the next attempt leaves it out)."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    try:
        from .notebooks import notebook_client
    except ImportError:  # run as a script (the worker): this file's folder is first on sys.path
        from notebooks import notebook_client

    def on_error(cell, cell_index, execute_reply):
        info = cell.metadata.get("bnlab", {})
        content = execute_reply.get("content", {}) if isinstance(execute_reply, dict) else {}
        error = f"{content.get('ename', 'an error')}: {str(content.get('evalue', ''))[:200]}".rstrip(": ")
        if "probe" in info:
            status.probe(info["probe"], "error")
        elif "cell" in info:
            status.event(kind="error", cell=info["cell"], first_line=info.get("first_line", ""), error=error)

    exited: set = set()

    def on_executed(cell, cell_index, execute_reply):
        if asks_to_exit(execute_reply):
            exited.add(cell_index)

    client = notebook_client(
        notebook, client_class=quiet_client_class(), kernel_name=job["kernel"], allow_errors=True,
        startup_timeout=KERNEL_STARTUP, shutdown_kernel="immediate", resources={"metadata": {"path": job["workdir"]}},
        raise_on_iopub_timeout=False, iopub_timeout=4, on_cell_error=on_error, on_cell_executed=on_executed)
    started = False
    try:
        async with client.async_setup_kernel():
            started = True
            status.data["kernel_pid"] = kernel_pid(client)
            status.save()
            deadline = time.monotonic() + job["timeout"]
            for index, cell in enumerate(notebook.cells):
                info = cell.metadata.get("bnlab", {})
                probe = info.get("probe")
                if index in left_out or probe in checked:
                    continue
                if probe:
                    client.timeout = int(job["check_timeout"]) + PROBE_MARGIN
                else:
                    left = deadline - time.monotonic()
                    if left < 1:
                        continue
                    client.timeout = max(1, int(left))
                try:
                    await client.async_execute_cell(cell, index)
                except CellTimeoutError:
                    if probe:
                        checked.add(probe)
                        status.probe(probe, "timeout")
                    else:
                        # the budget is spent: this cell and every learner cell after it stay out, in every attempt
                        left_out.update(i for i, c in enumerate(notebook.cells)
                                        if i >= index and "probe" not in c.metadata.get("bnlab", {}))
                        status.event(kind="timeout", cell=info.get("cell"), first_line=info.get("first_line", ""))
                    if not await interrupt(client):
                        if not probe:
                            status.event(kind="unresponsive", cell=info.get("cell"),
                                         first_line=info.get("first_line", ""))
                        return index
                except DeadKernelError:
                    record_death(status, checked, info)
                    return index
                else:
                    if index in exited:  # exit() or quit(): the kernel shuts down right after the cell's reply
                        record_death(status, checked, info)
                        return index
                    if probe:
                        checked.add(probe)
                        status.data["probes"].setdefault(probe, "ran")
                        status.save()
    except Exception as error:
        if not started:
            raise KernelNotStarted(describe_error(error)) from None
        if not status.data["events"] or status.data["events"][-1].get("kind") != "kernel":
            status.event(kind="kernel", error=describe_error(error))
        return None
    return None


def asks_to_exit(execute_reply) -> bool:
    """Whether a cell's reply says the kernel is about to shut down (``exit()`` or ``quit()`` in IPython)."""
    content = execute_reply.get("content", {}) if isinstance(execute_reply, dict) else {}
    payload = content.get("payload") if isinstance(content, dict) else None
    return any(isinstance(item, dict) and item.get("source") == "ask_exit" and not item.get("keepkernel")
               for item in (payload if isinstance(payload, list) else []))


def record_death(status: Status, checked: set, info: dict) -> None:
    """Note that the kernel died in a learner cell or a probe (the next attempt leaves that cell out)."""
    probe = info.get("probe")
    if probe:
        checked.add(probe)
        status.probe(probe, "died")
    else:
        status.event(kind="died", cell=info.get("cell"), first_line=info.get("first_line", ""))


async def interrupt(client) -> bool:
    """Interrupt the kernel; True if it then runs a cell again."""
    import nbformat
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from nbclient.util import ensure_async

    try:
        await ensure_async(client.km.interrupt_kernel())
        client.timeout = 10
        await client.async_execute_cell(nbformat.v4.new_code_cell("pass"), 0)
        return True
    except (CellTimeoutError, DeadKernelError):
        return False
    except Exception:
        return False


def kernel_pid(client) -> int | None:
    provisioner = getattr(client.km, "provisioner", None)
    pid = getattr(provisioner, "pid", None) or getattr(getattr(provisioner, "process", None), "pid", None)
    return pid if isinstance(pid, int) else None


# --- command line -----------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bnlab.grade",
        description="Grade exercise notebooks: run each in a fresh kernel, check every exercise, and write one CSV "
                    "row per submission with points per exercise and the total.")
    p.add_argument("submissions", nargs="+", metavar="SUBMISSION",
                   help="notebooks to grade (.ipynb), or folders of them")
    p.add_argument("--out", default="grades.csv", help="the CSV file to write (default: grades.csv)")
    p.add_argument("--gradescope", metavar="RESULTS_JSON",
                   help="also write Gradescope's results.json for everything graded in this run")
    p.add_argument("--exercises", choices=sorted(SETS),
                   help="the exercises every submission holds (default: detected per notebook)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds a notebook's own cells may run, all together (default: {DEFAULT_TIMEOUT:g})")
    p.add_argument("--check-timeout", type=float, default=DEFAULT_CHECK_TIMEOUT,
                   help=f"seconds each exercise's check may run (default: {DEFAULT_CHECK_TIMEOUT:g})")
    p.add_argument("--kernel", default="python3", help="the Jupyter kernel to run submissions in (default: python3)")
    p.add_argument("--points", metavar="POINTS_JSON",
                   help='a JSON file {"ch04.q1": 5, ...} overriding points per exercise')
    p.add_argument("--jobs", type=int, default=1, help="notebooks graded at the same time (default: 1)")
    return p


def expand(submissions: list) -> list:
    paths = []
    for item in submissions:
        path = Path(item)
        paths += sorted(path.glob("*.ipynb")) if path.is_dir() else [path]
    return paths


def main(argv: list | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"] and len(argv) == 2:
        return worker(argv[1])
    args = parser().parse_args(argv)
    points = None
    if args.points:
        try:
            points = json.loads(Path(args.points).read_text())
        except (OSError, ValueError) as error:
            parser().error(f"--points: cannot read {args.points}: {error}")
    try:
        options = Options(timeout=args.timeout, check_timeout=args.check_timeout, kernel=args.kernel,
                          exercises=args.exercises, points=points)
    except ValueError as error:
        parser().error(str(error))
    if args.jobs < 1:
        parser().error("--jobs must be at least 1")
    for flag, target in (("--out", args.out), ("--gradescope", args.gradescope)):
        if target and (Path(target).is_dir() or not Path(target).parent.is_dir()):
            parser().error(f"{flag}: cannot write {target}: it is a folder, or its folder does not exist")
    paths = expand(args.submissions)
    if not paths:
        parser().error("no notebooks to grade")

    sets = set()
    for path in paths:  # a first pass, for the columns
        try:
            notebook = read_notebook(path)
        except SubmissionError:
            notebook = None
        found = options.exercises or detect_exercise_set(notebook, path)
        if found:
            sets.add(found)
    keys = columns_for(sets)
    grades = []
    out = Path(args.out)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(csv_header(keys))
        f.flush()
        for grade in grade_submissions(paths, options, jobs=args.jobs):
            if grade.exercise_set and grade.exercise_set not in sets:  # not seen in the first pass
                grade.notes.append(f"its exercises ({grade.exercise_set}) have no columns in this CSV")
            writer.writerow(csv_row(grade, keys))
            f.flush()
            grades.append(grade)
            print(f"{grade.total:g}/{grade.max_total:g}  {grade.status:<10}  {grade.submission}"
                  + (f"  ({one_line(grade.reason, 160)})" if grade.reason else ""), flush=True)
    if args.gradescope:
        Path(args.gradescope).write_text(json.dumps(gradescope_results(grades), indent=1))
    print(f"{len(grades)} submission(s) graded; wrote {out}" + (f" and {args.gradescope}" if args.gradescope else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
