"""The exercise framework: ``Result``, the three kinds of exercise, and a chapter's ``ExerciseSet``.

Each exercise is one of three kinds: *implement* a function (``FunctionExercise``), *predict* a number
(``ValueExercise``) or *diagnose* (``ChoiceExercise``: choose letters). A check runs in three steps:

1. ``make_cases(seed)``: fresh random inputs (a new secret seed on every check, so a hard-coded answer fails);
2. ``probe.observe``: run the learner's answer on them and write down what came back, as JSON data. The only
   step that runs learner code; in the grader it runs in the submission's sandboxed kernel;
3. ``judge``: compare with the reference, computed here from the same inputs (PyTorch's own modules wherever
   there is one), and name the typical mistake the answer matches.

Steps 1 and 3 hold the reference and run where no learner code runs when the grader calls them; the probe never
sees a reference value. ``qN.check()`` in a notebook runs all three in the notebook.

Writing an exercise: subclass a kind, and say how to make a case, what the reference is and which typical
mistakes to recognise (see ``batchnorm_in_an_mlp`` for each kind). Checks are exact: a function's result must
have the dtype the task states (``FunctionExercise.dtype``, float32 by default) and the reference's shape, and
must leave its inputs unchanged; each of these has its own message.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import secrets
from dataclasses import dataclass, field, replace

import torch

from . import probe
from .checks import MalformedObservation, Problem, changed_inputs, decode, describe_value, fmt, input_changes, \
    read_observation, tensor_problem

PASSED = "passed"
FAILED = "failed"
NOT_ATTEMPTED = "not attempted"
NOT_FOUND = "not found"
ERROR = "not checked"  # the check could not run to the end (time limit, crash)
STATUSES = (PASSED, FAILED, NOT_ATTEMPTED, NOT_FOUND, ERROR)
SYMBOLS = {PASSED: "✔", FAILED: "✘", NOT_ATTEMPTED: "·", NOT_FOUND: "·", ERROR: "✘"}

DEFAULT_TIME_LIMIT = 10.0  # seconds for one exercise's check, all its inputs together
GRADING = "BNLAB_GRADING"  # set in the grader's kernels: the grader checks every answer itself, afterwards

# What to tell the learner about mistakes any function exercise can make.
COMMON_MISTAKES = {
    "input changed in place": "Your function changed one of its inputs in place (x -= ..., x.sub_(...), a "
                              "layer's weight.copy_(...)): compute new tensors and leave the inputs as they were.",
    "forbidden function": "This exercise asks you to compute the normalisation yourself, from tensor operations "
                          "such as mean and var: PyTorch's normalisation functions (F.batch_norm, which "
                          "nn.BatchNorm2d calls, F.group_norm, F.layer_norm, F.instance_norm) are switched off "
                          "while the check runs.",
}


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


@dataclass
class Case:
    """One input of a function exercise.

    Attributes:
        args: the positional arguments, by name (tensors, layers, numbers, lists), in order.
        kwargs: keyword arguments; leave one out to test its default.
        info: what only the checking side needs (never sent to the probe).
    """

    args: dict
    kwargs: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def spec(self) -> dict:
        """The case as the probe receives it: argument names and specs (written once; a case does not change)."""
        if "_spec" not in self.__dict__:
            self._spec = {"names": list(self.args), "args": [probe.encode(v) for v in self.args.values()],
                          "kwargs": {k: probe.encode(v) for k, v in self.kwargs.items()}}
        return self._spec

    def decoded(self) -> dict:
        """Every argument as the checking side reads it back from the probe (``checks.decode``), by name."""
        if "_decoded" not in self.__dict__:
            spec = self.spec()
            self._decoded = {**{name: decode(value) for name, value in zip(spec["names"], spec["args"])},
                             **{name: decode(value) for name, value in spec["kwargs"].items()}}
        return self._decoded

    def inputs(self) -> dict:
        """Fresh copies of every argument, by name: what the learner's function received."""
        spec = self.spec()
        built = dict(zip(spec["names"], probe.build(spec["args"])))
        built.update({name: probe.build(value) for name, value in spec["kwargs"].items()})
        return built


class Exercise:
    """One graded exercise. Subclasses say what a case is and how to judge what the probe observed."""

    kind = "implement"
    request_kind = "value"

    def __init__(self, key: str, title: str, answer: str, *, points: float, hint: str, solution: str):
        self.key = key
        self.title = title
        self.answer = answer  # the name the answer has in the notebook: a function or a variable
        self.points = points
        self.hint_text = hint.strip()
        self.solution_code = solution.strip()
        self.failed_input = None  # the input of the last failed check, for the learner to look at

    @property
    def name(self) -> str:
        return self.key.split(".")[-1]

    def __repr__(self) -> str:
        return f"<exercise {self.key}: {self.title} ({self.kind}, {self.points} points; answer: {self.answer})>"

    # the learner's side

    def check(self, answer=inspect.Parameter.empty, *, time_limit: float = DEFAULT_TIME_LIMIT) -> None:
        """Check ``answer`` (by default, the notebook's variable named ``self.answer``) and print the outcome."""
        if os.environ.get(GRADING) == "1":
            print("The grader checks this answer itself, on inputs of its own.")
            return
        if answer is inspect.Parameter.empty:
            caller = inspect.currentframe().f_back.f_globals
            if self.answer not in caller:
                print(self.not_found())
                return
            answer = caller[self.answer]
        print(self.evaluate(answer, time_limit=time_limit))
        if self.failed_input is not None:
            print(f"(The input it failed on is in `{self.name}.failed_input`.)")

    def hint(self) -> None:
        print(self.hint_text)

    def solution(self) -> None:
        print(self.solution_code)

    def evaluate(self, answer, *, seed: int | None = None, time_limit: float | None = DEFAULT_TIME_LIMIT) -> Result:
        """The whole check in this process: fresh cases, observe ``answer`` on them, judge."""
        cases = self.make_cases(seed)
        token = secrets.token_hex(8)
        text = probe.observation_text(self.request(cases, time_limit=time_limit, token=token), {self.answer: answer})
        result, observed = self.judge_text(cases, text, token)
        self.failed_input = self.failing_input(cases, observed) if result.status == FAILED else None
        return result

    def not_found(self) -> Result:
        return self.result(NOT_FOUND, f"There is no `{self.answer}` in the notebook: run the cell that defines it "
                                      f"(and keep its name).")

    # the check's steps

    def make_cases(self, seed: int | None = None) -> list:
        """Fresh inputs for one check (none for an exercise whose answer is a value)."""
        return []

    def request(self, cases: list, *, time_limit: float | None, token: str) -> dict:
        """What the probe receives: JSON data with the answer's name and the cases' inputs."""
        return {"token": token, "answer": self.answer, "kind": self.request_kind, "time_limit": time_limit}

    def judge_text(self, cases: list, text: str, token: str) -> tuple:
        """``(Result, observation)`` for the probe's JSON ``text``; never raises, never passes unreadable data."""
        try:
            observed = read_observation(text, token)
        except MalformedObservation as error:
            return self.result(ERROR, f"The record of the answer could not be read ({error})."), {}
        try:
            return self.judge(cases, observed), observed
        except Exception as error:  # noqa: BLE001 - a value the judge did not foresee must not pass
            return self.result(ERROR, f"The answer could not be judged ({probe.describe_error(error)})."), observed

    def judge(self, cases: list, observed: dict) -> Result:
        raise NotImplementedError

    def failing_input(self, cases: list, observed: dict):
        return None

    def result(self, status: str, message: str, mistake: str | None = None) -> Result:
        points = self.points if status == PASSED else 0
        return Result(self.key, self.title, status, message, points, self.points, mistake)

    def judge_status(self, observed: dict) -> Result | None:
        """The result for an observation that holds no answer (not attempted, not found, failed), else None."""
        status = observed.get("status")
        if status == NOT_ATTEMPTED:
            return self.result(NOT_ATTEMPTED, f"`{self.answer}` is not answered yet. "
                                              f"`{self.name}.hint()` gives a hint.")
        if status == NOT_FOUND:
            return self.not_found()
        if status == "too large":
            return self.result(FAILED, f"What `{self.answer}` gave is too large to check "
                                       f"({observed.get('bytes')} bytes of data).")
        if status != "ran":
            return self.result(ERROR, f"The check could not look at `{self.answer}` "
                                      f"({observed.get('error', 'no record')}).")
        return None


def gap(got, value) -> float:
    """The largest absolute difference between the tensors in ``got`` and ``value`` (tensors, or tuples and lists of
    them, compared in float64); 0 for other values, which ``same`` compares."""
    if isinstance(got, torch.Tensor) and isinstance(value, torch.Tensor) and got.shape == value.shape:
        return float((got.to(torch.float64) - value.to(torch.float64)).abs().max()) if got.numel() else 0.0
    if isinstance(got, (tuple, list)) and isinstance(value, (tuple, list)) and len(got) == len(value):
        return max((gap(a, b) for a, b in zip(got, value)), default=0.0)
    return 0.0


class FunctionExercise(Exercise):
    """Implement a function. The check calls it on ``n_cases`` fresh random inputs and compares with a reference.

    Subclasses define ``make_case`` (a ``Case``), ``expected`` and ``variants`` (the reference's result and the
    results of the typical mistakes in ``mistakes``) and ``describe`` (the input, in words). A tensor result must
    be a ``dtype`` tensor of the reference's shape; override ``problem`` for other kinds of result.
    """

    kind = "implement"
    request_kind = "function"
    n_cases = 4
    dtype = torch.float32
    rtol, atol = 1e-4, 1e-5
    mistakes: dict = {}  # name -> what to tell the learner
    hint_on_error: dict = {}  # text in an exception message -> a hint to add
    forbidden: tuple = ()  # functions the answer may not call (keys of probe.FORBIDDABLE)

    def make_cases(self, seed=None) -> list:
        generator = torch.Generator().manual_seed(secrets.randbits(62) if seed is None else seed)
        return [self.make_case(generator, index) for index in range(self.n_cases)]

    def make_case(self, generator: torch.Generator, index: int) -> Case:
        raise NotImplementedError

    def request(self, cases, *, time_limit, token):
        request = {**super().request(cases, time_limit=time_limit, token=token), "cases": [c.spec() for c in cases]}
        return {**request, "forbidden": list(self.forbidden)} if self.forbidden else request

    def expected(self, case: Case):
        raise NotImplementedError

    def variants(self, case: Case) -> dict:
        """The results of the typical mistakes on ``case``: ``{mistake name: result}``."""
        return {}

    def describe(self, case: Case) -> str:
        return "the input"

    def problem(self, case: Case, got, want) -> Problem | None:
        """None if ``got`` is the right result ``want``, else what differs."""
        if isinstance(want, torch.Tensor):
            return tensor_problem(got, want, dtype=self.dtype, rtol=self.rtol, atol=self.atol)
        return None if got == want else Problem(f"expected {want!r}, got {describe_value(got)}")

    def same(self, case: Case, got, want) -> bool:
        return self.problem(case, got, want) is None

    def resembles(self, case: Case, got, mistake_result) -> bool:
        """Whether ``got`` is a typical mistake's result, for naming the mistake, never for the grade: ``same``
        with ten times the grade's ``rtol`` and a hundred times its ``atol``. A mistake's result can be
        ill-conditioned where the right one is not (statistics over a batch of two nearly equal pixels, divided by
        ``sqrt(1e-5)``), and a float32 answer then differs from it by more than the grade's tolerance."""
        loose = copy.copy(self)
        loose.rtol, loose.atol = self.rtol * 10, self.atol * 100
        return loose.same(case, got, mistake_result)

    @staticmethod
    def changes(case: Case, run: dict) -> dict:
        """How the run's inputs differ afterwards from what was sent (``checks.input_changes``)."""
        return input_changes(case.decoded(), run["after"])

    def side_effects(self, case: Case, run: dict) -> Problem | None:
        """What the answer did to its inputs that it should not have (by default: any change)."""
        return changed_inputs(self.changes(case, run))

    def assess(self, case: Case, run: dict) -> Problem | None:
        """None if the run's result is right for ``case`` and left the inputs alone, else what is wrong."""
        got = run["value"]
        problem = self.problem(case, got, self.expected(case))
        if problem is None:
            return self.side_effects(case, run)
        if problem.mistake is None:
            variants = self.variants(case)
            fits = [name for name, value in variants.items() if self.resembles(case, got, value)]
            problem = Problem(problem.detail, min(fits, key=lambda name: gap(got, variants[name]), default=None))
        return problem

    def consistent_mistake(self, cases: list, outputs: list) -> str | None:
        """The typical mistake whose results equal the answer's on every case (where a case has no result for a
        mistake, the reference's); where several do (leaving eps out and ignoring the eps argument differ by
        ``1e-5`` under a square root), the one nearest to the answer, then the first. Mistakes that ``variants``
        gives no result for on any case are named by ``problem`` or ``side_effects`` instead."""
        variants = [self.variants(case) for case in cases]
        wants = [self.expected(case) for case in cases]
        matching = [
            name for name in self.mistakes
            if any(name in v for v in variants)
            and all(self.resembles(c, got, v.get(name, want))
                    for c, got, v, want in zip(cases, outputs, variants, wants))
        ]
        return min(matching, key=lambda name: max(
            gap(got, v.get(name, want)) for got, v, want in zip(outputs, variants, wants)), default=None)

    def judge(self, cases, observed) -> Result:
        early = self.judge_status(observed)
        if early is not None:
            return early
        if not observed.get("callable"):
            return self.result(FAILED, f"`{self.answer}` should be a function; it is a {observed.get('type')}.")
        runs = observed["runs"]
        outputs, problems = [], []
        for index, (case, run) in enumerate(zip(cases, runs)):
            if "timeout" in run:
                return self.result(FAILED, f"`{self.answer}` ran longer than the time limit ({run['timeout']} s) on "
                                           f"{self.describe(case)}. An endless loop?")
            if "raised" in run:
                message = run["raised"]
                if self.forbidden and message.startswith(f"{probe.ForbiddenCall.__name__}:"):
                    return self.result(FAILED, f"{COMMON_MISTAKES['forbidden function']} Your function called "
                                               f"{message.split(': ', 1)[1].split(' is not', 1)[0]}.",
                                       "forbidden function")
                extra = next((hint for text, hint in self.hint_on_error.items() if text in message), "")
                return self.result(FAILED, f"`{self.answer}` raised {message} on {self.describe(case)}. "
                                           f"{extra}".strip())
            outputs.append(run["value"])
            problem = self.assess(case, run)
            if problem is not None:
                problems.append((index, problem))
        if len(outputs) < len(cases):
            return self.result(ERROR, "The check stopped before it had run every input.")
        if not problems:
            return self.result(PASSED, f"`{self.answer}` gives the right result on {len(cases)} fresh random inputs.")
        index, problem = problems[0]
        mistake = self.consistent_mistake(cases, outputs) or problem.mistake
        lead = self.mistakes.get(mistake, COMMON_MISTAKES.get(mistake, ""))
        return self.result(FAILED, f"{lead} For {self.describe(cases[index])}: {problem.detail}.".strip(), mistake)

    def failing_input(self, cases, observed):
        """The first input the answer got wrong (or raised on), built afresh for the learner to try."""
        for case, run in zip(cases, observed.get("runs") or []):
            if "value" not in run or self.assess(case, run) is not None:
                return case.inputs()
        return None


class ValueExercise(Exercise):
    """Predict a number. The question states its parameters (``params``); ``expected`` computes the answer from
    them by running PyTorch. ``mistakes`` gives the numbers typical mistakes give and what to tell the learner."""

    kind = "predict"

    def __init__(self, key, title, answer, *, params: dict, points, hint: str, solution: str, rel_tol: float = 1e-3,
                 abs_tol: float = 1e-9):
        super().__init__(key, title, answer, points=points, hint=hint, solution=solution)
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

    def judge(self, cases, observed) -> Result:
        early = self.judge_status(observed)
        if early is not None:
            return early
        got = observed.get("value")
        if isinstance(got, torch.Tensor) and got.numel() == 1 and got.dtype != torch.bool:
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
    """Diagnose: choose the right letter(s). ``options`` maps each letter to its text, ``correct`` holds the right
    letters, and ``why`` explains, for every letter, why it is right or wrong."""

    kind = "diagnose"

    def __init__(self, key, title, answer, *, options: dict, correct: str, why: dict, points, hint: str):
        if not (set(correct) <= set(options) and set(why) == set(options)):
            raise ValueError(f"{key}: correct ({correct!r}) must be letters of options, and why must explain each "
                             f"option ({sorted(options)}); got why for {sorted(why)}.")
        solution = f'{answer} = "{correct}"\n\n' + "\n".join(f"# {letter}: {why[letter]}" for letter in options)
        super().__init__(key, title, answer, points=points, hint=hint, solution=solution)
        self.options = dict(options)
        self.correct = frozenset(correct)
        self.why = dict(why)

    @property
    def multiple(self) -> bool:
        return len(self.correct) > 1

    @staticmethod
    def letters(value) -> set | None:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            value = "".join(value)
        if not isinstance(value, str):
            return None
        return {c for c in value.upper() if c.isalpha()}

    def judge(self, cases, observed) -> Result:
        early = self.judge_status(observed)
        if early is not None:
            return early
        chosen = self.letters(observed.get("value"))
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
            if not exercise.key.startswith(f"{key}."):
                raise ValueError(f"exercise key {exercise.key!r} must start with its set's key {key!r}.")
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
        if os.environ.get(GRADING) == "1":
            print("The grader checks these answers itself, on inputs of its own.")
            return
        if namespace is None:
            namespace = inspect.currentframe().f_back.f_globals
        results = self.results(namespace)
        for result in results:
            print(f"{result}  [{result.points:g}/{result.max_points:g}]")
        print(f"Total: {sum(r.points for r in results):g} of {self.max_points:g} points.")
