"""bnlab.grading.worker, run as an instructor runs it (``python -m bnlab.grade`` in its own process): every honest
and every hostile submission is graded right, and nothing a submission does reaches the grader's files or outlives
its kernel.

One module-scoped run grades them all (kernel starts are slow); the tests assert on its CSV and results.json.
Isolation needs root (as in CI and Gradescope): without it, the tests that depend on it skip.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

import submission_builders as build
from bnlab.exercises import FAILED, NOT_ATTEMPTED, NOT_FOUND, PASSED, POINTS, SETS
from bnlab.grading.sandbox import processes_of
from bnlab.grading.throughput import solved

REPO = Path(__file__).resolve().parents[1]
FIRST_UID = 62000  # apart from other tests' sandbox users
TIMEOUT, CHECK_TIMEOUT = 30, 3
root_only = pytest.mark.skipif(not build.ISOLATED, reason="isolation needs the grader to run as root")


def after_check(notebook, name: str) -> int:
    """The index just after the cell that runs ``name.check(...)``."""
    return next(i for i, c in enumerate(notebook.cells) if c.source.startswith(f"{name}.check(")) + 1


def submissions() -> dict:
    """``{file stem: notebook, or raw text or bytes}``: the slow ones first, so that they overlap with the rest."""
    ex01 = solved("ch01")
    subs = {
        "loop_ex01": build.append(solved("ch01"), "while True:\n    pass"),
        "deaf_loop_ex01": build.insert(solved("ch01"), after_check(ex01, "q1"),
                                       "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n"
                                       "    pass"),
        **build.hostile(destructive=build.ISOLATED),
        **build.honest(),
        **{f"solved_ex{k[2:]}": solved(k) for k in SETS},
        **{f"untouched_ex{k[2:]}": build.untouched(k) for k in SETS},
        "huge_code_ex01": build.append(solved("ch01"), "x = 1  # " + "y" * (6 * 1024**2)),
        "truncated_ex01": '{"cells": [{"cell_type": "code", "source": "answer_q2 = 1"',
        "not_utf8_ex01": b"\xff\xfe\x00garbage\x80",
        "json_list_ex01": "[1, 2, 3]",
        "anonymous": nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("answer_q2 = 1")])),
    }
    return subs


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("submissions")
    for name, content in submissions().items():
        path = folder / f"{name}.ipynb"
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            nbformat.write(content, path)
    out = tmp_path_factory.mktemp("out")
    grades, results, canary = out / "grades.csv", out / "results.json", out / "canary.txt"
    for path in (grades, results, canary):
        path.write_text("from an earlier run")
    before = digest(folder)
    paths = [str(REPO / "code"), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    command = [sys.executable, "-m", "bnlab.grade", str(folder), "--out", str(grades), "--gradescope", str(results),
               "--timeout", str(TIMEOUT), "--check-timeout", str(CHECK_TIMEOUT), "--jobs", "2",
               "--first-uid", str(FIRST_UID)]
    started = time.monotonic()
    process = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
    seconds = time.monotonic() - started
    time.sleep(1.5)  # a process that outlived its kernel would now rewrite the outputs
    assert process.returncode == 0, process.stderr[-3000:]
    rows = {Path(r["submission"]).stem: r for r in csv.DictReader(grades.open(newline="", encoding="utf-8"))}
    return SimpleNamespace(rows=rows, results=json.loads(results.read_text()), stdout=process.stdout,
                           stderr=process.stderr, folder=folder, before=before, out=out, canary=canary,
                           seconds=seconds)


def points(row) -> dict:
    return {k: float(row[k]) for k in POINTS if row.get(k)}


def details(row) -> dict:
    """``{"q1": "failed. The message..."}`` from the row's details column."""
    parts = [p.split(": ", 1) for p in row["details"].split(" | ") if ": " in p]
    return {name: text for name, text in parts}


def status(row, name: str) -> str:
    return details(row)[name].split(". ", 1)[0]


def full(row) -> bool:
    return float(row["total"]) == float(row["max_total"]) > 0


# --- honest submissions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("set_key", list(SETS))
def test_reference_solutions_score_full_points(run, set_key):
    row = run.rows[f"solved_ex{set_key[2:]}"]
    assert full(row) and row["status"] == "graded" and row["reason"] == "", row["reason"]
    assert float(row["max_total"]) == SETS[set_key].max_points


@pytest.mark.parametrize("name", [*(f"untouched_ex{k[2:]}" for k in SETS), "printed_claims_ex01"])
def test_untouched_notebooks_and_stored_claims_score_zero(run, name):
    row = run.rows[name]
    assert float(row["total"]) == 0 and row["status"] == "graded"
    assert {status(row, q) for q in details(row)} == {NOT_ATTEMPTED}


def test_partial_answers_score_partial_points_and_name_the_mistake(run):
    row = run.rows["partial_ex01"]
    assert [status(row, q) for q in ("q1", "q2", "q3", "q4", "q5")] == [PASSED, NOT_ATTEMPTED, FAILED, PASSED, PASSED]
    assert float(row["total"]) == POINTS["ch01.q1"] + POINTS["ch01.q4"] + POINTS["ch01.q5"]
    assert "q3: failed (statistics over the batch axis only)" in row["reason"]


def test_float64_results_and_changed_inputs_fail_with_their_own_message(run):
    row = run.rows["mistakes_ex01"]
    assert "q1: failed (wrong dtype)" in row["reason"] and "float64, not float32" in details(row)["q1"]
    assert "q3: failed (input changed in place)" in row["reason"] and "`x` in place" in details(row)["q3"]
    assert float(row["total"]) == POINTS["ch01.q2"] + POINTS["ch01.q4"] + POINTS["ch01.q5"]
    row = run.rows["mistakes_ex04"]
    assert "q1: failed (input changed in place)" in row["reason"] and "`running_mean`" in details(row)["q1"]
    assert "q2: failed (momentum on the wrong term)" in row["reason"]


def test_predict_that_restores_only_the_models_own_mode_fails_on_a_mixed_mode_model(run):
    row = run.rows["mistakes_ex05"]
    assert "q2: failed (only the model's mode restored)" in row["reason"]
    assert "frozen in eval mode" in details(row)["q2"]
    assert "q5: failed (BatchNorm left in train mode)" in row["reason"]


def test_a_forward_that_calls_pytorchs_batchnorm_and_a_fold_without_eps_fail_with_their_reasons(run):
    row = run.rows["mistakes_ex06"]
    assert "q2: failed (forbidden function)" in row["reason"]
    assert "torch.nn.functional.batch_norm" in details(row)["q2"]
    assert "q3: failed (eps left out)" in row["reason"]
    assert float(row["total"]) == POINTS["ch06.q1"] + POINTS["ch06.q4"]


def test_a_wrong_diagnosis_and_a_repair_that_keeps_momentum_fail_with_their_reasons(run):
    row = run.rows["mistakes_ex05"]
    assert status(row, "q6") == FAILED and "C is not right" in details(row)["q6"]
    assert "q7: failed (momentum kept)" in row["reason"] and "reset_running_stats" in details(row)["q7"]
    assert [status(row, q) for q in ("q1", "q3", "q4")] == [PASSED] * 3
    assert float(row["total"]) == sum(POINTS[f"ch05.{q}"] for q in ("q1", "q3", "q4"))


def test_the_new_mistakes_of_chapters_2_and_3_are_named_in_the_grade(run):
    row = run.rows["mistakes_ex02"]
    assert "q2: failed (unpaired test)" in row["reason"] and "B is not right" in details(row)["q4"]
    assert float(row["total"]) == POINTS["ch02.q1"] + POINTS["ch02.q3"]
    row = run.rows["mistakes_ex03"]
    assert "q3: failed (Dropout in between counted)" in row["reason"]
    assert "q5: failed (shift left out)" in row["reason"]
    assert float(row["total"]) == SETS["ch03"].max_points - POINTS["ch03.q3"] - POINTS["ch03.q5"]


def test_a_learner_who_sets_float64_as_the_default_dtype_loses_only_the_dtype_sensitive_exercises(run):
    row = run.rows["float64_default_ex03"]
    assert [status(row, q) for q in ("q1", "q2", "q3", "q4", "q5")] == [PASSED, FAILED, PASSED, PASSED, FAILED]
    assert "q2: failed (wrong dtype)" in row["reason"] and "q5: failed (wrong dtype)" in row["reason"]


def test_reordered_cells_are_graded_on_the_final_state(run):
    row = run.rows["reordered_ex01"]
    assert full(row) and "NameError" in row["reason"]


def test_renamed_function_is_not_found(run):
    row = run.rows["renamed_ex01"]
    assert status(row, "q1") == NOT_FOUND and "`batchnorm_forward`" in details(row)["q1"]
    assert float(row["total"]) == SETS["ch01"].max_points - POINTS["ch01.q1"]


def test_exceptions_and_syntax_errors_are_noted_and_the_other_cells_run(run):
    row = run.rows["exceptions_ex02"]
    assert full(row) and "raised RuntimeError: boom" in row["reason"] and "raised SyntaxError" in row["reason"]


def test_sys_exit_in_a_cell_is_an_error_like_any_other(run):
    row = run.rows["sys_exit_ex01"]
    assert full(row) and "raised SystemExit: 3" in row["reason"]


# --- sizes and unreadable files -----------------------------------------------------------------------------------


def test_stored_outputs_do_not_count_against_the_size_limit(run):
    assert (run.folder / "stored_outputs_ex01.ipynb").stat().st_size > 60 * 1024**2
    assert full(run.rows["stored_outputs_ex01"]), run.rows["stored_outputs_ex01"]["reason"]


def test_code_over_the_limit_is_rejected_with_its_real_size(run):
    row = run.rows["huge_code_ex01"]
    assert float(row["total"]) == 0 and "its code cells hold 6.0 MB, more than the grader runs (5.0 MB" in row["reason"]


@pytest.mark.parametrize("name, reason", [("truncated_ex01", "malformed JSON"), ("not_utf8_ex01", "UTF-8"),
                                          ("json_list_ex01", "no list of cells")])
def test_unreadable_submissions_get_a_row_with_the_reason(run, name, reason):
    row = run.rows[name]
    assert row["exercises"] == "ch01" and float(row["total"]) == 0 and row["status"] == "incomplete"
    assert reason in row["reason"]


def test_a_notebook_without_a_known_exercise_set_gets_a_row_saying_so(run):
    row = run.rows["anonymous"]
    assert row["status"] == "not graded" and "--exercises" in row["reason"]


def test_huge_printed_outputs_cost_nothing_and_never_reach_the_graders_terminal(run):
    assert full(run.rows["huge_print_ex01"]), run.rows["huge_print_ex01"]["reason"]
    assert "FORGED" not in run.stdout + run.stderr


# --- budgets: each spent only by what it is for -------------------------------------------------------------------


def test_endless_loop_in_a_cell_spends_the_cells_budget_only(run):
    row = run.rows["loop_ex01"]
    assert full(row) and f"ran past its {TIMEOUT} s time limit in cell" in row["reason"]


def test_loop_that_ignores_interrupts_is_left_out_and_the_rest_is_graded(run):
    row = run.rows["deaf_loop_ex01"]
    assert status(row, "q1") == PASSED and "did not stop when interrupted" in row["reason"]


def test_answer_that_ignores_its_time_limit_and_interrupts_fails_its_own_check_only(run):
    row = run.rows["deaf_answer_ex01"]
    assert status(row, "q1") == FAILED and "ignored the interrupt" in details(row)["q1"]
    assert float(row["total"]) == SETS["ch01"].max_points - POINTS["ch01.q1"]


def test_answer_that_kills_the_kernel_costs_its_exercise_only_after_cells_used_every_restart(run):
    row = run.rows["os_exit_ex04"]
    assert status(row, "q1") == FAILED and "kernel ended" in details(row)["q1"]
    assert float(row["total"]) == SETS["ch04"].max_points - POINTS["ch04.q1"]
    assert "(`import os`)" in row["reason"] and "(`exit()`)" in row["reason"]


def test_answer_that_calls_exit_is_judged_on_what_it_returned(run):
    assert full(run.rows["exit_in_answer_ex01"]), run.rows["exit_in_answer_ex01"]["reason"]


# --- hostile submissions --------------------------------------------------------------------------------------


def test_patched_checks_json_and_torch_earn_nothing(run):
    row = run.rows["patched_ex01"]
    assert float(row["total"]) == 0 and PASSED not in {status(row, q) for q in details(row)}


def test_hooks_that_answer_the_probe_first_earn_nothing(run):
    row = run.rows["hooks_ex01"]
    assert float(row["total"]) == 0 and PASSED not in {status(row, q) for q in details(row)}


def test_an_answer_cannot_find_the_reference_in_frames_or_objects(run):
    row = run.rows["frames_ex01"]
    assert status(row, "q1") == FAILED
    assert float(row["total"]) == SETS["ch01"].max_points - POINTS["ch01.q1"]


@root_only
def test_code_that_attacks_the_graders_files_changes_nothing(run):
    assert full(run.rows["reach_the_grader_ex02"]), run.rows["reach_the_grader_ex02"]["reason"]
    assert digest(run.folder) == run.before, "a submission changed or deleted a submitted notebook"
    assert run.canary.read_text() == "from an earlier run"
    assert "hacked" not in (run.out / "grades.csv").read_text()
    assert sorted(p.name for p in run.out.iterdir()) == ["canary.txt", "grades.csv", "results.json"]


@root_only
def test_no_process_of_a_submission_outlives_the_grading(run):
    assert processes_of(FIRST_UID) == [] and processes_of(FIRST_UID + 1) == []
    left = [p for p in Path("/tmp").iterdir() if p.lstat().st_uid in (FIRST_UID, FIRST_UID + 1)]
    assert left == []


# --- the outputs ------------------------------------------------------------------------------------------------


def test_every_submission_has_one_row_and_rows_add_up(run):
    assert set(run.rows) == set(submissions())
    for name, row in run.rows.items():
        values = points(row)
        assert sum(values.values()) == float(row["total"]), name
        assert row["status"] in ("graded", "incomplete", "not graded"), name
        assert "\n" not in row["reason"] and len(row["reason"]) <= 1_000


def test_results_json_has_one_visible_test_per_exercise(run):
    tests = run.results["tests"]
    assert all(t["visibility"] == "visible" and {"name", "score", "max_score", "output"} <= set(t) for t in tests)
    assert run.results["score"] == sum(t["score"] for t in tests) == sum(float(r["total"]) for r in run.rows.values())


def test_the_run_says_whether_learner_code_was_isolated(run):
    said = "learner code is not isolated" in run.stderr
    assert said is not build.ISOLATED
