"""``python -m bnlab.bench``: the benchmark's table (``bnlab.bench.main``)."""

import sys

from . import main

sys.exit(main())
