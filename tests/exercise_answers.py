"""Answers as a learner writes them, for the exercise tests. Not a test module."""

from __future__ import annotations

import statistics
import textwrap

import torch
from torch import nn


def answer_from(source: str, name: str, **extra):
    """Run ``source`` the way a notebook cell does and return the variable ``name`` it defines."""
    namespace = {"torch": torch, "nn": nn, "statistics": statistics, **extra}
    exec(textwrap.dedent(source), namespace)
    return namespace[name]


def assert_mistake_named(exercise, source: str, mistake: str, seeds=range(5), **extra) -> None:
    """``source``'s answer fails ``exercise`` on every seed, named as ``mistake``, with its message first."""
    answer = answer_from(source, exercise.answer, **extra)
    for seed in seeds:
        result = exercise.evaluate(answer, seed=seed)
        assert result.status == "failed" and result.points == 0, (seed, result)
        assert result.mistake == mistake, (seed, result.message)
        lead = exercise.mistakes.get(mistake, "") if isinstance(exercise.mistakes, dict) else ""
        assert result.message.startswith(lead), result.message
        assert "For " in result.message  # and which input it failed on


def assert_solution_passes(exercise, seeds=range(20)) -> None:
    """The reference solution passes on many fresh inputs."""
    answer = answer_from(exercise.solution_code, exercise.answer)
    for seed in seeds:
        result = exercise.evaluate(answer, seed=seed)
        assert result.passed, (seed, result.message)
