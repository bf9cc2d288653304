"""Grading exercise notebooks: ``python -m bnlab.grade SUBMISSION.ipynb... --out grades.csv``.

The package: ``submissions`` (reading notebooks), ``sandbox`` (where learner code runs, and as whom), ``kernels``
(kernel channels that never sleep through a message), ``worker`` (running one submission's cells and probes),
``records`` (options, rows, results), ``grader`` (many submissions, in parallel), ``reports`` (CSV and Gradescope
results), ``gradescope`` (the autograder bundle), ``cli`` (the command line), ``throughput`` (how fast it grades).
"""

from .grader import grade_submission, grade_submissions
from .records import Grade, Options

__all__ = ["Grade", "Options", "grade_submission", "grade_submissions"]
