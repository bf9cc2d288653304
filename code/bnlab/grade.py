"""``python -m bnlab.grade``: grade exercise notebooks (the code lives in ``bnlab.grading``; see ``grading.cli``)."""

import sys

from .grading.cli import main

if __name__ == "__main__":
    sys.exit(main())
