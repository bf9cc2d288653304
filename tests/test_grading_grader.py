"""bnlab.grading.grader: every submission is read before any learner code runs, a fault never costs the row, and
when learner code cannot be isolated the grader says so, once."""

import nbformat
import pytest

from bnlab.exercises import SETS
from bnlab.grading import grader
from bnlab.grading.grader import grade_submission, grade_submissions, isolation, time_limit
from bnlab.grading.records import Options
from bnlab.grading.throughput import solved


def test_without_isolation_the_grader_says_so_once(monkeypatch, capsys):
    monkeypatch.setattr(grader, "_noticed", set())
    assert isolation(Options(isolate=False)) == "Options.isolate is False"
    isolation(Options(isolate=False))
    assert capsys.readouterr().err.count("learner code is not isolated (Options.isolate is False)") == 1


def test_isolation_that_was_asked_for_and_is_impossible_is_an_error(monkeypatch):
    monkeypatch.setattr(grader, "isolation_problem", lambda command: "the grader is not root")
    with pytest.raises(ValueError, match="Options.isolate=True, but learner code cannot be isolated"):
        isolation(Options(isolate=True))


def test_jobs_must_be_a_positive_integer():
    for jobs in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="jobs must be a positive integer"):
            grade_submissions([], jobs=jobs)


def test_the_time_limit_grows_with_the_budgets_and_the_exercises():
    base = time_limit(Options(), 4)
    assert time_limit(Options(timeout=240), 4) > base and time_limit(Options(), 5) > base
    assert time_limit(Options(max_restarts=0), 4) < base


def test_a_fault_of_the_graders_own_still_gives_every_submission_its_row(tmp_path, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("a bug in the grader")

    monkeypatch.setattr(grader, "run_submission", broken)
    path = tmp_path / "alice_ex02.ipynb"
    nbformat.write(solved("ch02"), path)
    row = grade_submission(path, Options(isolate=False))
    assert "grading failed: RuntimeError: a bug in the grader" in row.reason
    assert [r.exercise for r in row.results] == [e.key for e in SETS["ch02"]] and row.total == 0


def test_grading_works_where_an_event_loop_already_runs(tmp_path):
    """As in a notebook: grade_submissions is called while an asyncio loop runs in the thread."""
    import asyncio

    path = tmp_path / "alice_ex01.ipynb"
    path.write_text("{broken")

    async def from_a_notebook():
        return grade_submissions([path], Options(isolate=False))

    rows = asyncio.run(from_a_notebook())
    assert "malformed JSON" in rows[0].reason


def test_a_kernel_that_does_not_start_gives_a_row_with_the_reason(tmp_path):
    path = tmp_path / "alice_ex01.ipynb"
    nbformat.write(solved("ch01"), path)
    row = grade_submission(path, Options(kernel="no-such-kernel", isolate=False))
    assert row.total == 0 and row.status == "incomplete"
    assert "the kernel failed: it did not start in 3 tries" in row.reason and "no-such-kernel" in row.reason


def test_submissions_are_read_before_any_learner_code_runs(tmp_path):
    """Without isolation the first notebook can delete the folder; the second is graded all the same."""
    folder = tmp_path / "submissions"
    folder.mkdir()
    first = solved("ch04")
    first.cells.insert(3, nbformat.v4.new_code_cell(f"import shutil\nshutil.rmtree({str(folder)!r})"))
    nbformat.write(first, folder / "a_ex04.ipynb")
    nbformat.write(solved("ch05"), folder / "b_ex05.ipynb")
    rows = grade_submissions(sorted(folder.iterdir()), Options(isolate=False, timeout=60, check_timeout=5), jobs=1)
    assert not folder.exists(), "without isolation, learner code reaches the grader's folders"
    assert [row.total for row in rows] == [SETS["ch04"].max_points, SETS["ch05"].max_points], rows[1].reason
