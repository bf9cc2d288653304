"""How fast the grader grades: ``python -m bnlab.grading.throughput [--submissions 50] [--jobs 2]``.

Builds mixed submissions from the course's exercise notebooks (in a checkout: ``chapters/exercises``), cycling
through every chapter's set: the reference solutions, half of them, none (the untouched notebook), and solutions
next to a cell that raises. Then grades them with ``--jobs`` kernels at a time, with isolation as the grader
would use it, and prints notebooks per minute. Measure on a quiet machine: the figure depends on the load.
Notebooks that run into a time limit cost that limit, so none is among these.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

EXERCISE_NOTEBOOKS = Path(__file__).resolve().parents[3] / "chapters" / "exercises"
KINDS = ("solved", "half", "untouched", "raises")


def exercise_notebook(set_key: str, folder: Path = EXERCISE_NOTEBOOKS):
    """The untouched exercise notebook for ``set_key`` (found by its ``bnlab.exercises`` metadata)."""
    import nbformat

    for path in sorted(Path(folder).glob("ex*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        if notebook.metadata.get("bnlab", {}).get("exercises") == set_key:
            return notebook
    raise LookupError(f"no exercise notebook for {set_key} in {folder}")


def answer_cell(notebook, exercise) -> int:
    """The index of the cell that defines the answer to ``exercise`` (``def name(`` or ``name = ``)."""
    pattern = re.compile(rf"^(def {exercise.answer}\(|{exercise.answer} = )", re.M)
    found = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code" and pattern.search(c.source)]
    if len(found) != 1:
        raise LookupError(f"{exercise.key}: expected one cell defining {exercise.answer}, found {len(found)}")
    return found[0]


def with_answers(notebook, answers: dict):
    """``notebook`` with the answer cells of the exercises in ``answers`` (``{exercise: source}``) replaced."""
    for exercise, source in answers.items():
        notebook.cells[answer_cell(notebook, exercise)].source = source
    return notebook


def solved(set_key: str, only=None, folder: Path = EXERCISE_NOTEBOOKS):
    """The exercise notebook with the reference solutions as answers (all, or the exercise keys in ``only``)."""
    from ..exercises import SETS

    answers = {e: e.solution_code for e in SETS[set_key] if only is None or e.key in only}
    return with_answers(exercise_notebook(set_key, folder), answers)


def mixed_submission(index: int, folder: Path = EXERCISE_NOTEBOOKS):
    """The ``index``-th submission of the mix: ``(its exercise set, its kind, the notebook)``."""
    import nbformat

    from ..exercises import SETS

    set_key = list(SETS)[index % len(SETS)]
    kind = KINDS[(index // len(SETS)) % len(KINDS)]
    if kind == "untouched":
        return set_key, kind, exercise_notebook(set_key, folder)
    keys = [e.key for e in SETS[set_key]]
    notebook = solved(set_key, only=set(keys[::2]) if kind == "half" else None, folder=folder)
    if kind == "raises":
        notebook.cells.insert(3, nbformat.v4.new_code_cell('raise RuntimeError("a mistake in a scratch cell")'))
    return set_key, kind, notebook


def write_mix(folder: Path, n: int, notebooks: Path = EXERCISE_NOTEBOOKS) -> list:
    import nbformat

    paths = []
    for index in range(n):
        set_key, kind, notebook = mixed_submission(index, notebooks)
        path = Path(folder) / f"learner{index:03d}_{kind}_ex{set_key[2:]}.ipynb"
        nbformat.write(notebook, path)
        paths.append(path)
    return paths


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bnlab.grading.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--submissions", type=int, default=50, help="how many notebooks (default: 50)")
    p.add_argument("--jobs", type=int, default=2, help="notebooks graded at the same time (default: 2)")
    p.add_argument("--notebooks", type=Path, default=EXERCISE_NOTEBOOKS,
                   help=f"the exercise notebooks (default: {EXERCISE_NOTEBOOKS})")
    args = p.parse_args(argv)
    from .grader import grade_submissions, isolation
    from .records import Options

    options = Options()
    reason = isolation(options)
    with tempfile.TemporaryDirectory(prefix="bnlab-throughput-") as folder:
        paths = write_mix(Path(folder), args.submissions, args.notebooks)
        start = time.perf_counter()
        grades = grade_submissions(paths, options, jobs=args.jobs)
        seconds = time.perf_counter() - start
    wrong = [g.submission for g in grades if g.status != "graded"]
    print(f"{len(grades)} notebooks in {seconds:.1f} s with --jobs {args.jobs}: "
          f"{60 * len(grades) / seconds:.1f} notebooks per minute "
          f"({'isolated' if reason is None else 'not isolated: ' + reason})")
    if wrong:
        print(f"{len(wrong)} not graded completely: {', '.join(Path(w).name for w in wrong[:5])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
