"""The grader's outputs: one CSV row per submission, and Gradescope's results.json (one test per exercise).

Outputs are written once, at the end, after every learner process has ended, and atomically: the text goes to a
new file beside the target, which then replaces the target in one step. A reader never sees half a file, and
nothing a submission left in the folder (a file or a link in the target's place) is written through.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

from ..exercises import SETS


def columns_for(set_keys) -> list:
    """The exercise columns for the sets graded, in course order."""
    return [e.key for set_key, exercises in SETS.items() if set_key in set_keys for e in exercises]


def one_line(text: str, limit: int = 1_000) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def csv_header(exercise_keys: list) -> list:
    return ["submission", "exercises", *exercise_keys, "total", "max_total", "status", "reason", "details"]


def csv_row(grade, exercise_keys: list) -> list:
    points = {r.exercise: r.points for r in grade.results}
    details = " | ".join(f"{r.name}: {r.status}. {one_line(r.message)}" for r in grade.results)
    return [grade.submission, grade.exercise_set or "",
            *[f"{points[k]:g}" if k in points else "" for k in exercise_keys],
            f"{grade.total:g}", f"{grade.max_total:g}", grade.status, one_line(grade.reason), details]


def csv_text(grades: list) -> str:
    """The CSV for ``grades``: a column per exercise of every set graded, one row per submission, in order."""
    keys = columns_for({g.exercise_set for g in grades if g.exercise_set})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(csv_header(keys))
    for grade in grades:
        writer.writerow(csv_row(grade, keys))
    return buffer.getvalue()


def gradescope_results(grades: list, *, notice: str | None = None) -> dict:
    """Gradescope's results.json: one test per exercise, visible to the student, with its message (prefixed by the
    notebook's name when there are several); ``notice`` (that learner code was not isolated) goes to the output."""
    tests = []
    for grade in grades:
        name = Path(grade.submission).name
        prefix = f"{name}: " if len(grades) > 1 else ""
        if not grade.results:
            tests.append({"name": f"{prefix}{name}", "score": 0, "max_score": 0, "status": "failed",
                          "output": grade.reason or "not graded", "visibility": "visible"})
        for r in grade.results:
            tests.append({"name": f"{prefix}{r.exercise}: {r.title}", "score": r.points, "max_score": r.max_points,
                          "status": "passed" if r.passed else "failed", "output": str(r), "visibility": "visible"})
    notes = [f"{Path(g.submission).name}: {'; '.join(g.notes)}" for g in grades if g.notes]
    output = "\n".join(([notice] if notice else []) + notes) or "Every notebook ran."
    return {"score": sum(t["score"] for t in tests), "output": output, "visibility": "visible",
            "stdout_visibility": "hidden", "tests": tests}


def write_atomically(path, text: str) -> None:
    """Write ``text`` to ``path`` by replacing it with a complete new file (mode 644)."""
    path = Path(path)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    except BaseException:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise


def write_gradescope(path, grades: list, *, notice: str | None = None) -> None:
    write_atomically(path, json.dumps(gradescope_results(grades, notice=notice), indent=1))
