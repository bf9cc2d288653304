"""Grading many submissions: read them all, run them ``jobs`` at a time in sandboxes, judge each in this process.

Every submission is read (and its code kept in memory) before the first kernel starts. Each of the ``jobs`` slots
has its own sandbox uid (when isolating), so that ending one slot's processes never touches another's. Inputs for
each exercise are drawn from a fresh secret seed just before the submission runs; the references stay here.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from concurrent.futures import ThreadPoolExecutor

from ..exercises import SETS
from ..exercises.probe import describe_error
from .records import Grade, Options, fill_unchecked, judge, notes_from
from .sandbox import Sandbox, UidPool, isolation_problem, notice
from .submissions import read_submission
from .worker import INTERRUPT_GRACE, KERNEL_START_TRIES, KERNEL_STARTUP, MAX_MESSAGE_BYTES, OUTPUT_GRACE, \
    PROBE_MARGIN, Outcome, run_submission

_noticed: set = set()


def isolation(options: Options) -> str | None:
    """None if kernels will run as sandbox users; else why not, said once per process (on stderr)."""
    reason = isolation_problem(kernel_command(options.kernel)) if options.isolate is not False else \
        "Options.isolate is False"
    if reason is not None and options.isolate is True:
        raise ValueError(f"Options.isolate=True, but learner code cannot be isolated: {reason}.")
    if reason is not None and reason not in _noticed:
        print(notice(reason), file=sys.stderr, flush=True)
        _noticed.add(reason)
    return reason


def kernel_command(name: str) -> list:
    """The command line of the Jupyter kernel ``name`` (this Python's, where the kernel is unknown)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        return list(KernelSpecManager().get_kernel_spec(name).argv)
    except NoSuchKernel:
        return [sys.executable]


def time_limit(options: Options, n_exercises: int) -> float:
    """The longest one submission may take, all its kernels together, before the grader stops it."""
    probe = options.check_timeout + PROBE_MARGIN + INTERRUPT_GRACE + OUTPUT_GRACE
    attempt = KERNEL_STARTUP + options.timeout + INTERRUPT_GRACE + n_exercises * probe + 30
    return attempt * (options.max_restarts + n_exercises + KERNEL_START_TRIES)


async def grade_one(submission, options: Options, *, uid, threads: int, context) -> Grade:
    grade = Grade(submission.path, submission.exercise_set)
    if submission.error is not None:
        grade.notes.append(submission.error)
        fill_unchecked(grade, submission.error, options)
        return grade
    exercises = SETS[submission.exercise_set]
    cases = {e.key: e.make_cases() for e in exercises}
    tokens = {e.key: secrets.token_hex(16) for e in exercises}
    requests = [(e.key, json.dumps(e.request(cases[e.key], time_limit=options.check_timeout, token=tokens[e.key])))
                for e in exercises]
    outcome = Outcome()
    limit = time_limit(options, len(exercises))
    try:
        await asyncio.wait_for(run_submission(
            list(submission.cells), requests, new_sandbox=lambda: Sandbox(uid, threads=threads),
            kernel_name=options.kernel, timeout=options.timeout, check_timeout=options.check_timeout,
            max_restarts=options.max_restarts, context=context, outcome=outcome), limit)
    except asyncio.TimeoutError:
        outcome.event(kind="stopped", seconds=limit)
    except Exception as error:  # noqa: BLE001 - a fault of the grader's own: the row survives, with the reason
        grade.notes.append(f"grading failed: {describe_error(error)}")
    grade.notes[:0] = notes_from(outcome, options)
    judge(grade, cases, tokens, outcome, options)
    return grade


async def grade_all(submissions: list, options: Options, jobs: int, on_grade) -> list:
    import zmq
    import zmq.asyncio

    pool = UidPool(jobs, options.first_uid) if isolation(options) is None else None
    slots: asyncio.Queue = asyncio.Queue()
    for uid in (pool.uids if pool else [None] * jobs):
        slots.put_nowait(uid)
    context = zmq.asyncio.Context()
    context.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    threads = max(1, (os.cpu_count() or 1) // jobs)

    async def one(submission) -> Grade:
        uid = await slots.get()
        try:
            grade = await grade_one(submission, options, uid=uid, threads=threads, context=context)
        except Exception as error:  # noqa: BLE001 - the row survives a fault of the grader's own
            grade = Grade(submission.path, submission.exercise_set, notes=[f"grading failed: {describe_error(error)}"])
            fill_unchecked(grade, "grading failed", options)
        finally:
            slots.put_nowait(uid)
        if on_grade is not None:
            on_grade(grade)
        return grade

    try:
        return list(await asyncio.gather(*(one(s) for s in submissions)))
    finally:
        context.destroy(linger=0)
        if pool is not None:
            pool.close()


def grade_submissions(paths, options: Options = Options(), *, jobs: int = 1, on_grade=None) -> list:
    """Grade every notebook in ``paths`` (``jobs`` at a time); one ``Grade`` per path, in order. ``on_grade(grade)``
    is called as each is ready. Every file is read before any learner code runs."""
    if isinstance(jobs, bool) or not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"jobs must be a positive integer; got {jobs!r}.")
    submissions = [read_submission(path, set(SETS), options.exercises) for path in paths]
    work = grade_all(submissions, options, jobs, on_grade)
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # the usual case: no event loop runs in this thread
        return asyncio.run(work)
    with ThreadPoolExecutor(max_workers=1) as thread:  # called from a notebook, whose event loop is running
        return thread.submit(asyncio.run, work).result()


def grade_submission(path, options: Options = Options()) -> Grade:
    """Grade one notebook. Never raises for anything the notebook does: it becomes the row's reason."""
    return grade_submissions([path], options)[0]
