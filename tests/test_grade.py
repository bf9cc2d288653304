"""bnlab.grade: every submission gets its row, scores come from the grader's own checks, and hostile or broken
notebooks (endless loops, exits, crashes, patched checks, fake records, malformed files) cost points, never the row.

The submissions are built from the real exercise notebooks in chapters/exercises. Kernel starts are slow, so one
module-scoped fixture grades them all at once and the tests assert on their rows.
"""

import csv
import io
import json
import re
from pathlib import Path

import nbformat
import pytest

from bnlab import grade
from bnlab.exercises import ERROR, FAILED, NOT_ATTEMPTED, NOT_FOUND, PASSED, POINTS, SETS
from bnlab.grade import Options, csv_header, csv_row, columns_for, gradescope_results, grade_submissions, main

REPO = Path(__file__).resolve().parents[1]
EXERCISES = REPO / "chapters" / "exercises"
OPTIONS = Options(timeout=20, check_timeout=5)


# --- building submissions from the real exercise notebooks --------------------------------------------------------


def exercise_notebook(set_key: str):
    """The untouched exercise notebook for ``set_key``, and its file name."""
    for path in sorted(EXERCISES.glob("ex*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        if notebook.metadata.get("bnlab", {}).get("exercises") == set_key:
            return notebook, path.name
    raise LookupError(f"no exercise notebook for {set_key}")


def answer_cell(notebook, ex) -> int:
    """The index of the cell that defines the answer to ``ex`` (``def name(`` or ``name = ``)."""
    pattern = re.compile(rf"^(def {ex.answer}\(|{ex.answer} = )", re.M)
    found = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code" and pattern.search(c.source)]
    assert len(found) == 1, (ex.key, found)
    return found[0]


def solved(set_key: str, only=None):
    """The exercise notebook with the reference solutions in place of the answers (all, or the keys in ``only``)."""
    notebook, _ = exercise_notebook(set_key)
    for ex in SETS[set_key]:
        if only is None or ex.key in only:
            notebook.cells[answer_cell(notebook, ex)].source = ex.solution_code
    return notebook


def set_answer(notebook, key: str, source: str):
    set_key, _, name = key.partition(".")
    ex = getattr(SETS[set_key], name)
    notebook.cells[answer_cell(notebook, ex)].source = source
    return notebook


def insert_code(notebook, index: int, source: str):
    notebook.cells.insert(index, nbformat.v4.new_code_cell(source))
    return notebook


def after_check(notebook, name: str) -> int:
    """The index just after the cell that runs ``name.check(...)``."""
    return next(i for i, c in enumerate(notebook.cells) if c.source.startswith(f"{name}.check(")) + 1


def without_checks(notebook):
    """The notebook without its own check cells (``q1.check(...)``, ``ch01.check_all()``)."""
    notebook.cells = [c for c in notebook.cells if not re.match(r"(q\d\.check\(|ch0\d\.check_all\()", c.source)]
    return notebook


SLOW_ANSWER = '''
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    while True:
        pass'''

DEAF_ANSWER = '''
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    import time
    while True:          # swallows the check's time limit and the kernel interrupt alike
        try:
            time.sleep(0.05)
        except BaseException:
            pass'''

WRONG_ANSWERS = {
    "ch01.q1": '''
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    return gamma * (x - x.mean(0)) / torch.sqrt(x.var(0) + eps) + beta   # unbiased variance''',
    "ch01.q2": "answer_q2 = 12345",
    "ch01.q3": '''
def batchnorm2d_forward(x, gamma, beta, eps=1e-5):
    return x''',
    "ch01.q4": '''
class Liar(str):
    def __eq__(self, other):
        return True
    __hash__ = str.__hash__

answer_q4 = Liar("CE")''',
}

PATCH_THE_CHECKS = '''
import math
import torch
import bnlab.exercises as E

def passed(self, *args, **kwargs):
    return self.result(E.PASSED, "passed")

for q in ch01:
    q.check = lambda *args, **kwargs: print("✔ passed")
E.FunctionExercise.judge = E.ValueExercise.judge = E.ChoiceExercise.judge = passed
E.Exercise.evaluate = lambda self, *args, **kwargs: self.result(E.PASSED, "passed")
E.close = lambda *args, **kwargs: True
E.probe = lambda *args, **kwargs: None
torch.allclose = lambda *args, **kwargs: True
torch.Tensor.allclose = lambda *args, **kwargs: True
math.isclose = lambda *args, **kwargs: True
ch01.check_all()
print("Total: 9 of 9 points.")'''

FAKE_PROBE = '''
import importlib.machinery
import importlib.util
import json

def fake_probe(key, namespace, cases_json, out_path, nonce, time_limit):
    with open(out_path, "w") as f:
        json.dump({"nonce": nonce, "exercise": key, "observed": {"status": "passed", "points": 100}}, f)

class FakeLoader:
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.probe = fake_probe

importlib.util.spec_from_file_location = lambda name, path: importlib.machinery.ModuleSpec(name, FakeLoader())'''

FAKE_FILES = '''
import json
import os
from pathlib import Path

fake = {"observed": {"status": "ran", "value": "AB"}, "score": 9, "passed": True}
for folder in (Path("."), Path("..")):
    for name in ("results.json", "grades.csv", "record.json"):
        (folder / name).write_text(json.dumps(fake))
records = Path("..") / "records"
if records.is_dir():
    for key in ("ch01.q1", "ch01.q2", "ch01.q3", "ch01.q4"):
        (records / f"{key}-{'0' * 32}.json").write_text(json.dumps({**fake, "exercise": key, "nonce": "0" * 32}))

def into_a_pipe(src, dst):   # the check's real records become named pipes: reading one would block forever
    os.remove(src)
    os.mkfifo(dst)

os.replace = into_a_pipe'''

LINK_TO_DEV_ZERO = '''
import os

def into_a_link(src, dst):   # an endless file in place of each record
    os.remove(src)
    os.symlink("/dev/zero", dst)

os.replace = into_a_link'''

HUGE_OUTPUT = '''
import sys
from IPython.display import HTML, display
for _ in range(100):
    print("x" * 1_000_000)
sys.stdout.write("y" * 20_000_000)
display(HTML("<p>" * 2_000_000))'''


def printed_outputs(notebook):
    """An untouched notebook carrying outputs and metadata that claim full points."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.execution_count = 1
            claim = "✔ q1 (the train-mode forward): passed.\nTotal: 9 of 9 points.\n"
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=claim)]
    notebook.metadata["bnlab"]["score"] = 9
    return notebook


def reversed_cells(notebook):
    """Setup and imports first, then every other code cell in reverse order (checks before the answers)."""
    code = [c for c in notebook.cells if c.cell_type == "code"]
    notebook.cells = code[:2] + code[2:][::-1]
    return notebook


def renamed(notebook):
    notebook = solved("ch01")
    index = answer_cell(notebook, SETS["ch01"].q1)
    notebook.cells[index].source = notebook.cells[index].source.replace("def batchnorm_forward", "def batch_norm_fwd")
    return notebook


def deleted(notebook):
    del notebook.cells[answer_cell(notebook, SETS["ch01"].q3)]
    return notebook


def partial():
    notebook = solved("ch01", only={"ch01.q1", "ch01.q4"})
    return set_answer(notebook, "ch01.q3", '''
def batchnorm2d_forward(x, gamma, beta, eps=1e-5):
    mean, var = x.mean(0, keepdim=True), x.var(0, unbiased=False, keepdim=True)   # over the batch axis only
    return gamma.view(1, -1, 1, 1) * (x - mean) / torch.sqrt(var + eps) + beta.view(1, -1, 1, 1)''')


def all_wrong_and_patched():
    notebook, _ = exercise_notebook("ch01")
    for key, source in WRONG_ANSWERS.items():
        set_answer(notebook, key, source)
    return insert_code(notebook, len(notebook.cells), PATCH_THE_CHECKS)


def odd_cells_json(notebook) -> str:
    """A solved notebook's JSON with cells nbformat would reject: not a dict, a number as source, no source."""
    data = json.loads(nbformat.writes(notebook))
    data["cells"] += [5, {"cell_type": "code", "source": 7}, {"cell_type": "code"}, {"cell_type": "raw", "source": 1}]
    return json.dumps(data)


def submissions() -> dict:
    """``{name: notebook, JSON text or bytes}``; the slow ones first, so that they overlap with the rest."""
    ch01 = lambda: solved("ch01")  # noqa: E731
    subs = {
        "deaf_answer": without_checks(set_answer(ch01(), "ch01.q1", DEAF_ANSWER)),
        "deaf_loop": insert_code(ch01(), after_check(ch01(), "q1"),
                                 "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"),
        "loop": insert_code(ch01(), after_check(ch01(), "q1"), "while True:\n    pass"),
        "slow_answer": without_checks(set_answer(ch01(), "ch01.q1", SLOW_ANSWER)),
        "crash_in_answer": without_checks(set_answer(ch01(), "ch01.q1", solved_then("__import__('os')._exit(0)"))),
        "exit_in_answer": without_checks(set_answer(ch01(), "ch01.q1", solved_then("exit()"))),
        "exit": insert_code(ch01(), 3, "exit()"),
        "os_exit": insert_code(ch01(), 3, "import os\nos._exit(1)"),
        "exit_last": insert_code(ch01(), len(ch01().cells), "quit()"),
        "sys_exit": insert_code(ch01(), 3, "import sys\nsys.exit(3)"),
        "exceptions": insert_code(insert_code(ch01(), 3, 'raise RuntimeError("boom")'), 5, "def broken(:\n    pass"),
        "deleted": deleted(ch01()),
        "reordered": reversed_cells(ch01()),
        "renamed": renamed(ch01()),
        "huge_output": insert_code(ch01(), 3, HUGE_OUTPUT),
        "odd_cells": odd_cells_json(ch01()),
        "partial": partial(),
        "patched": all_wrong_and_patched(),
        "fake_probe": insert_code(ch01(), len(ch01().cells), FAKE_PROBE),
        "fake_files": insert_code(exercise_notebook("ch01")[0], 3, FAKE_FILES),
        "dev_zero": insert_code(ch01(), len(ch01().cells), LINK_TO_DEV_ZERO),
        "printed": printed_outputs(exercise_notebook("ch01")[0]),
        "truncated": '{"cells": [{"cell_type": "code", "source": "answer_q2 = 1"',
        "not_utf8": b"\xff\xfe\x00garbage\x80",
        "empty": "",
        "json_list": "[1, 2, 3]",
        "cells_not_a_list": '{"cells": 5, "metadata": {}}',
    }
    for set_key in SETS:
        subs[f"solved_{set_key}"] = solved(set_key)
        subs[f"untouched_{set_key}"] = exercise_notebook(set_key)[0]
    return subs


def solved_then(statement: str) -> str:
    """ch01.q1's reference solution that runs ``statement`` before it returns."""
    return SETS["ch01"].q1.solution_code.replace("    return ", f"    {statement}\n    return ")


def file_name(name: str) -> str:
    """Every built submission is an ex01 notebook unless its name says otherwise (the grader reads exNN)."""
    for set_key in SETS:
        if name.endswith(set_key):
            return f"{name}_ex{set_key[2:]}.ipynb"
    return f"{name}_ex01.ipynb"


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("submissions")
    paths = {}
    for name, content in submissions().items():
        path = folder / file_name(name)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            nbformat.write(content, path)
        paths[name] = path
    paths["missing"] = folder / "missing_ex01.ipynb"
    paths["anonymous"] = folder / "anonymous.ipynb"
    paths["anonymous"].write_text(nbformat.writes(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("answer_q2 = 1")])))
    names = list(paths)
    grades = list(grade_submissions([paths[n] for n in names], OPTIONS, jobs=2))
    return dict(zip(names, grades))


def by_exercise(row) -> dict:
    return {r.exercise: r for r in row.results}


def statuses(row) -> dict:
    return {r.exercise: r.status for r in row.results}


# --- every submission gets exactly one row, and it adds up ---------------------------------------------------------


def test_every_submission_gets_one_row_in_order(graded):
    assert all(Path(row.submission).stem.startswith(name) for name, row in graded.items())
    for name, row in graded.items():
        assert row.total == sum(r.points for r in row.results), name
        assert 0 <= row.total <= row.max_total, name
        assert all(r.points in (0, r.max_points) for r in row.results), name
        assert row.status in ("graded", "incomplete", "not graded"), name


def test_rows_name_every_exercise_of_their_set_in_course_order(graded):
    for name, row in graded.items():
        if row.exercise_set is None:
            continue
        assert [r.exercise for r in row.results] == [e.key for e in SETS[row.exercise_set]], name
        assert row.max_total == sum(POINTS[r.exercise] for r in row.results), name


# --- full, zero and partial points -------------------------------------------------------------------------------


@pytest.mark.parametrize("set_key", list(SETS))
def test_reference_solutions_score_full_points(graded, set_key):
    row = graded[f"solved_{set_key}"]
    assert row.exercise_set == set_key
    assert all(r.status == PASSED for r in row.results), row.reason
    assert row.total == row.max_total == SETS[set_key].max_points
    assert row.status == "graded" and row.reason == ""


@pytest.mark.parametrize("set_key", list(SETS))
def test_untouched_notebooks_score_zero(graded, set_key):
    row = graded[f"untouched_{set_key}"]
    assert row.exercise_set == set_key
    assert set(statuses(row).values()) == {NOT_ATTEMPTED}, row.reason
    assert row.total == 0 and row.max_total == SETS[set_key].max_points
    assert row.status == "graded"


def test_partial_answers_score_partial_points_and_name_the_mistake(graded):
    row = graded["partial"]
    results = by_exercise(row)
    assert statuses(row) == {"ch01.q1": PASSED, "ch01.q2": NOT_ATTEMPTED, "ch01.q3": FAILED, "ch01.q4": PASSED}
    assert row.total == POINTS["ch01.q1"] + POINTS["ch01.q4"]
    assert results["ch01.q3"].mistake == "statistics over the batch axis only"
    assert "q3: failed (statistics over the batch axis only)" in row.reason


def test_stored_outputs_and_metadata_earn_nothing(graded):
    row = graded["printed"]
    assert row.total == 0, row.reason
    assert set(statuses(row).values()) == {NOT_ATTEMPTED}, row.reason


# --- endless loops -------------------------------------------------------------------------------------------------


def test_endless_loop_in_a_cell_keeps_the_points_earned_before_it(graded):
    row = graded["loop"]
    assert statuses(row) == {"ch01.q1": PASSED, "ch01.q2": NOT_FOUND, "ch01.q3": NOT_FOUND, "ch01.q4": NOT_FOUND}
    assert row.total == POINTS["ch01.q1"]
    assert f"ran past its {OPTIONS.timeout:g} s time limit in cell" in row.reason
    assert "while True:" in row.reason


def test_loop_that_ignores_interrupts_is_left_out_and_the_rest_is_graded(graded):
    row = graded["deaf_loop"]
    assert row.total == POINTS["ch01.q1"]
    assert by_exercise(row)["ch01.q1"].status == PASSED
    assert "did not stop when interrupted" in row.reason


def test_answer_that_never_returns_fails_its_check_only(graded):
    row = graded["slow_answer"]
    q1 = by_exercise(row)["ch01.q1"]
    assert q1.status == FAILED and "time limit" in q1.message
    assert row.total == SETS["ch01"].max_points - POINTS["ch01.q1"]


def test_answer_that_swallows_the_time_limit_and_interrupts_is_not_checked(graded):
    row = graded["deaf_answer"]
    q1 = by_exercise(row)["ch01.q1"]
    assert q1.status == ERROR and q1.points == 0 and "would not stop" in q1.message
    assert row.total == SETS["ch01"].max_points - POINTS["ch01.q1"]
    assert row.status == "incomplete"


# --- exits, crashes, exceptions, syntax errors --------------------------------------------------------------------


def test_sys_exit_in_a_cell_is_an_error_like_any_other(graded):
    row = graded["sys_exit"]
    assert row.total == row.max_total, row.reason
    assert "raised SystemExit: 3" in row.reason


@pytest.mark.parametrize("name, statement", [("exit", "exit()"), ("os_exit", "import os"),
                                             ("exit_last", "quit()")])
def test_cell_that_ends_the_kernel_is_left_out_and_the_rest_is_graded(graded, name, statement):
    row = graded[name]
    assert row.total == row.max_total, row.reason
    assert f"(`{statement}`)" in row.reason and "run again without it" in row.reason


def test_answer_that_kills_the_kernel_loses_only_its_own_points(graded):
    row = graded["crash_in_answer"]
    q1 = by_exercise(row)["ch01.q1"]
    assert q1.status == ERROR and q1.points == 0 and "kernel died" in q1.message
    assert all(r.status == PASSED for r in row.results if r.exercise != "ch01.q1")
    assert row.total == SETS["ch01"].max_points - POINTS["ch01.q1"]


def test_answer_that_calls_exit_is_judged_on_what_it_returned_and_the_other_checks_still_run(graded):
    row = graded["exit_in_answer"]  # IPython's exit() returns, then the kernel shuts down after the cell
    assert row.total == row.max_total, row.reason


def test_exceptions_and_syntax_errors_are_noted_and_the_other_cells_run(graded):
    row = graded["exceptions"]
    assert row.total == row.max_total, row.reason
    assert "raised RuntimeError: boom" in row.reason
    assert "raised SyntaxError" in row.reason


# --- deleted, reordered, renamed ----------------------------------------------------------------------------------


def test_deleted_answer_cell_is_not_found(graded):
    row = graded["deleted"]
    assert statuses(row)["ch01.q3"] == NOT_FOUND
    assert "batchnorm2d_forward" in by_exercise(row)["ch01.q3"].message
    assert row.total == SETS["ch01"].max_points - POINTS["ch01.q3"]


def test_reordered_cells_are_graded_on_the_final_state(graded):
    row = graded["reordered"]
    assert row.total == row.max_total, row.reason
    assert "NameError" in row.reason  # the checks that ran before their answers existed


def test_renamed_function_is_not_found(graded):
    row = graded["renamed"]
    q1 = by_exercise(row)["ch01.q1"]
    assert q1.status == NOT_FOUND and "`batchnorm_forward`" in q1.message
    assert row.total == SETS["ch01"].max_points - POINTS["ch01.q1"]


# --- huge outputs and malformed files -----------------------------------------------------------------------------


def test_huge_outputs_cost_nothing_and_stay_out_of_the_row(graded):
    row = graded["huge_output"]
    assert row.total == row.max_total, row.reason
    assert len(csv_row(row, columns_for({"ch01"}))[-2]) < 1_000


def test_cells_nbformat_would_reject_are_skipped(graded):
    row = graded["odd_cells"]
    assert row.total == row.max_total, row.reason


@pytest.mark.parametrize("name, reason", [
    ("truncated", "malformed JSON"), ("not_utf8", "UTF-8"), ("empty", "malformed JSON"),
    ("json_list", "no list of cells"), ("cells_not_a_list", "no list of cells"),
    ("missing", "cannot read the file"),
])
def test_unreadable_submissions_get_a_row_with_the_reason(graded, name, reason):
    row = graded[name]
    assert row.exercise_set == "ch01"  # from the file name
    assert row.total == 0 and row.max_total == SETS["ch01"].max_points
    assert set(statuses(row).values()) == {ERROR}, row.reason
    assert reason in row.reason and row.status == "incomplete"


def test_kernel_that_does_not_start_gives_a_row_with_the_reason(tmp_path):
    path = tmp_path / "alice_ex01.ipynb"
    nbformat.write(solved("ch01"), path)
    row = grade.grade_submission(path, Options(kernel="no-such-kernel"))
    assert row.total == 0 and set(statuses(row).values()) == {ERROR}
    assert "the kernel failed: it did not start in 3 tries" in row.reason and "no-such-kernel" in row.reason


def test_notebook_without_a_known_exercise_set_gets_a_row_saying_so(graded):
    row = graded["anonymous"]
    assert row.exercise_set is None and row.results == []
    assert row.status == "not graded" and "--exercises" in row.reason


# --- tampering with the checks -------------------------------------------------------------------------------------


def test_patched_checks_and_printed_claims_do_not_pass_wrong_answers(graded):
    row = graded["patched"]
    assert row.total == 0, row.reason
    assert set(statuses(row).values()) == {FAILED}  # the grader's own checks ran, and judged
    assert by_exercise(row)["ch01.q1"].mistake == "unbiased variance"


def test_fake_probe_writing_its_own_records_earns_nothing(graded):
    row = graded["fake_probe"]
    assert row.total == 0, row.reason
    assert all(r.status == ERROR for r in row.results)


def test_fake_result_files_and_pipes_in_place_of_records_earn_nothing(graded):
    row = graded["fake_files"]
    assert row.total == 0, row.reason
    assert all(r.status == ERROR and "no record" in r.message for r in row.results)


def test_links_to_endless_files_in_place_of_records_earn_nothing(graded):
    row = graded["dev_zero"]
    assert row.total == 0, row.reason
    assert all(r.status == ERROR for r in row.results)


def test_record_reader_takes_only_small_plain_files(tmp_path):
    nonce = "1" * 32
    record = tmp_path / "ch01.q2.json"
    record.write_text(json.dumps({"nonce": nonce, "exercise": "ch01.q2", "observed": {"status": "ran"}}))
    assert grade.read_record(record, nonce, "ch01.q2") == {"status": "ran"}
    assert grade.read_record(record, "2" * 32, "ch01.q2") is None  # another run's nonce
    assert grade.read_record(record, nonce, "ch01.q4") is None  # another exercise's record
    link = tmp_path / "link.json"
    link.symlink_to(record)
    assert grade.read_record(link, nonce, "ch01.q2") is None
    endless = tmp_path / "endless.json"
    endless.symlink_to("/dev/zero")
    assert grade.read_record(endless, nonce, "ch01.q2") is None
    assert grade.read_status(endless) == {}
    big = tmp_path / "big.json"
    big.write_text(" " * (grade.MAX_RECORD_BYTES + 1))
    assert grade.read_record(big, nonce, "ch01.q2") is None


# --- CSV and Gradescope ----------------------------------------------------------------------------------------------


def test_csv_rows_parse_and_add_up(graded):
    grades = list(graded.values())
    keys = columns_for({g.exercise_set for g in grades if g.exercise_set})
    assert keys == list(POINTS)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(csv_header(keys))
    for row in grades:
        writer.writerow(csv_row(row, keys))
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert len(rows) == len(grades)
    for parsed, row in zip(rows, grades):
        assert parsed["submission"] == row.submission
        points = [float(parsed[k]) for k in keys if parsed[k] != ""]
        assert len(points) == len(row.results)
        assert float(parsed["total"]) == sum(points) == row.total
        assert float(parsed["max_total"]) == row.max_total
        assert parsed["status"] == row.status
        assert "\n" not in parsed["reason"] and len(parsed["reason"]) <= 1_000


def test_gradescope_results_parse_and_add_up(graded):
    grades = list(graded.values())
    results = json.loads(json.dumps(gradescope_results(grades)))
    tests = results["tests"]
    assert all({"name", "score", "max_score", "output"} <= set(t) for t in tests)
    assert results["score"] == sum(t["score"] for t in tests) == sum(g.total for g in grades)
    assert sum(t["max_score"] for t in tests) == sum(g.max_total for g in grades)
    assert len({t["name"] for t in tests}) == len(tests)
    one = json.loads(json.dumps(gradescope_results([graded["partial"]])))
    assert [t["name"].split(":")[0] for t in one["tests"]] == ["ch01.q1", "ch01.q2", "ch01.q3", "ch01.q4"]
    assert [t["score"] for t in one["tests"]] == [POINTS["ch01.q1"], 0, 0, POINTS["ch01.q4"]]
    assert one["score"] == graded["partial"].total


# --- the command line ------------------------------------------------------------------------------------------------


def test_command_line_writes_one_row_per_submission(tmp_path, capsys):
    solved_path = tmp_path / "alice_ex01.ipynb"
    nbformat.write(solved("ch01"), solved_path)
    untouched_path = tmp_path / "bob_ex04.ipynb"
    nbformat.write(exercise_notebook("ch04")[0], untouched_path)
    broken_path = tmp_path / "carol_ex01.ipynb"
    broken_path.write_text("{not json")
    missing_path = tmp_path / "dave_ex01.ipynb"
    out, gradescope = tmp_path / "grades.csv", tmp_path / "results.json"
    code = main([str(solved_path), str(untouched_path), str(broken_path), str(missing_path), "--out", str(out),
                 "--gradescope", str(gradescope), "--timeout", "60", "--check-timeout", "5", "--jobs", "2"])
    assert code == 0
    assert "4 submission(s) graded" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    assert [Path(r["submission"]).name for r in rows] == [p.name for p in
                                                           (solved_path, untouched_path, broken_path, missing_path)]
    ch01, ch04 = [e.key for e in SETS["ch01"]], [e.key for e in SETS["ch04"]]
    assert list(rows[0]) == ["submission", "exercises", *ch01, *ch04, "total", "max_total", "status", "reason",
                             "details"]
    assert [float(r["total"]) for r in rows] == [SETS["ch01"].max_points, 0, 0, 0]
    assert [r["exercises"] for r in rows] == ["ch01", "ch04", "ch01", "ch01"]
    assert all(r[k] == "" for r in rows[:1] for k in ch04) and all(rows[1][k] == "0" for k in ch04)
    assert "malformed JSON" in rows[2]["reason"] and "cannot read the file" in rows[3]["reason"]
    results = json.loads(gradescope.read_text())
    assert results["score"] == SETS["ch01"].max_points == sum(t["score"] for t in results["tests"])


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required"),
    (["x_ex01.ipynb", "--timeout", "0"], "Options.timeout must be a positive number"),
    (["x_ex01.ipynb", "--timeout", "inf"], "Options.timeout must be a positive number"),
    (["x_ex01.ipynb", "--check-timeout", "-1"], "Options.check_timeout must be a positive number"),
    (["x_ex01.ipynb", "--exercises", "ch09"], "invalid choice: 'ch09'"),
    (["x_ex01.ipynb", "--jobs", "0"], "--jobs must be at least 1"),
    (["x_ex01.ipynb", "--points", "{missing}"], "--points: cannot read"),
    (["x_ex01.ipynb", "--points", "{bad_key}"], "Options.points maps exercise keys"),
    (["x_ex01.ipynb", "--points", "{a_list}"], "Options.points must map exercise keys"),
    (["x_ex01.ipynb", "--out", "{no_folder}/grades.csv"], "--out: cannot write"),
    (["x_ex01.ipynb", "--gradescope", "{no_folder}/results.json"], "--gradescope: cannot write"),
    (["{empty_folder}"], "no notebooks to grade"),
])
def test_bad_arguments_give_one_clear_error_line(tmp_path, capsys, args, message):
    bad_key, a_list = tmp_path / "bad_key.json", tmp_path / "a_list.json"
    bad_key.write_text(json.dumps({"ch09.q1": 5}))
    a_list.write_text("[1, 2]")
    (tmp_path / "empty").mkdir()
    names = {"missing": tmp_path / "missing.json", "bad_key": bad_key, "a_list": a_list,
             "no_folder": tmp_path / "no_such_folder", "empty_folder": tmp_path / "empty"}
    args = [a.format(**names) for a in args]
    with pytest.raises(SystemExit) as raised:
        main(args)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err


# --- options ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, field", [
    ({"timeout": 0}, "timeout"), ({"check_timeout": "5"}, "check_timeout"), ({"exercises": "ch9"}, "exercises"),
    ({"max_restarts": -1}, "max_restarts"), ({"points": {"ch01.q1": -1}}, "points"),
    ({"points": {"ch01.q1": float("nan")}}, "points"),
])
def test_options_reject_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"Options.{field}"):
        Options(**kwargs)


def test_exercise_set_is_detected_from_metadata_import_line_or_file_name():
    notebook, _ = exercise_notebook("ch03")
    assert grade.detect_exercise_set(notebook, Path("anything.ipynb")) == "ch03"
    del notebook.metadata["bnlab"]
    assert grade.detect_exercise_set(notebook, Path("anything.ipynb")) == "ch03"  # its import line
    assert grade.detect_exercise_set({"cells": []}, Path("alice_ex05_eval_mode.ipynb")) == "ch05"
    assert grade.detect_exercise_set({"cells": []}, Path("alice.ipynb")) is None
