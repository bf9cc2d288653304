"""bnlab.grading.records: options are validated naming the field, a row adds up and says why points are missing,
and an exercise without a record gets a result that says what happened to it."""

import pytest

from bnlab.exercises import ERROR, FAILED, PASSED, POINTS, SETS, Result
from bnlab.grading.records import MAX_NOTES, Grade, Options, fill_unchecked, judge, notes_from, unchecked
from bnlab.grading.worker import Outcome


@pytest.mark.parametrize("kwargs, field", [
    ({"timeout": 0}, "timeout"), ({"timeout": float("inf")}, "timeout"), ({"timeout": True}, "timeout"),
    ({"check_timeout": "5"}, "check_timeout"), ({"exercises": "ch9"}, "exercises"),
    ({"max_restarts": -1}, "max_restarts"), ({"max_restarts": True}, "max_restarts"),
    ({"points": {"ch01.q1": -1}}, "points"), ({"points": {"ch01.q1": float("nan")}}, "points"),
    ({"points": {"ch09.q1": 1}}, "points"), ({"points": [1]}, "points"), ({"isolate": "yes"}, "isolate"),
    ({"first_uid": 10}, "first_uid"),
])
def test_options_reject_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"Options.{field}"):
        Options(**kwargs)


def test_points_can_be_overridden_per_exercise():
    options = Options(points={"ch01.q1": 10})
    assert options.max_points("ch01.q1") == 10 and options.max_points("ch01.q2") == POINTS["ch01.q2"]


def test_a_row_adds_up_and_names_what_did_not_pass():
    grade = Grade("alice.ipynb", "ch01", notes=["cell 3 raised ValueError"], results=[
        Result("ch01.q1", "t", PASSED, "", 3, 3), Result("ch01.q2", "t", FAILED, "", 0, 2, "buffers counted"),
        Result("ch01.q3", "t", ERROR, "", 0, 3)])
    assert grade.total == 3 and grade.max_total == 8 and grade.status == "incomplete"
    assert grade.reason == "cell 3 raised ValueError; q2: failed (buffers counted); q3: not checked"
    assert Grade("x").status == "not graded"


@pytest.mark.parametrize("why, status, words", [
    ("timeout", FAILED, "did not stop at it"), ("deaf", FAILED, "ignored the interrupt"),
    ("died", FAILED, "The kernel ended while `batchnorm_forward` was checked"),
    ("error: NameError: x", ERROR, "interfered with it (NameError: x)"), ("no record", ERROR, "left no record"),
    ("kernel", ERROR, "the kernel did not start"), ("gave up", ERROR, "more than 2 times"),
    (None, ERROR, "Not checked"),
])
def test_an_exercise_without_a_record_says_what_happened_to_it(why, status, words):
    outcome = Outcome(failures={"ch01.q1": why} if why else {})
    result = unchecked(SETS["ch01"].q1, outcome, Options())
    assert result.status == status and words in result.message and result.points == 0


def test_a_run_stopped_by_the_graders_limit_says_so():
    outcome = Outcome(events=[{"kind": "stopped", "seconds": 1234.0}])
    assert "did not finish in 1234 s" in unchecked(SETS["ch01"].q1, outcome, Options()).message


def test_judging_reads_each_record_and_fills_the_rest():
    grade = Grade("a.ipynb", "ch01")
    q4 = SETS["ch01"].q4
    outcome = Outcome(observations={"ch01.q4": '{"token": "t", "observed": {"status": "ran", "value": "AB"}}'},
                      failures={"ch01.q1": "died"})
    judge(grade, {e.key: [] for e in SETS["ch01"]}, {e.key: "t" for e in SETS["ch01"]}, outcome,
          Options(points={"ch01.q4": 5}))
    by_key = {r.exercise: r for r in grade.results}
    assert by_key[q4.key].passed and by_key[q4.key].points == 5
    assert by_key["ch01.q1"].status == FAILED and by_key["ch01.q2"].status == ERROR


def test_an_unreadable_submission_gets_a_result_per_exercise_saying_why():
    grade = Grade("a.ipynb", "ch02")
    fill_unchecked(grade, "malformed JSON", Options())
    assert [r.exercise for r in grade.results] == [e.key for e in SETS["ch02"]]
    assert all(r.status == ERROR and "malformed JSON" in r.message for r in grade.results)


def test_events_become_short_notes_and_many_are_summed_up():
    events = [{"kind": "error", "cell": 3, "first_line": "x = 1 / 0", "error": "ZeroDivisionError: division by zero"},
              {"kind": "timeout", "cell": 5, "first_line": "while True:"},
              {"kind": "died", "cell": 7, "first_line": "exit()"},
              {"kind": "unresponsive", "cell": 8, "first_line": "loop()"},
              {"kind": "kernel", "error": "no such kernel"}, {"kind": "gave up", "restarts": 2},
              {"kind": "stopped", "seconds": 60.0}, {"kind": "left", "processes": 2}]
    notes = notes_from(Outcome(events=events), Options(timeout=20))
    assert notes[0] == "cell 3 (`x = 1 / 0`) raised ZeroDivisionError: division by zero"
    assert "ran past its 20 s time limit in cell 5 (`while True:`)" in notes[1]
    assert "run again without it" in notes[2] and "did not stop when interrupted" in notes[3]
    assert len(notes) == MAX_NOTES + 1 and notes[-1] == f"and {len(events) - MAX_NOTES} more"
