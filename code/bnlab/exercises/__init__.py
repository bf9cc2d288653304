"""Graded exercises with instant feedback: ``qN.check(answer)``, ``qN.hint()``, ``qN.solution()``.

In an exercise notebook::

    from bnlab.exercises import ch01
    q1, q2, q3, q4 = ch01

    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        raise NotImplementedError   # the learner replaces this

    q1.check(batchnorm_forward)     # prints: passed, a specific failure, or "not attempted"

The package: ``core`` (the framework: ``Result``, the exercise kinds, ``ExerciseSet``), ``checks`` (reading what
the probe saw, and exact comparisons), ``probe`` (what runs where the learner's code runs), ``inputs`` (random
inputs), ``scenarios`` (models and data a notebook hands to the learner to investigate), and one module per
chapter, named for its idea, each with an ``EXERCISES`` set.

A new chapter adds its exercises by adding one module here that defines ``EXERCISES = ExerciseSet("ch06", ...)``:
the registry below finds it, ``from bnlab.exercises import ch06`` works, and the grader knows the set. (A helper
module that is not a chapter's goes into ``FRAMEWORK``, or gets a name starting with ``_``.)
"""

from __future__ import annotations

import importlib
import pkgutil

from .core import (
    DEFAULT_TIME_LIMIT, ERROR, FAILED, NOT_ATTEMPTED, NOT_FOUND, PASSED, STATUSES, Case, ChoiceExercise, Exercise,
    ExerciseSet, FunctionExercise, Result, ValueExercise,
)

FRAMEWORK = {"core", "checks", "probe", "inputs", "scenarios"}


def discover() -> dict:
    """Every chapter module's ``EXERCISES``, by set key, in key order."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in FRAMEWORK or info.name.startswith("_"):
            continue
        exercise_set = getattr(importlib.import_module(f"{__name__}.{info.name}"), "EXERCISES", None)
        if not isinstance(exercise_set, ExerciseSet):
            raise TypeError(f"bnlab.exercises.{info.name} must define EXERCISES = ExerciseSet(...)")
        if exercise_set.key in found:
            raise ValueError(f"two chapter modules define the exercise set {exercise_set.key!r}")
        found[exercise_set.key] = exercise_set
    return dict(sorted(found.items()))


SETS = discover()
POINTS = {e.key: e.points for exercise_set in SETS.values() for e in exercise_set}
globals().update(SETS)  # ch01, ch02, ...


def exercise(key: str) -> Exercise:
    """The exercise with ``key``, e.g. ``"ch04.q1"``."""
    set_key, _, name = key.partition(".")
    if set_key not in SETS or not isinstance(getattr(SETS[set_key], name, None), Exercise):
        raise ValueError(f"key must name an exercise, e.g. 'ch01.q1' (sets: {sorted(SETS)}); got {key!r}.")
    return getattr(SETS[set_key], name)


__all__ = ["POINTS", "SETS", "STATUSES", "PASSED", "FAILED", "NOT_ATTEMPTED", "NOT_FOUND", "ERROR",
           "DEFAULT_TIME_LIMIT", "Case", "Result", "Exercise", "FunctionExercise", "ValueExercise", "ChoiceExercise",
           "ExerciseSet", "exercise", *SETS]
