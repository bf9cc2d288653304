"""A submission's record: how to grade (``Options``), its row (``Grade``), and the results and notes that the
grader derives, in its own process, from what running the submission produced (``worker.Outcome``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..exercises import ERROR, FAILED, POINTS, SETS
from .sandbox import FIRST_UID

DEFAULT_TIMEOUT = 120.0  # seconds for a notebook's own cells
DEFAULT_CHECK_TIMEOUT = 10.0  # seconds for one exercise's check
MAX_NOTES = 6


@dataclass(frozen=True)
class Options:
    """How to grade.

    Attributes:
        timeout: seconds the notebook's own cells may run, all together (in each kernel they run in).
        check_timeout: seconds each exercise's check may run.
        kernel: the Jupyter kernel to run submissions in.
        exercises: the exercise set every submission holds (``"ch01"`` ...); ``None`` detects it per notebook.
        points: points per exercise key, overriding each exercise's own.
        max_restarts: how often a notebook's own cells may end or hang the kernel before the grader gives up.
        isolate: run kernels as unprivileged users (needs root); ``None``: whenever the grader is root.
        first_uid: the first uid of the sandbox users' pool.
    """

    timeout: float = DEFAULT_TIMEOUT
    check_timeout: float = DEFAULT_CHECK_TIMEOUT
    kernel: str = "python3"
    exercises: str | None = None
    points: dict | None = None
    max_restarts: int = 2
    isolate: bool | None = None
    first_uid: int = FIRST_UID

    def __post_init__(self):
        for name in ("timeout", "check_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"Options.{name} must be a positive number of seconds; got {value!r}.")
        if self.exercises is not None and self.exercises not in SETS:
            raise ValueError(f"Options.exercises must be one of {sorted(SETS)} or None; got {self.exercises!r}.")
        if isinstance(self.max_restarts, bool) or not (isinstance(self.max_restarts, int) and self.max_restarts >= 0):
            raise ValueError(f"Options.max_restarts must be a non-negative integer; got {self.max_restarts!r}.")
        if self.isolate not in (None, True, False):
            raise ValueError(f"Options.isolate must be True, False or None (when root); got {self.isolate!r}.")
        if isinstance(self.first_uid, bool) or not (isinstance(self.first_uid, int) and 1000 <= self.first_uid < 2**31):
            raise ValueError(f"Options.first_uid must be a uid of 1000 or more; got {self.first_uid!r}.")
        if self.points is not None and not isinstance(self.points, dict):
            raise ValueError(f"Options.points must map exercise keys ({', '.join(POINTS)}) to non-negative numbers; "
                             f"got a {type(self.points).__name__}.")
        for key, value in (self.points or {}).items():
            if key not in POINTS or isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value < float("inf"):
                raise ValueError(f"Options.points maps exercise keys ({', '.join(POINTS)}) to non-negative numbers; "
                                 f"got {key!r}: {value!r}.")

    def max_points(self, key: str) -> float:
        return (self.points or {}).get(key, POINTS[key])


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


def unchecked(exercise, outcome, options: Options):
    """The result of an exercise the probe has no readable record of, from why (``outcome.failures``)."""
    why = outcome.failures.get(exercise.key) if outcome is not None else None
    name = f"`{exercise.answer}`"
    limit = f"{options.check_timeout:g} s"
    if why == "timeout":
        return exercise.result(FAILED, f"{name} ran past the check's time limit ({limit}) and did not stop at it; "
                                       f"it was interrupted.")
    if why == "deaf":
        return exercise.result(FAILED, f"{name} ran past the check's time limit ({limit}) and ignored the "
                                       f"interrupt; the other exercises were checked in a new kernel.")
    if why == "died":
        return exercise.result(FAILED, f"The kernel ended while {name} was checked (exit(), os._exit, a crash, or "
                                       f"running out of memory); the other exercises were checked in a new kernel.")
    if why and why.startswith("error: "):
        return exercise.result(ERROR, f"The check could not run: the notebook's code interfered with it "
                                      f"({why[7:]}).")
    if why == "no record":
        return exercise.result(ERROR, "The check left no record: the notebook's code interfered with it.")
    if why == "kernel":
        return exercise.result(ERROR, "Not checked: the kernel did not start.")
    if why == "gave up":
        return exercise.result(ERROR, f"Not checked: the notebook's own cells ended the kernel more than "
                                      f"{options.max_restarts} times.")
    stopped = next((e for e in (outcome.events if outcome else []) if e.get("kind") == "stopped"), None)
    if stopped:
        return exercise.result(ERROR, f"Not checked: the run did not finish in {stopped['seconds']:.0f} s.")
    return exercise.result(ERROR, "Not checked.")


def judge(grade: Grade, cases: dict, tokens: dict, outcome, options: Options) -> None:
    """Fill ``grade.results``: each exercise judged on its probe's record, in this process."""
    for exercise in SETS[grade.exercise_set]:
        text = outcome.observations.get(exercise.key)
        if text is None:
            result = unchecked(exercise, outcome, options)
        else:
            result, _ = exercise.judge_text(cases[exercise.key], text, tokens[exercise.key])
        grade.results.append(result.with_points(options.max_points(exercise.key)))


def fill_unchecked(grade: Grade, reason: str, options: Options) -> None:
    """Every exercise of the grade's set without a result gets one that says it was not checked, and why."""
    if grade.exercise_set is None:
        return
    done = {r.exercise for r in grade.results}
    for exercise in SETS[grade.exercise_set]:
        if exercise.key not in done:
            grade.results.append(exercise.result(ERROR, f"Not checked: {reason}.").with_points(
                options.max_points(exercise.key)))
    order = [e.key for e in SETS[grade.exercise_set]]
    grade.results.sort(key=lambda r: order.index(r.exercise))


def notes_from(outcome, options: Options) -> list:
    """The run's events, as short sentences for the row's reason."""
    notes = []
    for event in outcome.events:
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
        elif kind == "gave up":
            notes.append(f"the notebook's cells ended the kernel more than {event.get('restarts')} times; "
                         f"its exercises were not checked")
        elif kind == "stopped":
            notes.append(f"the run did not finish (stopped after {event.get('seconds', 0):.0f} s)")
        elif kind == "left":
            notes.append(f"{event.get('processes')} of its processes could not be ended")
    if len(notes) > MAX_NOTES:
        notes = notes[:MAX_NOTES] + [f"and {len(notes) - MAX_NOTES} more"]
    return notes
