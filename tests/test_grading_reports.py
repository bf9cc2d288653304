"""bnlab.grading.reports: the CSV and Gradescope's results.json parse and add up, every test is visible to the
student, and outputs replace their target in one step, never writing through what lies in its place."""

import csv
import io
import json
import os

import pytest

from bnlab.exercises import ERROR, FAILED, PASSED, SETS, Result
from bnlab.grading.records import Grade
from bnlab.grading.reports import columns_for, csv_text, gradescope_results, one_line, write_atomically


def grades():
    ch01 = [Result(e.key, e.title, PASSED if i % 2 == 0 else FAILED, "why,\nwith a newline", e.points if i % 2 == 0
                   else 0, e.points, None if i % 2 == 0 else "a mistake") for i, e in enumerate(SETS["ch01"])]
    ch04 = [Result(e.key, e.title, ERROR, "not checked", 0, e.points) for e in SETS["ch04"]]
    return [Grade("subs/alice_ex01.ipynb", "ch01", ch01, ["cell 3 raised ValueError"]),
            Grade("subs/bob_ex04.ipynb", "ch04", ch04), Grade("subs/anonymous.ipynb", None, [], ["unknown set"])]


def test_the_csv_has_a_column_per_exercise_in_course_order_and_rows_add_up():
    rows = list(csv.DictReader(io.StringIO(csv_text(grades()))))
    keys = [e.key for e in SETS["ch01"]] + [e.key for e in SETS["ch04"]]
    assert list(rows[0]) == ["submission", "exercises", *keys, "total", "max_total", "status", "reason", "details"]
    assert columns_for({"ch04", "ch01"}) == keys
    for row, grade in zip(rows, grades()):
        values = [float(row[k]) for k in keys if row[k] != ""]
        assert len(values) == len(grade.results) and sum(values) == float(row["total"]) == grade.total
        assert row["status"] == grade.status and "\n" not in row["details"]
    assert rows[0]["reason"].startswith("cell 3 raised ValueError; q2: failed (a mistake)")


def test_one_line_flattens_and_shortens():
    assert one_line("a\nb   c") == "a b c" and len(one_line("x" * 2_000)) == 1_000


def test_gradescope_results_have_one_visible_test_per_exercise_and_add_up():
    results = json.loads(json.dumps(gradescope_results(grades(), notice="not isolated")))
    tests = results["tests"]
    assert all(t["visibility"] == "visible" and {"name", "score", "max_score", "status", "output"} <= set(t)
               for t in tests)
    assert results["score"] == sum(t["score"] for t in tests) == sum(g.total for g in grades())
    assert tests[0]["name"] == "alice_ex01.ipynb: ch01.q1: the train-mode forward" and len({t["name"] for t in tests}) \
        == len(tests)
    assert results["output"].startswith("not isolated") and results["visibility"] == "visible"
    one = gradescope_results(grades()[:1])
    assert [t["name"].split(":")[0] for t in one["tests"]] == [e.key for e in SETS["ch01"]]


def test_an_output_replaces_its_target_in_one_step_and_never_writes_through_a_link(tmp_path):
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not the grader's")
    target = tmp_path / "grades.csv"
    target.symlink_to(elsewhere)
    write_atomically(target, "a,b\n")
    assert not target.is_symlink() and target.read_text() == "a,b\n"
    assert elsewhere.read_text() == "not the grader's"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.txt", "grades.csv"]


def test_a_failed_write_leaves_neither_a_partial_file_nor_a_changed_target(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("before")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, "after")
    assert target.read_text() == "before" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
