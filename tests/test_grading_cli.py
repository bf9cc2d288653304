"""bnlab.grading.cli: the command line grades, prints a line per submission as it is graded, writes its outputs at
the end, and answers bad arguments with one clear line."""

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

import nbformat
import pytest

from bnlab.exercises import SETS
from bnlab.grading.cli import main
from submission_builders import ISOLATED
from bnlab.grading.throughput import exercise_notebook, solved


def test_command_line_writes_one_row_per_submission_in_order(tmp_path, capsys):
    paths = [tmp_path / "alice_ex01.ipynb", tmp_path / "bob_ex04.ipynb", tmp_path / "carol_ex01.ipynb",
             tmp_path / "dave_ex01.ipynb"]
    nbformat.write(solved("ch01"), paths[0])
    nbformat.write(exercise_notebook("ch04"), paths[1])
    paths[2].write_text("{not json")
    out, gradescope = tmp_path / "grades.csv", tmp_path / "results.json"
    code = main([*map(str, paths), "--out", str(out), "--gradescope", str(gradescope), "--timeout", "60",
                 "--check-timeout", "5", "--jobs", "2", "--first-uid", "64000"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "4 submission(s) graded" in printed and printed.count("  graded  ") + printed.count("  incomplete") == 4
    rows = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    assert [Path(r["submission"]).name for r in rows] == [p.name for p in paths]
    ch01, ch04 = [e.key for e in SETS["ch01"]], [e.key for e in SETS["ch04"]]
    assert list(rows[0]) == ["submission", "exercises", *ch01, *ch04, "total", "max_total", "status", "reason",
                             "details"]
    assert [float(r["total"]) for r in rows] == [SETS["ch01"].max_points, 0, 0, 0]
    assert [r["exercises"] for r in rows] == ["ch01", "ch04", "ch01", "ch01"]
    assert "malformed JSON" in rows[2]["reason"] and "cannot read the file" in rows[3]["reason"]
    results = json.loads(gradescope.read_text())
    assert results["score"] == SETS["ch01"].max_points == sum(t["score"] for t in results["tests"])


@pytest.mark.skipif(not ISOLATED, reason="the notice is about isolated kernels (root)")
def test_submissions_other_users_can_read_are_named_with_the_fix(capsys):
    folder = Path(tempfile.mkdtemp(prefix="bnlab-test-open-"))
    try:
        os.chmod(folder, 0o755)
        (folder / "x_ex01.ipynb").write_text("{broken")
        assert main([str(folder / "x_ex01.ipynb"), "--out", str(folder / "grades.csv"), "--first-uid", "64000"]) == 0
        err = capsys.readouterr().err
        assert f"other users can read {folder}" in err and f"chmod o-rwx {folder}" in err
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required"),
    (["x_ex01.ipynb", "--timeout", "0"], "Options.timeout must be a positive number"),
    (["x_ex01.ipynb", "--timeout", "inf"], "Options.timeout must be a positive number"),
    (["x_ex01.ipynb", "--check-timeout", "-1"], "Options.check_timeout must be a positive number"),
    (["x_ex01.ipynb", "--exercises", "ch09"], "invalid choice: 'ch09'"),
    (["x_ex01.ipynb", "--jobs", "0"], "--jobs must be at least 1"),
    (["x_ex01.ipynb", "--first-uid", "5"], "Options.first_uid must be a uid of 1000 or more"),
    (["x_ex01.ipynb", "--points", "{missing}"], "--points: cannot read"),
    (["x_ex01.ipynb", "--points", "{bad_key}"], "Options.points maps exercise keys"),
    (["x_ex01.ipynb", "--points", "{a_list}"], "Options.points must map exercise keys"),
    (["x_ex01.ipynb", "--out", "{no_folder}/grades.csv"], "--out: cannot write"),
    (["x_ex01.ipynb", "--gradescope", "{no_folder}/results.json"], "--gradescope: cannot write"),
    (["{empty_folder}"], "no notebooks to grade"),
    (["gradescope-bundle", "--out", "{no_folder}/a.zip"], "--out: cannot write"),
    (["gradescope-bundle", "--timeout", "-3"], "Options.timeout must be a positive number"),
])
def test_bad_arguments_give_one_clear_error_line(tmp_path, capsys, args, message):
    bad_key, a_list = tmp_path / "bad_key.json", tmp_path / "a_list.json"
    bad_key.write_text(json.dumps({"ch09.q1": 5}))
    a_list.write_text("[1, 2]")
    (tmp_path / "empty").mkdir()
    names = {"missing": tmp_path / "missing.json", "bad_key": bad_key, "a_list": a_list,
             "no_folder": tmp_path / "no_such_folder", "empty_folder": tmp_path / "empty"}
    with pytest.raises(SystemExit) as raised:
        main([a.format(**names) for a in args])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
