"""The command line: ``python -m bnlab.grade``.

    python -m bnlab.grade SUBMISSION... --out grades.csv [--gradescope results.json] [--jobs N] ...
    python -m bnlab.grade gradescope-bundle --out autograder.zip [--exercises ch01] ...
    python -m bnlab.grade gradescope-run [--root /autograder]     (what the bundle's run_autograder calls)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..exercises import SETS
from .grader import grade_submissions, isolation
from .records import DEFAULT_CHECK_TIMEOUT, DEFAULT_TIMEOUT, Options
from .reports import csv_text, one_line, write_atomically, write_gradescope
from .sandbox import FIRST_UID, open_to_others
from .submissions import expand


def add_options(p: argparse.ArgumentParser) -> None:
    """The flags that say how to grade (shared by grading and the Gradescope bundle)."""
    p.add_argument("--exercises", choices=sorted(SETS),
                   help="the exercises every submission holds (default: detected per notebook)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds a notebook's own cells may run, all together (default: {DEFAULT_TIMEOUT:g})")
    p.add_argument("--check-timeout", type=float, default=DEFAULT_CHECK_TIMEOUT,
                   help=f"seconds each exercise's check may run (default: {DEFAULT_CHECK_TIMEOUT:g})")
    p.add_argument("--points", metavar="POINTS_JSON",
                   help='a JSON file {"ch04.q1": 5, ...} overriding points per exercise')


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bnlab.grade", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Grade exercise notebooks: run each in a fresh, sandboxed kernel, check every exercise on inputs\n"
                    "the notebook never saw, and write one CSV row per submission with points per exercise and the\n"
                    "total.",
        epilog="other commands:\n"
               "  python -m bnlab.grade gradescope-bundle --out autograder.zip   a Gradescope autograder\n"
               "  python -m bnlab.grade gradescope-run                          what its run_autograder calls")
    p.add_argument("submissions", nargs="+", metavar="SUBMISSION",
                   help="notebooks to grade (.ipynb), or folders of them")
    p.add_argument("--out", default="grades.csv", help="the CSV file to write (default: grades.csv)")
    p.add_argument("--gradescope", metavar="RESULTS_JSON",
                   help="also write Gradescope's results.json for everything graded in this run")
    add_options(p)
    p.add_argument("--kernel", default="python3", help="the Jupyter kernel to run submissions in (default: python3)")
    p.add_argument("--jobs", type=int, default=1, help="notebooks graded at the same time (default: 1)")
    p.add_argument("--first-uid", type=int, default=FIRST_UID,
                   help=f"when root: the first uid of the sandbox users (default: {FIRST_UID})")
    return p


def options_from(p: argparse.ArgumentParser, args, **extra) -> Options:
    points = None
    if args.points:
        try:
            points = json.loads(Path(args.points).read_text())
        except (OSError, ValueError) as error:
            p.error(f"--points: cannot read {args.points}: {error}")
    try:
        return Options(timeout=args.timeout, check_timeout=args.check_timeout, exercises=args.exercises,
                       points=points, **extra)
    except ValueError as error:
        p.error(str(error))


def check_target(p: argparse.ArgumentParser, flag: str, target: str | None) -> None:
    if target and (Path(target).is_dir() or not Path(target).parent.is_dir()):
        p.error(f"{flag}: cannot write {target}: it is a folder, or its folder does not exist")


def grade_command(argv: list) -> int:
    p = parser()
    args = p.parse_args(argv)
    options = options_from(p, args, kernel=args.kernel, first_uid=args.first_uid)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    for flag, target in (("--out", args.out), ("--gradescope", args.gradescope)):
        check_target(p, flag, target)
    paths = expand(args.submissions)
    if not paths:
        p.error("no notebooks to grade")
    reason = isolation(options)
    if reason is None:
        for folder in dict.fromkeys(path.parent for path in paths):
            if open_to_others(folder):
                print(f"bnlab.grade: other users can read {folder}: a submission's code could read the other "
                      f"notebooks there while it runs (make it private: chmod o-rwx {folder}).", file=sys.stderr)

    def progress(grade) -> None:
        print(f"{grade.total:g}/{grade.max_total:g}  {grade.status:<10}  {grade.submission}"
              + (f"  ({one_line(grade.reason, 160)})" if grade.reason else ""), flush=True)

    grades = grade_submissions(paths, options, jobs=args.jobs, on_grade=progress)
    write_atomically(args.out, csv_text(grades))
    if args.gradescope:
        write_gradescope(args.gradescope, grades, notice=reason and f"Learner code was not isolated: {reason}.")
    print(f"{len(grades)} submission(s) graded; wrote {args.out}" + (f" and {args.gradescope}" if args.gradescope
                                                                       else ""))
    return 0


def bundle_command(argv: list) -> int:
    from .gradescope import build_bundle

    p = argparse.ArgumentParser(prog="python -m bnlab.grade gradescope-bundle",
                                description="Write a Gradescope autograder (setup.sh, run_autograder, this bnlab) "
                                            "that grades the notebooks a student submits.")
    p.add_argument("--out", default="autograder.zip", help="the zip file to write (default: autograder.zip)")
    add_options(p)
    args = p.parse_args(argv)
    check_target(p, "--out", args.out)
    options = options_from(p, args)
    build_bundle(args.out, options)
    print(f"wrote {args.out}: upload it as the autograder of a Gradescope programming assignment")
    return 0


def run_command(argv: list) -> int:
    from .gradescope import AUTOGRADER, run_autograder

    p = argparse.ArgumentParser(prog="python -m bnlab.grade gradescope-run",
                                description="Grade a Gradescope submission: the notebooks in ROOT/submission, "
                                            "results in ROOT/results/results.json, settings from "
                                            "ROOT/source/config.json.")
    p.add_argument("--root", default=AUTOGRADER, help=f"Gradescope's autograder folder (default: {AUTOGRADER})")
    args = p.parse_args(argv)
    return run_autograder(Path(args.root))


def main(argv: list | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["gradescope-bundle"]:
        return bundle_command(argv[1:])
    if argv[:1] == ["gradescope-run"]:
        return run_command(argv[1:])
    return grade_command(argv)
