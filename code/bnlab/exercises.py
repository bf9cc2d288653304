"""Graded exercises with instant feedback: ``qN.check(answer)``, ``qN.hint()``, ``qN.solution()``.

In an exercise notebook::

    from bnlab.exercises import ch01
    q1, q2, q3, q4 = ch01

    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        raise NotImplementedError   # the learner replaces this

    q1.check(batchnorm_forward)     # prints: passed, a specific failure, or "not attempted"

Each exercise is one of three kinds: *implement* a function, *predict* a number, or *diagnose* (choose letters).
A check runs in three steps, which may run in different processes:

1. ``make_cases(seed)``: fresh random inputs, as plain JSON data; new ones on every check, so a hard-coded answer
   fails.
2. ``observe(answer, cases)``: run the learner's answer on them and record what came back, as plain JSON data.
   This is the only step that runs learner code; it has a time limit.
3. ``judge(cases, observed)``: compare with a reference computed from the cases (PyTorch's own modules wherever
   there is one) and, when the answer matches a typical mistake, name it.

``check`` runs all three in the notebook. The grader (``python -m bnlab.grade``) runs step 2 in the submission's
kernel, after the learner's cells, from a fresh copy of this file, and steps 1 and 3 in its own process, where no
learner code runs. So the only way to pass a check is to return the right values for inputs nobody has seen.

Points per exercise are in ``POINTS``. This file imports only the standard library and torch at module level, so
that the grader can load it by its path.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import secrets
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

# --- points: the one place to change them ---------------------------------------------------------------------

POINTS = {
    "ch01.q1": 3, "ch01.q2": 2, "ch01.q3": 3, "ch01.q4": 1,
    "ch02.q1": 3, "ch02.q2": 3, "ch02.q3": 1, "ch02.q4": 1,
    "ch03.q1": 2, "ch03.q2": 3, "ch03.q3": 3, "ch03.q4": 1,
    "ch04.q1": 3, "ch04.q2": 2, "ch04.q3": 2, "ch04.q4": 1, "ch04.q5": 1,
    "ch05.q1": 1, "ch05.q2": 3, "ch05.q3": 2, "ch05.q4": 1, "ch05.q5": 2,
}

PASSED = "passed"
FAILED = "failed"
NOT_ATTEMPTED = "not attempted"
NOT_FOUND = "not found"
ERROR = "not checked"  # the check could not run to the end (time limit, crash)
STATUSES = (PASSED, FAILED, NOT_ATTEMPTED, NOT_FOUND, ERROR)
SYMBOLS = {PASSED: "✔", FAILED: "✘", NOT_ATTEMPTED: "·", NOT_FOUND: "·", ERROR: "✘"}

DEFAULT_TIME_LIMIT = 10.0  # seconds for one exercise's check, all its inputs together
MAX_ELEMENTS = 100_000  # largest value a check records (tensor elements, list items)


@dataclass(frozen=True)
class Result:
    """The outcome of one check.

    Attributes:
        exercise: the exercise's key, e.g. ``"ch01.q1"``.
        title: what the exercise is about.
        status: one of ``STATUSES``.
        message: what the learner reads: why it passed or failed.
        points: points earned (all or nothing).
        max_points: points available.
        mistake: the name of the typical mistake the answer matches, if any.
    """

    exercise: str
    title: str
    status: str
    message: str
    points: float
    max_points: float
    mistake: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def name(self) -> str:
        """``"q1"`` for ``"ch01.q1"``."""
        return self.exercise.split(".")[-1]

    def with_points(self, max_points: float) -> "Result":
        """The same result out of ``max_points`` (all or nothing)."""
        return replace(self, max_points=max_points, points=max_points if self.passed else 0)

    def __str__(self) -> str:
        return f"{SYMBOLS[self.status]} {self.name} ({self.title}): {self.status}. {self.message}"


class ChecksTimeout(BaseException):
    """Raised inside learner code when a check runs past its time limit (a BaseException, like KeyboardInterrupt,
    so that a learner's ``except Exception`` does not swallow it)."""


@contextmanager
def time_limited(seconds: float | None):
    """Raise ``ChecksTimeout`` in the running code after ``seconds`` (and every second after, until the block ends).

    Works in the main thread of a process that has ``SIGALRM`` (Linux, macOS: Colab, Jupyter, the grader's kernel);
    elsewhere the block runs without a limit.
    """
    usable = (
        seconds is not None
        and seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise ChecksTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


# --- values across a process boundary: plain JSON data ---------------------------------------------------------


class Opaque:
    """A value a check could not record (a type it does not know, or too large)."""

    def __init__(self, description: str):
        self.description = description

    def __repr__(self) -> str:
        return f"<{self.description}>"


def encode(value, depth: int = 0):
    """``value`` as JSON data: tensors and NumPy arrays become ``{"__tensor__": dtype, "shape", "data"}``, other
    types ``{"__object__": type name}``. Sizes are capped at ``MAX_ELEMENTS``."""
    if depth > 20:
        return {"__object__": "too deeply nested"}
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value[:2_000]
    if isinstance(value, int):
        return value if abs(value) < 2**62 else float(value)
    if isinstance(value, float):
        return value
    if type(value).__module__ == "numpy":
        try:
            value = torch.as_tensor(value)
        except Exception:
            return {"__object__": type(value).__name__}
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.is_complex() or tensor.dim() > 8:
            return {"__object__": f"tensor of dtype {tensor.dtype} and shape {tuple(tensor.shape)}"}
        if tensor.numel() > MAX_ELEMENTS:
            return {"__object__": f"tensor of shape {tuple(tensor.shape)}, too large to check"}
        data = tensor.cpu().to(torch.float64).flatten().tolist()
        return {"__tensor__": str(tensor.dtype).replace("torch.", ""), "shape": list(tensor.shape), "data": data}
    if isinstance(value, (list, tuple, set, frozenset)):
        if len(value) > MAX_ELEMENTS:
            return {"__object__": f"{type(value).__name__} of {len(value)} items, too large to check"}
        items = list(value)
        if isinstance(value, (set, frozenset)):
            try:
                items = sorted(items)
            except TypeError:
                pass
        return [encode(item, depth + 1) for item in items]
    if isinstance(value, dict):
        if len(value) > 1_000:
            return {"__object__": f"dict of {len(value)} items, too large to check"}
        return {"__dict__": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    return {"__object__": type(value).__name__}


class MalformedObservation(ValueError):
    """Recorded data that ``encode`` cannot have produced."""


def decode(data, depth: int = 0):
    """The inverse of ``encode``: tensors come back as float64 tensors, unknown objects as ``Opaque``.
    Raises ``MalformedObservation`` on anything ``encode`` cannot have written."""
    if depth > 25:
        raise MalformedObservation("nested too deeply")
    if data is None or isinstance(data, (bool, str, int, float)):
        return data
    if isinstance(data, list):
        if len(data) > MAX_ELEMENTS:
            raise MalformedObservation("list too long")
        return [decode(item, depth + 1) for item in data]
    if not isinstance(data, dict):
        raise MalformedObservation(f"unexpected {type(data).__name__}")
    if "__tensor__" in data:
        shape, values = data.get("shape"), data.get("data")
        if not (isinstance(shape, list) and len(shape) <= 8 and all(type(n) is int and n >= 0 for n in shape)):
            raise MalformedObservation("bad tensor shape")
        if not isinstance(values, list) or len(values) != math.prod(shape) or len(values) > MAX_ELEMENTS:
            raise MalformedObservation("tensor data does not match its shape")
        if not all(type(v) in (int, float) for v in values):
            raise MalformedObservation("tensor data is not numbers")
        return torch.tensor(values, dtype=torch.float64).reshape(shape)
    if "__object__" in data:
        return Opaque(str(data["__object__"])[:200])
    if "__dict__" in data and isinstance(data["__dict__"], list):
        out = {}
        for pair in data["__dict__"]:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise MalformedObservation("bad dict item")
            key = decode(pair[0], depth + 1)
            out[key if isinstance(key, (str, int, float, bool)) or key is None else repr(key)] = decode(pair[1], depth + 1)
        return out
    raise MalformedObservation("unknown object")


def describe_value(value) -> str:
    """Short text for a value in a failure message."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, Opaque):
        return f"a {value.description}"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return "a dict"
    return repr(value)[:120]


def describe_exception(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 400 else text[:397] + "..."


def is_unanswered(answer) -> bool:
    return answer is None or answer is Ellipsis


def fmt(x: float) -> str:
    return f"{x:.6g}"


def tensor_from(data) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.float64)


def close(got, want, *, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """Whether tensor ``got`` has ``want``'s shape and values (to float tolerance, NaN never matches)."""
    return (
        isinstance(got, torch.Tensor)
        and isinstance(want, torch.Tensor)
        and tuple(got.shape) == tuple(want.shape)
        and bool(torch.isfinite(got).all())
        and torch.allclose(got.to(torch.float64), want.to(torch.float64), rtol=rtol, atol=atol)
    )


def tensor_difference(got, want) -> str:
    """Where ``got`` and ``want`` differ, in words."""
    if not isinstance(got, torch.Tensor):
        return f"expected a tensor of shape {tuple(want.shape)}, got {describe_value(got)}"
    if tuple(got.shape) != tuple(want.shape):
        return f"expected shape {tuple(want.shape)}, got shape {tuple(got.shape)}"
    if not bool(torch.isfinite(got).all()):
        return "the result contains NaN or infinity"
    gap = (got - want).abs()
    index = tuple(int(i) for i in torch.nonzero(gap == gap.max())[0]) if gap.dim() else ()
    where = f"[{', '.join(str(i) for i in index)}]" if index else ""
    return f"at {where or 'the value'} expected {fmt(float(want[index]))}, got {fmt(float(got[index]))} " \
           f"(largest difference {fmt(float(gap.max()))})"


@dataclass(frozen=True)
class Problem:
    """What is wrong with one output: the typical mistake it matches (if any) and the details."""

    detail: str
    mistake: str | None = None


# --- exercises --------------------------------------------------------------------------------------------------


class Exercise:
    """One graded exercise. Subclasses say what a case is, how to run an answer on it and how to judge it."""

    kind = "implement"

    def __init__(self, key: str, title: str, answer: str, *, hint: str, solution: str):
        self.key = key
        self.title = title
        self.answer = answer  # the name the answer has in the notebook: a function or a variable
        self.hint_text = hint.strip()
        self.solution_code = solution.strip()
        self.failed_input = None  # the input of the last failed check, for the learner to look at

    @property
    def name(self) -> str:
        return self.key.split(".")[-1]

    @property
    def points(self) -> float:
        return POINTS[self.key]

    def __repr__(self) -> str:
        return f"<exercise {self.key}: {self.title} ({self.kind}, {self.points} points; answer: {self.answer})>"

    # the learner's side

    def check(self, answer=inspect.Parameter.empty, *, time_limit: float = DEFAULT_TIME_LIMIT) -> None:
        """Check ``answer`` (by default, the notebook's variable named ``self.answer``) and print the outcome."""
        if answer is inspect.Parameter.empty:
            caller = inspect.currentframe().f_back.f_globals
            if self.answer not in caller:
                print(self.not_found().__str__())
                return
            answer = caller[self.answer]
        result = self.evaluate(answer, time_limit=time_limit)
        print(result)
        if self.failed_input is not None:
            print(f"(The input it failed on is in `{self.name}.failed_input`.)")

    def hint(self) -> None:
        print(self.hint_text)

    def solution(self) -> None:
        print(self.solution_code)

    def evaluate(self, answer, *, seed: int | None = None, time_limit: float | None = DEFAULT_TIME_LIMIT) -> Result:
        """The whole check in this process: fresh cases, observe ``answer`` on them, judge."""
        cases = self.make_cases(seed)
        observed = json.loads(json.dumps(self.observe(answer, cases, time_limit=time_limit)))
        result = self.judge(cases, observed)
        self.failed_input = self.failing_input(cases, observed) if result.status == FAILED else None
        return result

    def not_found(self) -> Result:
        return self.result(NOT_FOUND, f"There is no `{self.answer}` in the notebook: run the cell that defines it "
                                      f"(and keep its name).")

    # the check's three steps

    def make_cases(self, seed: int | None = None) -> list:
        """Fresh inputs for one check, as JSON data."""
        generator = torch.Generator().manual_seed(secrets.randbits(62) if seed is None else seed)
        return [self.make_case(generator, index) for index in range(self.n_cases)]

    n_cases = 1

    def make_case(self, generator: torch.Generator, index: int) -> dict:
        return {}

    def observe(self, answer, cases: list, *, time_limit: float | None = DEFAULT_TIME_LIMIT) -> dict:
        raise NotImplementedError

    def judge(self, cases: list, observed: dict) -> Result:
        raise NotImplementedError

    def failing_input(self, cases: list, observed: dict):
        return None

    def result(self, status: str, message: str, mistake: str | None = None) -> Result:
        points = self.points if status == PASSED else 0
        return Result(self.key, self.title, status, message, points, self.points, mistake)

    def judge_status(self, observed: dict) -> Result | None:
        """The result for an observation that holds no answer (not attempted, not found, malformed), else None."""
        status = observed.get("status") if isinstance(observed, dict) else None
        if status == NOT_ATTEMPTED:
            return self.result(NOT_ATTEMPTED, f"`{self.answer}` is not answered yet. "
                                              f"`{self.name}.hint()` gives a hint.")
        if status == NOT_FOUND:
            return self.not_found()
        if status != "ran":
            return self.result(ERROR, "The check recorded nothing it could read.")
        return None


class FunctionExercise(Exercise):
    """Implement a function. The check calls it on ``n_cases`` fresh random inputs and compares with a reference.

    Subclasses define ``make_case``, ``call`` (run the answer on a case; runs where the learner's code runs),
    ``expected`` and ``variants`` (the reference's output and the outputs of the typical mistakes in ``mistakes``,
    computed in the checking process), and ``describe`` (the input, in words).
    """

    kind = "implement"
    n_cases = 4
    mistakes: dict = {}  # name -> what to tell the learner
    hint_on_error: dict = {}  # text in an exception message -> a hint to add

    def call(self, fn, case: dict):
        raise NotImplementedError

    def expected(self, case: dict):
        raise NotImplementedError

    def variants(self, case: dict) -> dict:
        """The outputs of the typical mistakes on ``case``: ``{mistake name: output}``."""
        return {}

    def describe(self, case: dict) -> str:
        return "the input"

    def same(self, got, want) -> bool:
        return close(got, want)

    def difference(self, case: dict, got, want) -> str:
        return tensor_difference(got, want)

    def assess(self, case: dict, got) -> Problem | None:
        """None if ``got`` is right for ``case``, else what is wrong."""
        want = self.expected(case)
        if self.same(got, want):
            return None
        mistake = next((name for name, value in self.variants(case).items() if self.same(got, value)), None)
        return Problem(self.difference(case, got, want), mistake)

    def consistent_mistake(self, cases: list, outputs: list) -> str | None:
        """The first typical mistake whose outputs equal the answer's on every case."""
        variants = [self.variants(case) for case in cases]
        wants = [self.expected(case) for case in cases]
        for name in self.mistakes:
            if all(self.same(got, v.get(name, want)) for got, v, want in zip(outputs, variants, wants)):
                return name
        return None

    def observe(self, answer, cases, *, time_limit=DEFAULT_TIME_LIMIT) -> dict:
        if is_unanswered(answer):
            return {"status": NOT_ATTEMPTED}
        if not callable(answer):
            return {"status": "ran", "callable": False, "type": type(answer).__name__}
        runs = []
        try:
            with time_limited(time_limit):
                for case in cases:
                    try:
                        runs.append({"value": encode(self.call(answer, case))})
                    except NotImplementedError:
                        return {"status": NOT_ATTEMPTED}
                    except (ChecksTimeout, KeyboardInterrupt):
                        raise
                    except BaseException as error:  # SystemExit included: a learner's sys.exit() fails the check
                        runs.append({"raised": describe_exception(error)})
                        break
        except ChecksTimeout:
            runs.append({"timeout": time_limit})
        return {"status": "ran", "callable": True, "runs": runs}

    def judge(self, cases, observed) -> Result:
        early = self.judge_status(observed)
        if early is not None:
            return early
        if not observed.get("callable"):
            return self.result(FAILED, f"`{self.answer}` should be a function; it is a {observed.get('type')}.")
        runs = observed.get("runs")
        if not isinstance(runs, list):
            return self.result(ERROR, "The check recorded nothing it could read.")
        outputs, problems = [], []
        for index, (case, run) in enumerate(zip(cases, runs)):
            if not isinstance(run, dict):
                return self.result(ERROR, "The check recorded nothing it could read.")
            if "timeout" in run:
                return self.result(FAILED, f"`{self.answer}` ran longer than the time limit ({run['timeout']} s) on "
                                           f"{self.describe(case)}. An endless loop?")
            if "raised" in run:
                message = str(run["raised"])
                extra = next((hint for text, hint in self.hint_on_error.items() if text in message), "")
                return self.result(FAILED, f"`{self.answer}` raised {message} on {self.describe(case)}. {extra}".strip())
            got = decode(run.get("value"))
            outputs.append(got)
            problem = self.assess(case, got)
            if problem is not None:
                problems.append((index, problem))
        if len(outputs) < len(cases):
            return self.result(ERROR, "The check stopped before it had run every input.")
        if not problems:
            return self.result(PASSED, f"`{self.answer}` gives the right result on {len(cases)} fresh random inputs.")
        index, problem = problems[0]
        mistake = self.consistent_mistake(cases, outputs) or problem.mistake
        lead = f"{self.mistakes[mistake]} " if mistake else ""
        return self.result(FAILED, f"{lead}For {self.describe(cases[index])}: {problem.detail}.", mistake)

    def failing_input(self, cases, observed):
        """The first case the answer got wrong (or raised on), as tensors or modules."""
        for case, run in zip(cases, observed.get("runs") or []):
            if not isinstance(run, dict) or "value" not in run or self.assess(case, decode(run["value"])):
                return self.case_tensors(case)
        return None

    def case_tensors(self, case: dict) -> dict:
        """A case with its number lists as tensors, for the learner to try by hand."""
        return {k: tensor_from(v) if isinstance(v, list) and v and not isinstance(v[0], (str, dict)) else v
                for k, v in case.items()}


class ValueExercise(Exercise):
    """Predict a number. The question states its parameters (``params``); ``expected`` computes the answer from
    them by running PyTorch. ``mistakes`` maps the numbers typical mistakes give to what to tell the learner."""

    kind = "predict"

    def __init__(self, key, title, answer, *, params: dict, hint: str, solution: str, rel_tol: float = 1e-3,
                 abs_tol: float = 1e-9):
        super().__init__(key, title, answer, hint=hint, solution=solution)
        self.params = dict(params)
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol

    def expected(self) -> float:
        raise NotImplementedError

    def mistakes(self) -> list:
        """``[(name, the number that mistake gives, what to tell the learner)]``."""
        return []

    def matches(self, got: float, want: float) -> bool:
        return math.isclose(got, want, rel_tol=self.rel_tol, abs_tol=self.abs_tol)

    def observe(self, answer, cases, *, time_limit=DEFAULT_TIME_LIMIT) -> dict:
        if is_unanswered(answer):
            return {"status": NOT_ATTEMPTED}
        return {"status": "ran", "value": encode(answer)}

    def judge(self, cases, observed) -> Result:
        early = self.judge_status(observed)
        if early is not None:
            return early
        got = decode(observed.get("value"))
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = float(got.reshape(()))
        if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isfinite(got):
            return self.result(FAILED, f"`{self.answer}` should be a number; it is {describe_value(got)}.")
        want = self.expected()
        if self.matches(got, want):
            return self.result(PASSED, f"{fmt(got)} is right.")
        for name, value, message in self.mistakes():
            if self.matches(got, value):
                return self.result(FAILED, f"{fmt(got)} is not right. {message}", name)
        return self.result(FAILED, f"{fmt(got)} is not right. `{self.name}.hint()` may help.")


class ChoiceExercise(Exercise):
    """Diagnose: choose the right letter(s). ``options`` maps each letter to its text; ``key`` holds the right
    letters; ``why`` explains, for every letter, why it is right or wrong."""

    kind = "diagnose"

    def __init__(self, key, title, answer, *, options: dict, correct: str, why: dict, hint: str):
        solution = f'{answer} = "{correct}"\n\n' + "\n".join(f"# {letter}: {why[letter]}" for letter in options)
        super().__init__(key, title, answer, hint=hint, solution=solution)
        self.options = dict(options)
        self.correct = frozenset(correct)
        self.why = dict(why)

    @property
    def multiple(self) -> bool:
        return len(self.correct) > 1

    def observe(self, answer, cases, *, time_limit=DEFAULT_TIME_LIMIT) -> dict:
        if is_unanswered(answer) or (isinstance(answer, str) and not answer.strip()):
            return {"status": NOT_ATTEMPTED}
        return {"status": "ran", "value": encode(answer)}

    def letters(self, value) -> set | None:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = "".join(value)
        if not isinstance(value, str):
            return None
        return {c for c in value.upper() if c.isalpha()}

    def judge(self, cases, observed) -> Result:
        early = self.judge_status(observed)
        if early is not None:
            return early
        chosen = self.letters(decode(observed.get("value")))
        valid = ", ".join(self.options)
        if not chosen or not chosen <= set(self.options):
            return self.result(FAILED, f"`{self.answer}` should be a string of letters from {valid}, e.g. \"A\".")
        if not self.multiple and len(chosen) > 1:
            return self.result(FAILED, "Choose one letter.")
        if chosen == self.correct:
            return self.result(PASSED, " ".join(self.why[c] for c in sorted(self.correct)))
        wrong = sorted(chosen - self.correct)
        missing = sorted(self.correct - chosen)
        notes = [f"{c} is not right: {self.why[c]}" for c in wrong]
        if self.multiple:
            notes += [f"{c} is missing: {self.why[c]}" for c in missing]
        return self.result(FAILED, " ".join(notes), mistake=",".join(wrong + [f"missing {c}" for c in missing]))


class ExerciseSet:
    """One chapter's exercises: ``q1, q2, q3 = ch01``; ``ch01.check_all()`` checks every answer in the notebook."""

    def __init__(self, key: str, title: str, exercises: list):
        self.key = key
        self.title = title
        self.exercises = list(exercises)
        for exercise in self.exercises:
            setattr(self, exercise.name, exercise)

    def __iter__(self):
        return iter(self.exercises)

    def __len__(self) -> int:
        return len(self.exercises)

    def __repr__(self) -> str:
        return f"<exercises {self.key}: {self.title}, {len(self)} exercises>"

    @property
    def max_points(self) -> float:
        return sum(e.points for e in self.exercises)

    def results(self, namespace: dict, *, time_limit: float | None = DEFAULT_TIME_LIMIT) -> list:
        """Every exercise checked against the answers in ``namespace`` (found by name)."""
        return [e.evaluate(namespace[e.answer], time_limit=time_limit) if e.answer in namespace else e.not_found()
                for e in self.exercises]

    def check_all(self, namespace: dict | None = None) -> None:
        """Check every exercise against the notebook's answers and print the points."""
        if namespace is None:
            namespace = inspect.currentframe().f_back.f_globals
        results = self.results(namespace)
        for result in results:
            print(f"{result}  [{result.points:g}/{result.max_points:g}]")
        print(f"Total: {sum(r.points for r in results):g} of {self.max_points:g} points.")


# --- helpers the cases share -------------------------------------------------------------------------------------


def randint(generator, low: int, high: int) -> int:
    """A random integer in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def uniform(generator, low: float, high: float, *shape) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)


def normal(generator, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def rounded(t: torch.Tensor, digits: int = 4):
    """A tensor as (nested) lists of numbers rounded to ``digits`` decimals: readable in messages."""
    return torch.round(t * 10**digits).div(10**digits).tolist()


def batch_and_features(generator, n_range=(4, 9), c_range=(2, 6)) -> tuple:
    """A batch size N and a feature count C that differ, so that statistics over the wrong axis show."""
    n, c = randint(generator, *n_range), randint(generator, *c_range)
    return (n + 1 if n == c else n), c


def feature_batch(generator, n: int, c: int) -> torch.Tensor:
    """An (N, C) batch whose features have different means and very different scales (one of them small)."""
    scale = uniform(generator, 0.5, 3.0, c)
    scale[randint(generator, 0, c - 1)] = float(uniform(generator, 0.08, 0.2, 1))
    return normal(generator, n, c) * scale + uniform(generator, -3.0, 3.0, c)


def normalise(x, mean, var, eps, gamma, beta):
    return gamma * (x - mean) / torch.sqrt(var + eps) + beta


SHORT_TRAINING = 20  # mini-batches of training in ch04.q5's question

SIZE_HINT = "Check which axis your statistics run over: one value per feature, over the batch."


# --- chapter 1: BatchNorm in an MLP ------------------------------------------------------------------------------


class BatchNormForward(FunctionExercise):
    """``batchnorm_forward(x, gamma, beta, eps=1e-5)`` for x of shape (N, C), in train mode."""

    mistakes = {
        "unbiased variance": "You normalised with the unbiased variance (dividing by N - 1). In train mode BatchNorm "
                             "normalises with the biased batch variance, dividing by N: "
                             "x.var(dim=0, unbiased=False).",
        "eps outside the square root": "eps is outside the square root: BatchNorm divides by sqrt(var + eps), "
                                       "not by sqrt(var) + eps.",
        "statistics over the wrong axis": "Statistics over the wrong axis: you normalised each example over its "
                                          "features (dim=1). BatchNorm1d keeps one mean and one variance per "
                                          "feature, computed over the batch (dim=0).",
        "statistics over the whole tensor": "One mean and one variance for the whole tensor: BatchNorm1d keeps one "
                                            "per feature (column), computed over the batch (dim=0).",
        "eps argument ignored": "Your function ignores its eps argument (a fixed eps, or none): use the eps it is "
                                "given, inside the square root.",
        "gamma and beta swapped": "gamma and beta are swapped: gamma scales the normalised value and beta shifts it, "
                                  "gamma * x_hat + beta.",
        "gamma and beta missing": "gamma and beta are missing: the output is gamma * x_hat + beta, not x_hat.",
    }
    hint_on_error = {"size of tensor": SIZE_HINT}

    def make_case(self, generator, index):
        n, c = batch_and_features(generator)
        return {
            "x": feature_batch(generator, n, c).tolist(),
            "gamma": (1 + 0.5 * normal(generator, c)).tolist(),
            "beta": normal(generator, c).tolist(),
            "eps": None if index == 0 else float(uniform(generator, 0.05, 0.5, 1)),
        }

    def call(self, fn, case):
        x, gamma, beta = (tensor_from(case[k]) for k in ("x", "gamma", "beta"))
        if case["eps"] is None:
            return fn(x, gamma, beta)
        return fn(x, gamma, beta, eps=case["eps"])

    def parts(self, case):
        eps = 1e-5 if case["eps"] is None else case["eps"]
        return tensor_from(case["x"]), tensor_from(case["gamma"]), tensor_from(case["beta"]), eps

    def expected(self, case):
        x, gamma, beta, eps = self.parts(case)
        return F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)

    def variants(self, case):
        x, gamma, beta, eps = self.parts(case)
        mean, var = x.mean(0), x.var(0, unbiased=False)
        x_hat = (x - mean) / torch.sqrt(var + eps)
        return {
            "unbiased variance": normalise(x, mean, x.var(0, unbiased=True), eps, gamma, beta),
            "eps outside the square root": gamma * (x - mean) / (torch.sqrt(var) + eps) + beta,
            "statistics over the wrong axis": normalise(
                x, x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True), eps, gamma, beta),
            "statistics over the whole tensor": normalise(x, x.mean(), x.var(unbiased=False), eps, gamma, beta),
            "eps argument ignored": normalise(x, mean, var, 1e-5, gamma, beta),
            "gamma and beta swapped": beta * x_hat + gamma,
            "gamma and beta missing": x_hat,
        }

    def same(self, got, want):
        return close(got, want, rtol=1e-4, atol=1e-5)

    def describe(self, case):
        n, c = len(case["x"]), len(case["x"][0])
        eps = "the default eps" if case["eps"] is None else f"eps={case['eps']:.3g}"
        return f"x of shape ({n}, {c}) and {eps}"


class BatchNorm2dForward(FunctionExercise):
    """``batchnorm2d_forward(x, gamma, beta, eps=1e-5)`` for x of shape (N, C, H, W), in train mode."""

    mistakes = {
        "statistics over the batch axis only": "Statistics over the wrong axes: you kept one mean per pixel "
                                               "(over dim=0 alone), as if every pixel were a feature. BatchNorm2d "
                                               "keeps one mean and one variance per channel, over N, H and W: "
                                               "dim=(0, 2, 3).",
        "statistics per example and channel": "Statistics over the wrong axes: you normalised each example's "
                                              "channel over H and W alone (dim=(2, 3)). BatchNorm2d includes the "
                                              "batch: dim=(0, 2, 3).",
        "statistics per example": "Statistics over the wrong axes: you normalised each example over C, H and W "
                                  "(dim=(1, 2, 3)). BatchNorm2d keeps one mean and variance per channel, over "
                                  "N, H and W: dim=(0, 2, 3).",
        "unbiased variance": "You normalised with the unbiased variance (dividing by n - 1). BatchNorm normalises "
                             "with the biased variance: unbiased=False.",
        "eps outside the square root": "eps is outside the square root: divide by sqrt(var + eps).",
        "eps argument ignored": "Your function ignores its eps argument: use the eps it is given.",
    }
    hint_on_error = {
        "size of tensor": "Line the statistics and gamma, beta up with (N, C, H, W): keepdim=True for the "
                          "statistics, and gamma.view(1, -1, 1, 1) for the (C,) parameters.",
    }

    def make_case(self, generator, index):
        n, c = randint(generator, 2, 4), randint(generator, 2, 4)
        h, w = randint(generator, 2, 5), randint(generator, 2, 5)
        h, w = (h + 2 if h == c else h), (w + 3 if w == c else w)  # C differs from H and W: broadcasting errors show
        scale = uniform(generator, 0.2, 2.0, 1, c, 1, 1)
        x = normal(generator, n, c, h, w) * scale + uniform(generator, -2.0, 2.0, 1, c, 1, 1)
        return {
            "x": x.tolist(),
            "gamma": (1 + 0.5 * normal(generator, c)).tolist(),
            "beta": normal(generator, c).tolist(),
            "eps": None if index == 0 else float(uniform(generator, 0.05, 0.5, 1)),
        }

    call = BatchNormForward.call
    parts = BatchNormForward.parts
    expected = BatchNormForward.expected
    same = BatchNormForward.same

    def variants(self, case):
        x, gamma, beta, eps = self.parts(case)
        g, b = gamma.view(1, -1, 1, 1), beta.view(1, -1, 1, 1)

        def over(dims, unbiased=False, eps_=eps):
            return normalise(x, x.mean(dims, keepdim=True), x.var(dims, unbiased=unbiased, keepdim=True), eps_, g, b)

        mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
        return {
            "statistics over the batch axis only": over((0,)),
            "statistics per example and channel": over((2, 3)),
            "statistics per example": over((1, 2, 3)),
            "unbiased variance": over((0, 2, 3), unbiased=True),
            "eps outside the square root": g * (x - mean) / (torch.sqrt(var) + eps) + b,
            "eps argument ignored": over((0, 2, 3), eps_=1e-5),
        }

    def describe(self, case):
        x = tensor_from(case["x"])
        eps = "the default eps" if case["eps"] is None else f"eps={case['eps']:.3g}"
        return f"x of shape {tuple(x.shape)} and {eps}"


class LectureParameters(ValueExercise):
    """Learnable parameters of the lecture's MLP."""

    def model(self, **changes):
        from bnlab.models import MLPConfig, build_mlp  # the checking side only

        return build_mlp(MLPConfig(hidden=tuple(self.params["hidden"]), placement="before", **changes))

    def expected(self):
        return float(sum(p.numel() for p in self.model(bias=False).parameters()))

    def mistakes(self):
        model = self.model(bias=False)
        want = self.expected()
        buffers = sum(b.numel() for name, b in model.named_buffers() if not name.endswith("num_batches_tracked"))
        counters = sum(b.numel() for name, b in model.named_buffers() if name.endswith("num_batches_tracked"))
        hidden_biases = sum(self.params["hidden"])
        bn_params = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm1d) for p in m.parameters())
        buffer_message = ("running_mean and running_var are buffers, not parameters: BatchNorm updates them itself "
                          "and the optimiser never sees them.")
        return [
            ("buffers counted", want + buffers, buffer_message),
            ("buffers counted", want + buffers + counters, buffer_message),
            ("hidden biases counted", want + hidden_biases,
             "The hidden Linear layers have bias=False: the BatchNorm after them makes a bias redundant."),
            ("BatchNorm parameters left out", want - bn_params,
             "Each BatchNorm1d(C) has 2C learnable parameters: its weight (gamma) and bias (beta)."),
            ("output bias left out", want - 10,
             "The output layer Linear(45, 10) has no BatchNorm after it and keeps its bias."),
        ]

    def matches(self, got, want):
        return abs(got - want) < 0.5


# --- chapter 2: placement ------------------------------------------------------------------------------------------


def describe_layers(result) -> list | dict:
    """The layers of a block, in order, as dicts: what the placement exercise records."""
    if isinstance(result, (nn.Sequential, nn.ModuleList, list, tuple)):
        layers = []
        for item in result:
            described = describe_layers(item)
            if isinstance(described, dict):
                return described
            layers += described
        return layers
    if not isinstance(result, nn.Module):
        return {"__object__": type(result).__name__}
    layer = {"type": type(result).__name__}
    if isinstance(result, nn.Linear):
        layer.update(n_in=result.in_features, n_out=result.out_features)
    elif isinstance(result, nn.modules.batchnorm._BatchNorm):
        layer.update(num_features=result.num_features)
    elif isinstance(result, nn.Dropout):
        layer.update(p=float(result.p))
    elif list(result.children()):
        return {"__object__": f"custom module {type(result).__name__} (return an nn.Sequential, so the order of the "
                              f"layers shows)"}
    return [layer]


class HiddenBlock(FunctionExercise):
    """``hidden_block(n_in, n_out, placement, dropout=0.0)``: the layers of one hidden block."""

    n_cases = 6
    mistakes = {
        "placement swapped": "The placements are swapped: 'before' means BatchNorm before the activation "
                             "(Linear → BatchNorm1d → ReLU), 'after' means after it (Linear → ReLU → BatchNorm1d).",
        "dropout not last": "Dropout goes last in the block, after both BatchNorm and the activation.",
        "dropout missing": "With dropout > 0 the block ends with nn.Dropout(dropout); with dropout=0 it has none.",
        "wrong dropout probability": "nn.Dropout's probability should be the dropout argument.",
        "wrong sizes": "Linear(n_in, n_out) maps n_in features to n_out, and BatchNorm1d(n_out) normalises those "
                       "n_out features.",
    }

    def make_case(self, generator, index):
        placement = ("before", "after")[index % 2]
        dropout = 0.0 if index < 2 else round(float(uniform(generator, 0.1, 0.6, 1)), 2)
        return {"n_in": randint(generator, 3, 40), "n_out": randint(generator, 3, 40), "placement": placement,
                "dropout": dropout}

    def call(self, fn, case):
        if case["dropout"] == 0.0 and case["n_in"] % 2:
            result = fn(case["n_in"], case["n_out"], case["placement"])  # the default dropout
        else:
            result = fn(case["n_in"], case["n_out"], case["placement"], dropout=case["dropout"])
        return describe_layers(result)

    @staticmethod
    def layers(n_in, n_out, placement, dropout):
        linear = {"type": "Linear", "n_in": n_in, "n_out": n_out}
        bn, relu = {"type": "BatchNorm1d", "num_features": n_out}, {"type": "ReLU"}
        layers = [linear, bn, relu] if placement == "before" else [linear, relu, bn]
        return layers + ([{"type": "Dropout", "p": dropout}] if dropout > 0 else [])

    def expected(self, case):
        return self.layers(case["n_in"], case["n_out"], case["placement"], case["dropout"])

    @staticmethod
    def tidy(layers):
        """Leave out what changes nothing: nn.Identity and nn.Dropout(0)."""
        if not isinstance(layers, list):
            return layers
        return [l for l in layers if isinstance(l, dict) and l.get("type") != "Identity"
                and not (l.get("type") == "Dropout" and l.get("p") == 0)]

    def same(self, got, want):
        return self.tidy(got) == want

    def assess(self, case, got):
        want = self.expected(case)
        layers = self.tidy(got)
        if layers == want:
            return None
        if not isinstance(layers, list):
            return Problem(f"expected an nn.Sequential of layers, got {describe_value(layers)}")
        names = [l.get("type") for l in layers]
        shown = " → ".join(str(n) for n in names) or "no layers"
        detail = f"expected {' → '.join(l['type'] for l in want)}, got {shown}"
        other = "after" if case["placement"] == "before" else "before"
        if [l["type"] for l in self.layers(1, 1, other, case["dropout"])] == names:
            return Problem(detail, "placement swapped")
        if "Dropout" in names and names[-1] != "Dropout":
            return Problem(detail, "dropout not last")
        if case["dropout"] > 0 and "Dropout" not in names:
            return Problem(detail, "dropout missing")
        if names == [l["type"] for l in want]:
            dropouts = [l for l in layers if l["type"] == "Dropout"]
            if dropouts and dropouts[0].get("p") != case["dropout"]:
                return Problem(f"expected Dropout(p={case['dropout']}), got Dropout(p={dropouts[0].get('p')})",
                               "wrong dropout probability")
            return Problem(f"expected {want}, got {layers}", "wrong sizes")
        return Problem(detail)

    def consistent_mistake(self, cases, outputs):
        return None

    def describe(self, case):
        return (f"hidden_block({case['n_in']}, {case['n_out']}, {case['placement']!r}, "
                f"dropout={case['dropout']})")


def sample_std(values) -> float:
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


class DiffersBeyondNoise(FunctionExercise):
    """``differs_beyond_noise(a, b)``: is |mean(a) - mean(b)| larger than the larger sample standard deviation?

    The cases put the difference between the thresholds that the typical mistakes use, so that each mistake gives
    its own pattern of answers."""

    n_cases = 7
    mistakes = {
        "signed difference": "Compare the size of the difference, |mean(a) - mean(b)|: a variant can be better or "
                             "worse.",
        "population standard deviation": "Use the sample standard deviation (divide by n - 1, as "
                                         "statistics.stdev and torch.std do), not the population one (divide by n).",
        "smaller spread": "Compare with the larger of the two standard deviations, not the smaller.",
        "sum of spreads": "Compare with the larger of the two standard deviations, not their sum.",
        "variance instead of standard deviation": "Compare with a standard deviation, not a variance: the spread is "
                                                  "in the same units as the accuracies.",
    }

    def make_case(self, generator, index):
        n = randint(generator, 3, 6)
        large = float(uniform(generator, 0.1, 0.25, 1))  # below 0.3: large**2 < small, variances show
        small = large * float(uniform(generator, 0.3, 0.5, 1))  # clearly different spreads
        sa, sb = (small, large) if randint(generator, 0, 1) else (large, small)

        def with_std(std):  # n values with exactly this sample standard deviation
            z = normal(generator, n)
            z = (z - z.mean()) / z.std()
            return [97.0 + std * float(v) for v in z]

        a, b = with_std(sa), with_std(sb)
        population = large * math.sqrt((n - 1) / n)
        gaps = [
            3 * (sa + sb),  # clearly larger
            0.4 * min(small, large ** 2),  # clearly not
            -3 * (sa + sb),  # clearly larger, b ahead
            (population + large) / 2,  # between the population and the sample spread
            (small + large) / 2,  # between the smaller and the larger spread
            (large + sa + sb) / 2,  # between the larger spread and the sum
            (large ** 2 + small) / 2,  # between the larger variance and the smaller spread
        ]
        gap = gaps[index % len(gaps)]
        return {"a": [round(v + gap, 10) for v in a], "b": [round(v, 10) for v in b]}

    def call(self, fn, case):
        return fn(list(case["a"]), list(case["b"]))

    @staticmethod
    def verdict(a, b, *, spread=max, std=sample_std, signed=False) -> bool:
        difference = sum(a) / len(a) - sum(b) / len(b)
        return (difference if signed else abs(difference)) > spread(std(a), std(b))

    def expected(self, case):
        return self.verdict(case["a"], case["b"])

    def variants(self, case):
        a, b = case["a"], case["b"]

        def population(values):
            return sample_std(values) * math.sqrt((len(values) - 1) / len(values))

        return {
            "signed difference": self.verdict(a, b, signed=True),
            "population standard deviation": self.verdict(a, b, std=population),
            "smaller spread": self.verdict(a, b, spread=min),
            "sum of spreads": self.verdict(a, b, spread=lambda x, y: x + y),
            "variance instead of standard deviation": self.verdict(a, b, std=lambda v: sample_std(v) ** 2),
        }

    @staticmethod
    def as_bool(value):
        if isinstance(value, bool):
            return value
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return bool(value.item())
        return None

    def same(self, got, want):
        return self.as_bool(got) is want

    def assess(self, case, got):
        if self.as_bool(got) is None:
            return Problem(f"expected True or False, got {describe_value(got)}")
        return super().assess(case, got)

    def difference(self, case, got, want):
        a, b = case["a"], case["b"]
        gap = abs(sum(a) / len(a) - sum(b) / len(b))
        return (f"the means differ by {fmt(gap)}, the standard deviations are {fmt(sample_std(a))} and "
                f"{fmt(sample_std(b))}: expected {want}, got {self.as_bool(got)}")

    def describe(self, case):
        return f"a = {[round(v, 3) for v in case['a']]}, b = {[round(v, 3) for v in case['b']]}"


# --- chapter 3: the redundant bias -------------------------------------------------------------------------------


class ParametersSaved(ValueExercise):
    def model(self, bias):
        from bnlab.models import MLPConfig, build_mlp

        return build_mlp(MLPConfig(hidden=tuple(self.params["hidden"]), placement="before", bias=bias))

    @staticmethod
    def count(model):
        return sum(p.numel() for p in model.parameters())

    def expected(self):
        return float(self.count(self.model(True)) - self.count(self.model(False)))

    def mistakes(self):
        want = self.expected()
        first, second = self.params["hidden"]
        return [
            ("output bias counted", want + 10,
             "The output layer keeps its bias: no BatchNorm follows it, so that bias is not redundant."),
            ("one layer only", float(first), "Both hidden Linear layers are followed by BatchNorm: both lose their bias."),
            ("one layer only", float(second), "Both hidden Linear layers are followed by BatchNorm: both lose their bias."),
            ("BatchNorm parameters counted", 2 * want,
             "bias=False removes the Linear layers' biases; BatchNorm's gamma and beta stay."),
        ]

    def matches(self, got, want):
        return abs(got - want) < 0.5


class FoldBatchNorm(FunctionExercise):
    """``fold_batchnorm(linear, bn)`` -> one nn.Linear equal to bn(linear(x)) in eval mode."""

    n_cases = 5
    mistakes = {
        "eps left out": "eps is missing: the eval-mode BatchNorm divides by sigma = sqrt(running_var + eps).",
        "eps outside the square root": "eps is outside the square root: sigma = sqrt(running_var + eps).",
        "variance instead of standard deviation": "You divided by the variance: divide by the standard deviation "
                                                  "sigma = sqrt(running_var + eps).",
        "Linear bias dropped": "The Linear layer's own bias b is missing: b' = gamma * (b - mu) / sigma + beta.",
        "beta dropped": "beta is missing from the folded bias: b' = gamma * (b - mu) / sigma + beta.",
        "running mean not subtracted": "The running mean is missing: b' = gamma * (b - mu) / sigma + beta.",
    }
    hint_on_error = {
        "size of tensor": "gamma / sigma has one entry per output feature: it scales the rows of W, "
                          "W * (gamma / sigma)[:, None].",
        "NoneType": "Some Linear layers have no bias (linear.bias is None): then b = 0.",
        "dtype": "Keep the folded layer's dtype equal to the input layer's (copy into it with torch.no_grad()).",
    }

    def make_case(self, generator, index):
        n_in = randint(generator, 3, 6)
        n_out = randint(generator, 2, 5)
        n_out = n_out + 1 if n_out == n_in else n_out  # not square: W's rows and columns cannot be confused
        has_bias = index != 1 and (index == 0 or bool(randint(generator, 0, 1)))
        return {
            "W": (normal(generator, n_out, n_in) * 0.7).tolist(),
            "b": normal(generator, n_out).tolist() if has_bias else None,
            "gamma": (1 + 0.5 * normal(generator, n_out)).tolist(),
            "beta": normal(generator, n_out).tolist(),
            "mean": normal(generator, n_out).tolist(),
            "var": uniform(generator, 0.05, 2.0, n_out).tolist(),
            "eps": 1e-5 if index == 2 else float(uniform(generator, 0.05, 0.5, 1)),
            "x": normal(generator, 4, n_in).tolist(),
        }

    def call(self, fn, case):
        linear, bn = self.modules(case)
        result = fn(linear, bn)
        if not isinstance(result, nn.Module):
            return {"linear": False, "type": type(result).__name__}
        parameter = next(iter(result.parameters()), None)
        x = torch.tensor(case["x"], dtype=parameter.dtype if parameter is not None else torch.float32)
        result.eval()
        with torch.no_grad():
            y = result(x)
        return {"linear": isinstance(result, nn.Linear), "type": type(result).__name__, "y": y}

    @staticmethod
    def modules(case):
        """The case's Linear layer and eval-mode BatchNorm1d, in float32 as a learner builds them."""
        n_out, n_in = len(case["W"]), len(case["W"][0])
        linear = nn.Linear(n_in, n_out, bias=case["b"] is not None)
        bn = nn.BatchNorm1d(n_out, eps=case["eps"])
        with torch.no_grad():
            linear.weight.copy_(torch.tensor(case["W"]))
            if case["b"] is not None:
                linear.bias.copy_(torch.tensor(case["b"]))
            bn.weight.copy_(torch.tensor(case["gamma"]))
            bn.bias.copy_(torch.tensor(case["beta"]))
            bn.running_mean.copy_(torch.tensor(case["mean"]))
            bn.running_var.copy_(torch.tensor(case["var"]))
        return linear.eval(), bn.eval()

    def fold(self, case, *, sigma=None, b=None, beta=None, mean=None):
        W = tensor_from(case["W"])
        b = (tensor_from(case["b"]) if case["b"] is not None else torch.zeros(len(case["W"]), dtype=torch.float64)) \
            if b is None else b
        gamma = tensor_from(case["gamma"])
        beta = tensor_from(case["beta"]) if beta is None else beta
        mean = tensor_from(case["mean"]) if mean is None else mean
        sigma = torch.sqrt(tensor_from(case["var"]) + case["eps"]) if sigma is None else sigma
        weight = W * (gamma / sigma)[:, None]
        bias = gamma * (b - mean) / sigma + beta
        return tensor_from(case["x"]) @ weight.T + bias

    def expected(self, case):
        return self.fold(case)

    def variants(self, case):
        var, eps = tensor_from(case["var"]), case["eps"]
        zeros = torch.zeros(len(case["W"]), dtype=torch.float64)
        found = {
            "eps left out": self.fold(case, sigma=torch.sqrt(var)),
            "eps outside the square root": self.fold(case, sigma=torch.sqrt(var) + eps),
            "variance instead of standard deviation": self.fold(case, sigma=var + eps),
            "beta dropped": self.fold(case, beta=zeros),
            "running mean not subtracted": self.fold(case, mean=zeros),
        }
        if case["b"] is not None:
            found["Linear bias dropped"] = self.fold(case, b=zeros)
        return found

    def output(self, got):
        return got.get("y") if isinstance(got, dict) else None

    def same(self, got, want):
        return close(self.output(got), want, rtol=1e-4, atol=1e-4)

    def assess(self, case, got):
        if not isinstance(got, dict) or not got.get("linear"):
            kind = got.get("type") if isinstance(got, dict) else "nothing"
            return Problem(f"fold_batchnorm should return one nn.Linear layer (BatchNorm folded into it), "
                           f"it returned a {kind}")
        return super().assess(case, got)

    def difference(self, case, got, want):
        return "the folded layer's output " + tensor_difference(self.output(got), want)

    def describe(self, case):
        n_out, n_in = len(case["W"]), len(case["W"][0])
        bias = "with a bias" if case["b"] is not None else "without a bias (bias=False)"
        return f"Linear({n_in}, {n_out}) {bias} and BatchNorm1d({n_out}, eps={case['eps']:.3g})"


LAYER_FACTORIES = {
    "Flatten": lambda: nn.Flatten(),
    "ReLU": lambda: nn.ReLU(),
    "Dropout": lambda p=0.5: nn.Dropout(p),
    "Linear": lambda n_in, n_out, bias=True: nn.Linear(n_in, n_out, bias=bias),
    "BatchNorm1d": lambda n: nn.BatchNorm1d(n),
}


def build_sequential(spec: list) -> nn.Sequential:
    """An nn.Sequential from ``[[layer type, *arguments], ...]`` (the types in ``LAYER_FACTORIES``)."""
    return nn.Sequential(*(LAYER_FACTORIES[kind](*args) for kind, *args in spec))


def random_mlp_spec(generator, *, placements: list, flatten: bool, dropout: bool) -> list:
    spec = [["Flatten"]] if flatten else []
    width = randint(generator, 4, 12)
    for placement in placements:
        out = randint(generator, 4, 12)
        spec.append(["Linear", width, out, bool(randint(generator, 0, 1))])
        if placement == "before":
            spec += [["BatchNorm1d", out], ["ReLU"]]
        elif placement == "after":
            spec += [["ReLU"], ["BatchNorm1d", out]]
        else:
            spec += [["ReLU"]]
        if dropout:
            spec.append(["Dropout", 0.2])
        width = out
    spec.append(["Linear", width, randint(generator, 2, 5), True])
    return spec


class RedundantBiases(FunctionExercise):
    """``redundant_biases(model)`` -> the indices of the Linear layers whose bias is redundant."""

    mistakes = {
        "BatchNorm after the activation counted": "A Linear layer followed by ReLU and only then by BatchNorm keeps "
                                                  "its bias: the ReLU in between is not linear, so the bias changes "
                                                  "which values pass it, and the output changes.",
        "every Linear before a BatchNorm": "Only a BatchNorm directly after the Linear layer makes its bias "
                                           "redundant.",
        "BatchNorm indices": "Return the indices of the Linear layers (model[i] is the Linear layer), not those of "
                             "the BatchNorm layers after them.",
        "output layer counted": "The output layer has no BatchNorm after it: its bias matters.",
    }

    PATTERNS = (("before", "after"), ("none", "before"), ("after", "none", "before"), ("none", "after", "before"))

    def make_case(self, generator, index):
        placements = list(self.PATTERNS[index % len(self.PATTERNS)])
        placements += [("before", "after", "none")[randint(generator, 0, 2)] for _ in range(randint(generator, 0, 1))]
        return {"spec": random_mlp_spec(generator, placements=placements, flatten=bool(randint(generator, 0, 1)),
                                        dropout=bool(randint(generator, 0, 1)))}

    def call(self, fn, case):
        return fn(build_sequential(case["spec"]))

    @staticmethod
    def types(case):
        return [layer[0] for layer in case["spec"]]

    def expected(self, case):
        t = self.types(case)
        return [i for i in range(len(t) - 1) if t[i] == "Linear" and t[i + 1] == "BatchNorm1d"]

    def variants(self, case):
        t = self.types(case)
        linear = [i for i, kind in enumerate(t) if kind == "Linear"]
        want = self.expected(case)
        return {
            "BatchNorm after the activation counted": sorted(
                want + [i for i in linear if t[i + 1: i + 3] == ["ReLU", "BatchNorm1d"]]),
            "every Linear before a BatchNorm": [i for i in linear if "BatchNorm1d" in t[i + 1:]],
            "BatchNorm indices": [i + 1 for i in want],
            "output layer counted": want + [linear[-1]],
        }

    @staticmethod
    def indices(value):
        if isinstance(value, torch.Tensor) and value.dim() <= 1:
            value = value.flatten().tolist()
        if not isinstance(value, list):
            return None
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() for v in value):
            return None
        return sorted({int(v) for v in value})

    def same(self, got, want):
        return self.indices(got) == want

    def difference(self, case, got, want):
        found = self.indices(got)
        if found is None:
            return f"expected a list of indices, got {describe_value(got)}"
        return f"expected {want}, got {found}"

    def describe(self, case):
        return "the model " + " → ".join(
            f"[{i}] {kind}" + (f"({', '.join(str(a) for a in args[:2])})" if kind == "Linear" else "")
            for i, (kind, *args) in enumerate(case["spec"]))

    def case_tensors(self, case):
        return {"model": build_sequential(case["spec"])}


# --- chapter 4: running statistics --------------------------------------------------------------------------------


class RunningStatsUpdate(FunctionExercise):
    """``update_running_stats(running_mean, running_var, x, momentum=0.1)`` -> (new running_mean, new running_var)."""

    mistakes = {
        "momentum on the wrong term and biased variance in running_var": (
            "Two mistakes: momentum is on the wrong term, and running_var got the biased variance. PyTorch computes "
            "running = (1 - momentum) * running + momentum * batch_statistic, and running_var stores the unbiased "
            "batch variance (dividing by N - 1)."),
        "momentum on the wrong term": "Momentum is on the wrong term: PyTorch computes running = (1 - momentum) * "
                                      "running + momentum * batch_statistic, so the new batch gets weight momentum "
                                      "(0.1 by default) and the old value 1 - momentum.",
        "biased variance in running_var": "running_var stores the unbiased batch variance (dividing by N - 1, "
                                          "x.var(dim=0, unbiased=True)), although the normalisation itself uses "
                                          "the biased one.",
        "statistics over the whole tensor": "One mean for the whole batch: the running statistics hold one value per "
                                            "feature, computed over the batch (dim=0).",
        "momentum argument ignored": "Your function ignores its momentum argument: use the momentum it is given.",
    }
    hint_on_error = {"size of tensor": SIZE_HINT}

    def make_case(self, generator, index):
        n, c = batch_and_features(generator, n_range=(3, 8))
        return {
            "running_mean": normal(generator, c).tolist(),
            "running_var": uniform(generator, 0.5, 2.0, c).tolist(),
            "x": feature_batch(generator, n, c).tolist(),
            "momentum": None if index == 0 else float(uniform(generator, 0.05, 0.3, 1)),
        }

    def call(self, fn, case):
        mean, var, x = (tensor_from(case[k]) for k in ("running_mean", "running_var", "x"))
        if case["momentum"] is None:
            result = fn(mean, var, x)
        else:
            result = fn(mean, var, x, momentum=case["momentum"])
        if isinstance(result, (tuple, list)) and len(result) == 2:
            return {"mean": result[0], "var": result[1]}
        return {"not a pair": result}

    def expected(self, case):
        x = tensor_from(case["x"])
        momentum = 0.1 if case["momentum"] is None else case["momentum"]
        bn = nn.BatchNorm1d(x.shape[1], momentum=momentum).double().train()
        with torch.no_grad():
            bn.running_mean.copy_(tensor_from(case["running_mean"]))
            bn.running_var.copy_(tensor_from(case["running_var"]))
            bn(x)
        return {"mean": bn.running_mean.clone(), "var": bn.running_var.clone()}

    def variants(self, case):
        x, mean, var = (tensor_from(case[k]) for k in ("x", "running_mean", "running_var"))
        m = 0.1 if case["momentum"] is None else case["momentum"]

        def update(old, new, weight=m, swapped=False):
            return weight * old + (1 - weight) * new if swapped else (1 - weight) * old + weight * new

        unbiased, biased = x.var(0, unbiased=True), x.var(0, unbiased=False)
        return {
            "momentum on the wrong term and biased variance in running_var": {
                "mean": update(mean, x.mean(0), swapped=True), "var": update(var, biased, swapped=True)},
            "momentum on the wrong term": {
                "mean": update(mean, x.mean(0), swapped=True), "var": update(var, unbiased, swapped=True)},
            "biased variance in running_var": {"mean": update(mean, x.mean(0)), "var": update(var, biased)},
            "statistics over the whole tensor": {
                "mean": update(mean, x.mean().expand_as(mean)), "var": update(var, x.var().expand_as(var))},
            "momentum argument ignored": {"mean": update(mean, x.mean(0), 0.1), "var": update(var, unbiased, 0.1)},
        }

    def same(self, got, want):
        return (isinstance(got, dict) and "mean" in got and close(got["mean"], want["mean"])
                and close(got.get("var"), want["var"]))

    def difference(self, case, got, want):
        if not isinstance(got, dict) or "mean" not in got:
            value = got.get("not a pair") if isinstance(got, dict) else got
            return f"expected a pair (running_mean, running_var), got {describe_value(value)}"
        if not close(got["mean"], want["mean"]):
            return "running_mean: " + tensor_difference(got["mean"], want["mean"])
        return "running_var: " + tensor_difference(got.get("var"), want["var"])

    def describe(self, case):
        n, c = len(case["x"]), len(case["x"][0])
        momentum = "the default momentum" if case["momentum"] is None else f"momentum={case['momentum']:.3g}"
        return f"x of shape ({n}, {c}) and {momentum}"


class RunningAfterSteps(ValueExercise):
    """running_mean or running_var of a fresh BatchNorm1d(1) after k identical batches."""

    def __init__(self, key, title, answer, *, statistic: str, **kwargs):
        super().__init__(key, title, answer, **kwargs)
        self.statistic = statistic

    def run(self, *, momentum=None, k=None, unbiased=True, start=None):
        p = self.params
        momentum = p["momentum"] if momentum is None else momentum
        k = p["k"] if k is None else k
        batch = torch.tensor(p["batch"], dtype=torch.float64)
        mean = 0.0 if start is None else start
        var = 1.0 if start is None else start
        for _ in range(k):
            mean = (1 - momentum) * mean + momentum * float(batch.mean())
            var = (1 - momentum) * var + momentum * float(batch.var(unbiased=unbiased))
        return mean if self.statistic == "mean" else var

    def expected(self):
        p = self.params
        bn = nn.BatchNorm1d(1, momentum=p["momentum"]).double().train()
        batch = torch.tensor(p["batch"], dtype=torch.float64).view(-1, 1)
        with torch.no_grad():
            for _ in range(p["k"]):
                bn(batch)
        buffer = bn.running_mean if self.statistic == "mean" else bn.running_var
        return float(buffer)

    def mistakes(self):
        p = self.params
        keep = (1 - p["momentum"]) ** p["k"]
        found = [
            ("momentum on the wrong term", self.run(momentum=1 - p["momentum"]),
             f"That is what momentum on the wrong term gives. PyTorch weights the new batch by momentum "
             f"({p['momentum']}) and the old value by 1 - momentum, so after k updates the start value still has "
             f"weight (1 - momentum)^k = {keep:.3f}."),
            ("steps miscounted", self.run(k=p["k"] - 1), "Count the updates: one per batch, k in all."),
            ("steps miscounted", self.run(k=p["k"] + 1), "Count the updates: one per batch, k in all."),
        ]
        if self.statistic == "var":
            found += [
                ("biased variance in running_var", self.run(unbiased=False),
                 "running_var stores the unbiased batch variance (dividing by N - 1), not the biased one."),
                ("start value 0", self.run(start=0.0), "running_var starts at 1, not 0."),
            ]
        else:
            found.append(("start value ignored", float(torch.tensor(p["batch"]).mean()),
                          f"running_mean starts at 0, and after k updates that start value still has weight "
                          f"(1 - momentum)^k = {keep:.3f}."))
        return found


class KerasMomentum(ValueExercise):
    def expected(self):
        return 1.0 - self.params["keras_momentum"]

    def mistakes(self):
        return [
            ("Keras value copied", self.params["keras_momentum"],
             "Keras's momentum weights the old running value; PyTorch's momentum weights the new batch statistic. "
             "The same average needs 1 minus the Keras value."),
            ("PyTorch default", 0.1, "0.1 is PyTorch's default, which is not the same average as Keras's default."),
        ]

    def matches(self, got, want):
        return math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)


# --- chapter 5: eval mode ----------------------------------------------------------------------------------------


def small_bn_model(case: dict, *, dtype=torch.float32) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Linear, with the case's weights and running statistics."""
    n_in, hidden, n_out = case["sizes"]
    model = nn.Sequential(nn.Linear(n_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, n_out))
    model.to(dtype)
    with torch.no_grad():
        for tensor, values in zip(model.state_dict().values(), case["state"]):
            tensor.copy_(torch.tensor(values, dtype=tensor.dtype))
    return model


class PredictInEvalMode(FunctionExercise):
    """``predict(model, x)``: eval-mode outputs, no gradients, the model left as it was."""

    mistakes = {
        "eval() forgotten": "Forgetting eval(): the model ran in train mode, so BatchNorm normalised with the "
                            "statistics of this batch (and updated its running statistics) instead of using the "
                            "running statistics.",
        "mode not restored": "The model was left in a different mode: remember model.training before, and put it "
                             "back afterwards with model.train(was_training).",
        "running statistics changed": "The running statistics changed: a forward pass in train mode updates them, "
                                      "even under torch.no_grad().",
        "gradients tracked": "The output tracks gradients: compute it inside torch.no_grad() (or "
                             "torch.inference_mode()).",
    }

    def make_case(self, generator, index):
        sizes = [randint(generator, 3, 6), randint(generator, 3, 6), randint(generator, 2, 4)]
        template = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.BatchNorm1d(sizes[1]), nn.ReLU(),
                                 nn.Linear(sizes[1], sizes[2]))
        state = []
        for name, tensor in template.state_dict().items():
            if name.endswith("running_var"):
                values = uniform(generator, 0.5, 2.0, *tensor.shape)
            elif name.endswith("num_batches_tracked"):
                values = torch.tensor(100.0)
            else:
                values = normal(generator, *tensor.shape) * 0.8
            state.append(values.tolist())
        return {"sizes": sizes, "state": state, "x": normal(generator, randint(generator, 4, 8), sizes[0]).tolist(),
                "mode": ("train", "eval")[index % 2]}

    def call(self, fn, case):
        model = small_bn_model(case)
        model.train(case["mode"] == "train")
        flags = [m.training for m in model.modules()]
        buffers = [b.clone() for b in model.buffers()]
        out = fn(model, torch.tensor(case["x"], dtype=torch.float32))
        return {
            "y": out,
            "requires_grad": bool(getattr(out, "requires_grad", False)),
            "mode kept": [m.training for m in model.modules()] == flags,
            "buffers kept": all(torch.equal(a, b) for a, b in zip(buffers, model.buffers())),
        }

    def forward(self, case, *, train: bool):
        model = small_bn_model(case, dtype=torch.float64)
        model.train(train)
        with torch.no_grad():
            return model(tensor_from(case["x"]))

    def expected(self, case):
        return self.forward(case, train=False)

    def assess(self, case, got):
        if not isinstance(got, dict):
            return Problem(f"expected a tensor, got {describe_value(got)}")
        y, want = got.get("y"), self.expected(case)
        if not close(y, want, atol=1e-4):
            if close(y, self.forward(case, train=True), atol=1e-4):
                return Problem("the outputs are those of train mode", "eval() forgotten")
            if not got.get("buffers kept"):
                return Problem("the outputs " + tensor_difference(y, want) + ", and running_mean, running_var or "
                               "num_batches_tracked changed", "running statistics changed")
            return Problem("the outputs " + tensor_difference(y, want))
        if not got.get("mode kept"):
            return Problem(f"the model was in {case['mode']} mode before and is not any more", "mode not restored")
        if not got.get("buffers kept"):
            return Problem("running_mean, running_var or num_batches_tracked changed", "running statistics changed")
        if got.get("requires_grad"):
            return Problem("the output has requires_grad=True", "gradients tracked")
        return None

    def consistent_mistake(self, cases, outputs):
        return None

    def describe(self, case):
        n_in, hidden, n_out = case["sizes"]
        return (f"a Linear({n_in}, {hidden}) → BatchNorm1d({hidden}) → ReLU → Linear({hidden}, {n_out}) model in "
                f"{case['mode']} mode and a batch of {len(case['x'])}")

    def case_tensors(self, case):
        model = small_bn_model(case)
        model.train(case["mode"] == "train")
        return {"model": model, "x": torch.tensor(case["x"])}


class FreezeBatchNorm(FunctionExercise):
    """``train_with_frozen_batchnorm(model)``: train mode, except every BatchNorm layer stays in eval mode."""

    mistakes = {
        "BatchNorm left in train mode": "The BatchNorm layers are in train mode: model.train() switches every layer, "
                                        "BatchNorm included, so call .eval() on each BatchNorm layer after it.",
        "everything in eval mode": "The whole model is in eval mode, so Dropout is off too: only the BatchNorm "
                                   "layers should be in eval mode.",
        "some BatchNorm layers in train mode": "Every BatchNorm layer should be in eval mode, not only some of them.",
        "other layers in eval mode": "Only the BatchNorm layers should be in eval mode; the rest of the model trains.",
    }

    def make_case(self, generator, index):
        placements = ["before"] * randint(generator, 2, 3)
        return {"spec": random_mlp_spec(generator, placements=placements, flatten=False, dropout=True),
                "mode": ("train", "eval")[index % 2]}

    def call(self, fn, case):
        model = build_sequential(case["spec"])
        model.train(case["mode"] == "train")
        fn(model)
        return [[type(m).__name__, m.training] for m in model.modules()]

    def expected(self, case):
        model = build_sequential(case["spec"])
        return [[type(m).__name__, not isinstance(m, nn.BatchNorm1d)] for m in model.modules()]

    def assess(self, case, got):
        want = self.expected(case)
        if got == want:
            return None
        if not (isinstance(got, list) and [g[0] for g in got if isinstance(g, list)] == [w[0] for w in want]):
            return Problem("the model's layers changed")
        bn = [flag for (kind, flag) in got if kind == "BatchNorm1d"]
        others = [flag for (kind, flag) in got if kind != "BatchNorm1d"]
        in_eval = [kind for kind, flag in got if not flag]
        detail = f"layers in eval mode afterwards: {', '.join(in_eval) or 'none'}"
        if all(bn) and all(others):
            return Problem(detail, "BatchNorm left in train mode")
        if not any(bn) and not any(others):
            return Problem(detail, "everything in eval mode")
        if any(bn):
            return Problem(detail, "some BatchNorm layers in train mode")
        return Problem(detail, "other layers in eval mode")

    def consistent_mistake(self, cases, outputs):
        return None

    def describe(self, case):
        return f"a model in {case['mode']} mode: " + " → ".join(kind for kind, *args in case["spec"])

    def case_tensors(self, case):
        model = build_sequential(case["spec"])
        model.train(case["mode"] == "train")
        return {"model": model}


class BatchesTracked(ValueExercise):
    def expected(self):
        p = self.params
        bn = nn.BatchNorm1d(4).train()
        batch = torch.randn(8, 4)
        with torch.no_grad():
            for _ in range(p["no_grad_batches"]):
                bn(batch)
        with torch.inference_mode():
            for _ in range(p["inference_mode_batches"]):
                bn(batch)
        return float(bn.num_batches_tracked)

    def mistakes(self):
        p = self.params
        message = ("torch.no_grad() and torch.inference_mode() stop gradient tracking but do not switch to eval "
                   "mode: in train mode every forward pass updates the running statistics and the counter.")
        return [
            ("no_grad switches mode", 0.0, message),
            ("inference_mode switches mode", float(p["no_grad_batches"]), message),
            ("no_grad switches mode", float(p["inference_mode_batches"]), message),
        ]

    def matches(self, got, want):
        return abs(got - want) < 0.5


# --- the exercises, chapter by chapter ----------------------------------------------------------------------------

ch01 = ExerciseSet("ch01", "BatchNorm in an MLP", [
    BatchNormForward(
        "ch01.q1", "the train-mode forward", "batchnorm_forward",
        hint="""
Per feature (column) j, over the batch (dim=0): mean_j = x[:, j].mean() and var_j = the *biased* variance
(divide by N). Then y = gamma * (x - mean) / sqrt(var + eps) + beta. keepdim is not needed for (N, C): the
(C,) statistics broadcast along the rows.""",
        solution='''
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    mean = x.mean(dim=0)                    # one mean per feature, over the batch
    var = x.var(dim=0, unbiased=False)      # the biased variance: divide by N
    x_hat = (x - mean) / torch.sqrt(var + eps)
    return gamma * x_hat + beta'''),
    LectureParameters(
        "ch01.q2", "parameters of the lecture's MLP", "answer_q2", params={"hidden": (75, 45)},
        hint="""
Count weights and biases layer by layer. Linear(784, 75, bias=False) has 784 * 75 weights and no bias.
BatchNorm1d(C) has two learnable vectors of length C, weight (gamma) and bias (beta); its running_mean and
running_var are buffers, not parameters. The output layer Linear(45, 10) has a bias.""",
        solution='''
from bnlab.models import MLPConfig, build_mlp, count_parameters
model = build_mlp(MLPConfig(hidden=(75, 45), placement="before", bias=False))
answer_q2 = count_parameters(model)
# by hand: 784*75 + 2*75  +  75*45 + 2*45  +  45*10 + 10'''),
    BatchNorm2dForward(
        "ch01.q3", "BatchNorm2d's forward", "batchnorm2d_forward",
        hint="""
BatchNorm2d keeps one mean and one variance per channel, computed over the batch and both spatial axes:
dim=(0, 2, 3), with keepdim=True so that they broadcast against (N, C, H, W). gamma and beta have shape (C,):
reshape them to (1, C, 1, 1).""",
        solution='''
def batchnorm2d_forward(x, gamma, beta, eps=1e-5):
    mean = x.mean(dim=(0, 2, 3), keepdim=True)                 # (1, C, 1, 1)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    x_hat = (x - mean) / torch.sqrt(var + eps)
    return gamma.view(1, -1, 1, 1) * x_hat + beta.view(1, -1, 1, 1)'''),
    ChoiceExercise(
        "ch01.q4", "parameters or buffers", "answer_q4",
        options={"A": "weight", "B": "bias", "C": "running_mean", "D": "running_var", "E": "num_batches_tracked"},
        correct="AB",
        why={
            "A": "weight is gamma, a learnable parameter (it starts at 1).",
            "B": "bias is beta, a learnable parameter (it starts at 0).",
            "C": "running_mean is a buffer: BatchNorm updates it itself in train mode; the optimiser never sees it.",
            "D": "running_var is a buffer, updated by BatchNorm in train mode, not by the optimiser.",
            "E": "num_batches_tracked is a buffer that counts the train-mode forward passes.",
        },
        hint="Compare `[name for name, _ in bn.named_parameters()]` with `list(bn.state_dict())`."),
])

ch02 = ExerciseSet("ch02", "Placement", [
    HiddenBlock(
        "ch02.q1", "a hidden block with BatchNorm before or after the activation", "hidden_block",
        hint="""
Build a list of layers and wrap it: nn.Sequential(*layers). 'before': Linear, BatchNorm1d, ReLU. 'after': Linear,
ReLU, BatchNorm1d. Then, only if dropout > 0, nn.Dropout(dropout) at the end.""",
        solution='''
def hidden_block(n_in, n_out, placement, dropout=0.0):
    if placement == "before":
        layers = [nn.Linear(n_in, n_out, bias=False), nn.BatchNorm1d(n_out), nn.ReLU()]
    elif placement == "after":
        layers = [nn.Linear(n_in, n_out), nn.ReLU(), nn.BatchNorm1d(n_out)]
    else:
        raise ValueError(f"placement must be 'before' or 'after'; got {placement!r}")
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)'''),
    DiffersBeyondNoise(
        "ch02.q2", "a difference larger than the seed-to-seed spread?", "differs_beyond_noise",
        hint="""
Compute each list's mean and sample standard deviation (statistics.fmean and statistics.stdev, which divides by
n - 1). The answer is abs(mean_a - mean_b) > max(std_a, std_b).""",
        solution='''
import statistics

def differs_beyond_noise(a, b):
    difference = statistics.fmean(a) - statistics.fmean(b)
    return abs(difference) > max(statistics.stdev(a), statistics.stdev(b))'''),
    ChoiceExercise(
        "ch02.q3", "the 'BAD' mnemonic", "answer_q3",
        options={
            "A": "Linear → BatchNorm1d → ReLU → Dropout",
            "B": "Linear → ReLU → BatchNorm1d → Dropout",
            "C": "Linear → ReLU → Dropout → BatchNorm1d",
            "D": "Linear → Dropout → BatchNorm1d → ReLU",
        },
        correct="B",
        why={
            "A": "BatchNorm, Activation, Dropout is the order that spells 'BAD': the one the mnemonic warns against.",
            "B": "BatchNorm after the activation, then Dropout: the order the lecture suggests with dropout (and a "
                 "hyperparameter to try, not a law: on the MNIST MLP it saw no difference).",
            "C": "Here Dropout comes before BatchNorm. In both of the lecture's variants Dropout comes last.",
            "D": "Dropout straight after the Linear layer is not one of the lecture's variants; Dropout comes last.",
        },
        hint="Spell the first letters of BatchNorm, Activation, Dropout in that order. Is that a good word?"),
    ChoiceExercise(
        "ch02.q4", "what five seeds support", "answer_q4",
        options={
            "A": "'after' is the better placement: its mean is higher.",
            "B": "The difference is smaller than the seed-to-seed spread: these runs show no difference between the "
                 "placements.",
            "C": "'before' is the better placement: its standard deviation is smaller.",
            "D": "Nothing at all: with five seeds no difference could ever count as real.",
        },
        correct="B",
        why={
            "A": "The means differ by less than either standard deviation: another set of seeds could reverse the "
                 "order.",
            "B": "A difference within the seed-to-seed spread is no evidence for either placement.",
            "C": "A smaller spread says the runs agree more with each other, not that they are better.",
            "D": "A difference several times larger than the spread would count, even with five seeds.",
        },
        hint="Compare the difference of the means with the standard deviations."),
])

ch03 = ExerciseSet("ch03", "The redundant bias", [
    ParametersSaved(
        "ch03.q1", "parameters saved by bias=False", "answer_q1", params={"hidden": (75, 45)},
        hint="""
Only the Linear layers directly followed by BatchNorm lose their bias. A bias has one entry per output
feature.""",
        solution='''
from bnlab.models import MLPConfig, build_mlp, count_parameters
with_bias = count_parameters(build_mlp(MLPConfig(hidden=(75, 45), placement="before", bias=True)))
without_bias = count_parameters(build_mlp(MLPConfig(hidden=(75, 45), placement="before", bias=False)))
answer_q1 = with_bias - without_bias   # by hand: 75 + 45'''),
    FoldBatchNorm(
        "ch03.q2", "fold BatchNorm into the Linear layer", "fold_batchnorm",
        hint="""
In eval mode, bn(z) = gamma * (z - mu) / sigma + beta with sigma = sqrt(running_var + eps): an affine map. With
z = W x + b: W' = (gamma / sigma)[:, None] * W and b' = gamma * (b - mu) / sigma + beta. If linear.bias is None,
b = 0. Build nn.Linear(n_in, n_out) and copy W', b' into it under torch.no_grad().""",
        solution='''
def fold_batchnorm(linear, bn):
    sigma = torch.sqrt(bn.running_var + bn.eps)
    scale = bn.weight / sigma                                  # one factor per output feature
    b = linear.bias if linear.bias is not None else torch.zeros_like(bn.running_mean)
    fused = nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        fused.weight.copy_(linear.weight * scale[:, None])
        fused.bias.copy_((b - bn.running_mean) * scale + bn.bias)
    return fused
# PyTorch has it too: torch.nn.utils.fusion.fuse_linear_bn_eval(linear, bn)'''),
    RedundantBiases(
        "ch03.q3", "which biases are redundant", "redundant_biases",
        hint="""
Walk over the layers with their positions: `layers = list(model)`. A Linear layer's bias is redundant when the
very next layer is a BatchNorm (isinstance(layers[i + 1], nn.BatchNorm1d)).""",
        solution='''
def redundant_biases(model):
    layers = list(model)
    return [i for i in range(len(layers) - 1)
            if isinstance(layers[i], nn.Linear) and isinstance(layers[i + 1], nn.BatchNorm1d)]'''),
    ChoiceExercise(
        "ch03.q4", "the bias in train and eval mode", "answer_q4",
        options={
            "A": "In train mode, the block's output does not depend on b.",
            "B": "In train mode, the gradient of the loss with respect to b is zero (up to rounding).",
            "C": "In eval mode, changing b after training changes the output.",
            "D": "In eval mode, b can be deleted after training without changing the output: running_mean has "
                 "absorbed it.",
        },
        correct="ABC",
        why={
            "A": "The batch mean includes b, so x - mean(x) removes it: the output does not depend on b.",
            "B": "An output that does not depend on b gives b a zero gradient.",
            "C": "Eval mode subtracts the fixed running_mean, so a changed b passes through, scaled by gamma / sigma.",
            "D": "running_mean learned the mean *with* b; deleting b without also subtracting it from running_mean "
                 "shifts every output by gamma * b / sigma.",
        },
        hint="In train mode the mean comes from the batch; in eval mode it is a fixed number."),
])

ch04 = ExerciseSet("ch04", "Running statistics", [
    RunningStatsUpdate(
        "ch04.q1", "the running-statistics update", "update_running_stats",
        hint="""
running = (1 - momentum) * running + momentum * batch_statistic, per feature, over the batch (dim=0). The mean's
batch statistic is x.mean(dim=0); the variance's is the *unbiased* x.var(dim=0, unbiased=True).""",
        solution='''
def update_running_stats(running_mean, running_var, x, momentum=0.1):
    new_mean = (1 - momentum) * running_mean + momentum * x.mean(dim=0)
    new_var = (1 - momentum) * running_var + momentum * x.var(dim=0, unbiased=True)
    return new_mean, new_var'''),
    RunningAfterSteps(
        "ch04.q2", "running_mean after k steps", "answer_q2", statistic="mean",
        params={"k": 10, "momentum": 0.1, "batch": (1.0, 3.0)},
        hint="""
Every batch has mean 2. After one update running_mean = 0.9 * 0 + 0.1 * 2. After k updates the start value 0
has weight 0.9^k and the batch mean the rest.""",
        solution='''
bn = nn.BatchNorm1d(1, momentum=0.1)
batch = torch.tensor([[1.0], [3.0]])
for _ in range(10):
    bn(batch)                         # train mode: every forward pass updates the running statistics
answer_q2 = bn.running_mean.item()   # by hand: 2 * (1 - 0.9**10)'''),
    RunningAfterSteps(
        "ch04.q3", "running_var after k steps", "answer_q3", statistic="var",
        params={"k": 10, "momentum": 0.1, "batch": (1.0, 3.0)},
        hint="""
running_var starts at 1 and moves toward the *unbiased* variance of the batch: for the two values 1 and 3 that
is ((1 - 2)^2 + (3 - 2)^2) / (2 - 1). After k updates the start value has weight 0.9^k.""",
        solution='''
bn = nn.BatchNorm1d(1, momentum=0.1)
batch = torch.tensor([[1.0], [3.0]])
for _ in range(10):
    bn(batch)
answer_q3 = bn.running_var.item()    # by hand: 0.9**10 * 1 + (1 - 0.9**10) * 2'''),
    KerasMomentum(
        "ch04.q4", "Keras's momentum in PyTorch", "answer_q4", params={"keras_momentum": 0.99},
        hint="""
Keras: running = momentum * running + (1 - momentum) * batch. PyTorch: running = (1 - momentum) * running +
momentum * batch. Which PyTorch momentum gives the same weights?""",
        solution='''
answer_q4 = 1 - 0.99   # PyTorch's momentum weights the new batch, Keras's the old running value'''),
    ChoiceExercise(
        "ch04.q5", "why eval mode is worse after a short training", "answer_q5",
        options={
            "A": "The running statistics still carry much of their start values 0 and 1, so eval mode normalises "
                 "with a mean and variance that are not the data's.",
            "B": "running_var holds the unbiased variance, which is too large for eval mode.",
            "C": "Eval mode switches off the gradients, and without them the weights are different.",
            "D": "The model overfits the training batches.",
        },
        correct="A",
        why={
            "A": f"After k updates the start values keep weight (1 - momentum)^k: after {SHORT_TRAINING} steps "
                 f"0.9^{SHORT_TRAINING} is about {0.9 ** SHORT_TRAINING:.2f}, far from negligible, so the running "
                 f"statistics are biased toward 0 and 1.",
            "B": "The unbiased and biased variances differ by the factor N / (N - 1), tiny for a batch of 256.",
            "C": "eval() changes no weights; it changes how BatchNorm and Dropout behave.",
            "D": f"Overfitting would show in train mode too, and {SHORT_TRAINING} steps are few.",
        },
        hint="After k updates, what weight do running_mean's and running_var's start values still have?"),
])

ch05 = ExerciseSet("ch05", "Eval mode", [
    ChoiceExercise(
        "ch05.q1", "train mode at batch size 8", "answer_q1",
        options={
            "A": "In train mode BatchNorm normalises each batch of 8 with that batch's own mean and variance: noisy "
                 "estimates, and every prediction depends on the other 7 examples in its batch.",
            "B": "In train mode Dropout switches off units at random.",
            "C": "A forward pass in train mode changes the weights.",
            "D": "In train mode BatchNorm normalises with the unbiased variance, which is too large for 8 examples.",
        },
        correct="A",
        why={
            "A": "Eight examples give noisy means and variances, and the output for one example changes with its "
                 "batch-mates; eval mode uses the running statistics and treats each example alone.",
            "B": "The lecture's model has no Dropout layer.",
            "C": "Only an optimiser step changes weights. A train-mode forward pass does change the running "
                 "statistics, but not the weights.",
            "D": "The normalisation uses the biased variance in train mode; the unbiased one only goes into "
                 "running_var.",
        },
        hint="What does BatchNorm use for the mean and variance in train mode, and how good are those from 8 "
             "examples?"),
    PredictInEvalMode(
        "ch05.q2", "predict without side effects", "predict",
        hint="""
Remember `was_training = model.training`, call `model.eval()`, compute the output inside `torch.no_grad()`, then
`model.train(was_training)` (use try/finally, so that the mode comes back even after an error).""",
        solution='''
def predict(model, x):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was_training)'''),
    BatchesTracked(
        "ch05.q3", "num_batches_tracked under no_grad", "answer_q3",
        params={"no_grad_batches": 3, "inference_mode_batches": 2},
        hint="Does torch.no_grad() or torch.inference_mode() change `bn.training`? Only eval mode stops the updates.",
        solution='''
bn = nn.BatchNorm1d(4)            # train mode
batch = torch.randn(8, 4)
with torch.no_grad():
    for _ in range(3):
        bn(batch)
with torch.inference_mode():
    for _ in range(2):
        bn(batch)
answer_q3 = bn.num_batches_tracked.item()'''),
    ChoiceExercise(
        "ch05.q4", "what switches BatchNorm to its running statistics", "answer_q4",
        options={
            "A": "model.eval()",
            "B": "with torch.no_grad():",
            "C": "with torch.inference_mode():",
            "D": "model.train(False)",
            "E": "calling .eval() on every BatchNorm layer",
            "F": "model.requires_grad_(False)",
        },
        correct="ADE",
        why={
            "A": "model.eval() sets training=False on every submodule.",
            "B": "torch.no_grad() only stops gradient tracking: BatchNorm stays in train mode and still updates its "
                 "running statistics.",
            "C": "torch.inference_mode() only stops gradient tracking, like no_grad: it does not switch the mode.",
            "D": "model.train(False) is what model.eval() calls.",
            "E": "Each BatchNorm layer's own training flag decides; .eval() on it sets it to False.",
            "F": "requires_grad_(False) freezes the parameters for the optimiser; the mode stays as it was.",
        },
        hint="Which of these set a module's `training` flag? Try them and print `bn.training`."),
    FreezeBatchNorm(
        "ch05.q5", "freeze BatchNorm for fine-tuning", "train_with_frozen_batchnorm",
        hint="""
First model.train() (every layer to train mode), then loop over model.modules() and call .eval() on every
nn.BatchNorm1d. The order matters: model.train() after the loop would undo it.""",
        solution='''
def train_with_frozen_batchnorm(model):
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):   # BatchNorm1d, 2d and 3d
            module.eval()
    return model'''),
])


SETS = {s.key: s for s in (ch01, ch02, ch03, ch04, ch05)}


def exercise(key: str) -> Exercise:
    """The exercise with ``key``, e.g. ``"ch04.q1"``."""
    set_key, _, name = key.partition(".")
    if set_key not in SETS or not hasattr(SETS[set_key], name):
        raise ValueError(f"key must name an exercise, e.g. 'ch01.q1' (sets: {sorted(SETS)}); got {key!r}.")
    return getattr(SETS[set_key], name)


# --- the grader's probe: runs in the submission's kernel ----------------------------------------------------------


def probe(key: str, namespace: dict, cases_json: str, out_path: str, nonce: str, time_limit: float) -> None:
    """Observe the answer to exercise ``key`` found by name in ``namespace`` on the grader's cases, and write
    ``{"nonce", "exercise", "observed"}`` as JSON to ``out_path`` (atomically). The grader judges it."""
    ex = exercise(key)
    cases = json.loads(cases_json)
    if ex.answer not in namespace:
        observed = {"status": NOT_FOUND}
    else:
        observed = ex.observe(namespace[ex.answer], cases, time_limit=time_limit)
    text = json.dumps({"nonce": nonce, "exercise": key, "observed": observed})
    partial = f"{out_path}.partial"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(partial, out_path)


__all__ = ["POINTS", "SETS", "Result", "Exercise", "ExerciseSet", "exercise", "ch01", "ch02", "ch03", "ch04", "ch05"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit("Import this module: from bnlab.exercises import ch01")
