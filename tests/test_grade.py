"""bnlab.grade: ``python -m bnlab.grade`` still starts the grader (the code lives in bnlab.grading)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_python_dash_m_bnlab_grade_runs_the_graders_command_line():
    paths = [str(REPO / "code"), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    result = subprocess.run([sys.executable, "-m", "bnlab.grade", "--help"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0 and "gradescope-bundle" in result.stdout and "--jobs" in result.stdout
