"""Reading submissions: leniently, completely, before any learner code runs.

A notebook is read whole into the grader's memory at the start, so that nothing a submission does later (deleting
or rewriting files) changes what is graded. Only the code cells' sources are kept: stored outputs never count and
are dropped before the size limit for code applies. Whatever is wrong with a file (missing, not UTF-8, malformed
JSON, nbformat 3, cells nbformat would reject) becomes the submission's ``error``, never an exception.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 512 * 1024**2  # what the grader reads at all (stored outputs included)
MAX_CODE_BYTES = 5 * 1024**2  # the code cells' sources, after stored outputs are dropped

IMPORT_LINE = re.compile(r"from\s+bnlab\.exercises\s+import\s+(ch\d\d)\b")
FILE_NAME = re.compile(r"ex(\d\d)")


class SubmissionError(Exception):
    """The submission cannot be graded at all; the message says why."""


def megabytes(n: int) -> str:
    return f"{n / 1024**2:.1f} MB"


@dataclass(frozen=True)
class Submission:
    """One notebook as the grader keeps it.

    Attributes:
        path: the path as given (the row's name).
        exercise_set: the exercises it holds (``"ch01"`` ...), or None if unknown.
        cells: ``((cell number, source), ...)`` of its non-empty code cells, numbered over all its cells.
        error: why it cannot be graded, or None.
    """

    path: str
    exercise_set: str | None
    cells: tuple
    error: str | None = None

    @property
    def name(self) -> str:
        return Path(self.path).name


def read_notebook(path: Path) -> dict:
    """The notebook's JSON, or ``SubmissionError`` saying what is wrong with the file."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SubmissionError(f"the file is {megabytes(size)}, more than the grader reads "
                                  f"({megabytes(MAX_FILE_BYTES)}, stored outputs included)")
        data = path.read_bytes()
    except OSError as error:
        raise SubmissionError(f"cannot read the file: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
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
    """``[(cell number, source)]`` of the non-empty code cells, numbered 1, 2, ... over all the notebook's cells.
    Outputs are not read."""
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


def detect_exercise_set(notebook: dict | None, path: Path, known: set) -> str | None:
    """Which exercises a notebook holds: its ``bnlab.exercises`` metadata, its ``from bnlab.exercises import chNN``
    line, or a file name with ``exNN``; only sets in ``known``."""
    if isinstance(notebook, dict):
        meta = notebook.get("metadata")
        bnlab = meta.get("bnlab") if isinstance(meta, dict) else None
        key = bnlab.get("exercises") if isinstance(bnlab, dict) else None
        if key in known:
            return key
        for _, source in code_cells(notebook):
            match = IMPORT_LINE.search(source)
            if match and match.group(1) in known:
                return match.group(1)
    match = FILE_NAME.search(Path(path).name)
    if match and f"ch{match.group(1)}" in known:
        return f"ch{match.group(1)}"
    return None


def read_submission(path, known: set, exercises: str | None = None) -> Submission:
    """Read ``path`` whole: its code cells and its exercise set (``exercises``, else detected), or the error."""
    path = Path(path)
    notebook = None
    try:
        notebook = read_notebook(path)
        cells = code_cells(notebook)
        size = sum(len(source.encode("utf-8")) for _, source in cells)
        if size > MAX_CODE_BYTES:
            raise SubmissionError(f"its code cells hold {megabytes(size)}, more than the grader runs "
                                  f"({megabytes(MAX_CODE_BYTES)}; stored outputs do not count)")
    except SubmissionError as error:
        return Submission(str(path), exercises or detect_exercise_set(notebook, path, known), (), str(error))
    found = exercises or detect_exercise_set(notebook, path, known)
    if found is None:
        return Submission(str(path), None, (), "cannot tell which exercises it holds: no `from bnlab.exercises "
                                               "import chNN` line, no bnlab metadata, no exNN in the file name "
                                               "(use --exercises)")
    return Submission(str(path), found, tuple(cells))


def expand(items) -> list:
    """Notebook paths: each item as given, or the ``*.ipynb`` files of a folder, sorted."""
    paths = []
    for item in items:
        path = Path(item)
        paths += sorted(path.glob("*.ipynb")) if path.is_dir() else [path]
    return paths
