"""bnlab.grading.sandbox: code started through the launcher runs as an unprivileged user of its own that cannot
get root back, reach the grader's private files or outlive its cleaning; without root, the sandbox still ends
every process it marked. The isolation tests need root (as in CI and Gradescope) and skip without it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bnlab.grading import sandbox
from bnlab.grading.sandbox import (
    Sandbox, UidPool, blocked_by, isolation_problem, kernel_paths, known_id, marked_processes,
    namespace_available, open_to_others, private_folder, processes_of,
)

# The launcher runs this Python as a sandbox user: root, and the interpreter reachable (or shown in a namespace).
ISOLATED = isolation_problem([sys.executable]) is None
root_only = pytest.mark.skipif(not ISOLATED, reason="isolation needs root")
FIRST_UID = 63000  # apart from the other tests' sandbox users

REPORT = """
import json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
try:
    os.setuid(0)
    regained = True
except PermissionError:
    regained = False
print(json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
                  "regained": regained, "no_new_privs": status["NoNewPrivs"].strip(), "umask": os.umask(0),
                  "cwd": os.getcwd(), "home": os.environ["HOME"], "secret": os.environ.get("GRADER_SECRET")}))
"""


def run_in(box: Sandbox, code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(box.command([sys.executable, "-c", code]), env=box.environment(), capture_output=True,
                          text=True, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def pool():
    if not ISOLATED:
        pytest.skip("isolation needs root")
    pool = UidPool(2, FIRST_UID)
    yield pool
    pool.close()


@pytest.fixture
def box(pool):
    box = Sandbox(pool.uids[0])
    yield box
    box.clean()


@root_only
def test_code_runs_as_an_unprivileged_user_that_cannot_get_root_back(box, monkeypatch):
    monkeypatch.setenv("GRADER_SECRET", "the grader's own")
    report = json.loads(run_in(box, REPORT).stdout)
    assert report["uid"] == report["euid"] == report["gid"] == box.uid and report["groups"] == []
    assert not report["regained"] and report["no_new_privs"] == "1" and report["umask"] == 0o077
    assert report["cwd"] == str(box.root / "work") and report["home"] == str(box.root / "home")
    assert report["secret"] is None, "the grader's environment is not passed on"


@root_only
def test_the_graders_private_files_are_out_of_reach(box, tmp_path):
    private = tmp_path / "grader"  # under pytest's folder for root: mode 700
    private.mkdir()
    (private / "grades.csv").write_text("the grader's")
    shared = Path(tempfile.mkdtemp(prefix="bnlab-test-out-"))
    os.chmod(shared, 0o755)
    try:
        code = f"""
import os, shutil
for attempt in (lambda: open({str(private / 'grades.csv')!r}).read(), lambda: shutil.rmtree({str(private)!r}),
                lambda: open({str(shared / 'grades.csv')!r}, "w"), lambda: os.listdir("/run/bnlab-grader")):
    try:
        attempt()
        print("reached")
    except OSError:
        print("refused")
"""
        assert run_in(box, code).stdout.split() == ["refused"] * 4
        assert (private / "grades.csv").read_text() == "the grader's" and not (shared / "grades.csv").exists()
    finally:
        os.rmdir(shared)


@root_only
def test_cleaning_ends_every_process_of_the_user_detached_or_not_and_removes_its_files(box):
    code = """
import os, subprocess, sys, time
for _ in range(3):   # daemons: a new session each, then orphaned by a second fork
    subprocess.Popen([sys.executable, "-c", "import os, time\\nif os.fork(): os._exit(0)\\n"
                      "time.sleep(600)"], start_new_session=True, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
open("/tmp/left-behind-by-a-submission", "w").write("x")
os.makedirs("/dev/shm/bnlab-test-left", exist_ok=True)
time.sleep(1)
"""
    assert run_in(box, code).returncode == 0
    time.sleep(0.5)
    assert len(processes_of(box.uid)) >= 3, "the daemons run"
    assert box.clean() == []
    assert processes_of(box.uid) == []
    assert not Path("/tmp/left-behind-by-a-submission").exists() and not Path("/dev/shm/bnlab-test-left").exists()
    assert not box.root.exists()


@root_only
def test_one_sandbox_user_cannot_signal_or_read_another(pool):
    first, second = Sandbox(pool.uids[0]), Sandbox(pool.uids[1])
    try:
        sleeper = subprocess.Popen(second.command([sys.executable, "-c", "import time; time.sleep(60)"]),
                                   env=second.environment())
        time.sleep(1)
        code = f"""
import os, signal
for attempt in (lambda: os.kill({sleeper.pid}, signal.SIGKILL), lambda: os.listdir({str(second.root)!r})):
    try:
        attempt()
        print("reached")
    except OSError:
        print("refused")
"""
        assert run_in(first, code).stdout.split() == ["refused", "refused"]
        assert sleeper.poll() is None
    finally:
        second.clean()
        first.clean()
        sleeper.wait(timeout=30)


@root_only
def test_uid_pools_never_share_a_uid_and_skip_the_systems_own(pool):
    other = UidPool(1, FIRST_UID)
    try:
        assert not set(other.uids) & set(pool.uids)
    finally:
        other.close()
    assert known_id(0)
    nobody = UidPool(1, 65534)  # nobody's uid is known to the system
    try:
        assert nobody.uids[0] > 65534
    finally:
        nobody.close()


@root_only
def test_the_lock_folder_must_be_roots_alone(tmp_path):
    folder = tmp_path / "locks"
    folder.mkdir(mode=0o777)
    os.chmod(folder, 0o777)
    with pytest.raises(RuntimeError, match="owned by root with mode 700"):
        private_folder(str(folder))
    assert private_folder(str(tmp_path / "fresh")).stat().st_mode & 0o777 == 0o700


@root_only
@pytest.mark.skipif(not (ISOLATED and namespace_available()), reason="needs a private mount namespace")
def test_a_needed_path_inside_a_private_folder_is_shown_to_the_sandbox_alone(box):
    top = Path(tempfile.mkdtemp(prefix="bnlab-test-expose-"))
    try:
        os.chmod(top, 0o755)
        (top / "private" / "inner").mkdir(parents=True)
        os.chmod(top / "private", 0o700)
        (top / "private" / "inner" / "code.txt").write_text("needed")
        (top / "private" / "secret.txt").write_text("hidden")
        assert blocked_by(top / "private" / "inner" / "code.txt") == top / "private"
        command = box.command([sys.executable, "-c", f"""
import os
print(open({str(top / 'private' / 'inner' / 'code.txt')!r}).read())
print(os.listdir({str(top / 'private')!r}))
"""])
        command.insert(command.index("--"), "--expose")
        command.insert(command.index("--"), str(top / "private" / "inner"))
        result = subprocess.run(command, env=box.environment(), capture_output=True, text=True, timeout=60)
        assert result.stdout.split("\n")[:2] == ["needed", "['inner']"], result.stderr
        assert (top / "private" / "secret.txt").read_text() == "hidden"  # the grader's own view is unchanged
    finally:
        import shutil

        shutil.rmtree(top)


def test_without_root_the_sandbox_ends_the_processes_it_marked(monkeypatch):
    box = Sandbox(None)
    code = """
import subprocess, sys
subprocess.Popen([sys.executable, "-c", "import os, time\\nif os.fork(): os._exit(0)\\n"
                  "time.sleep(600)"], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""
    assert run_in(box, code).returncode == 0
    time.sleep(1)
    assert marked_processes(box.mark), "the daemon carries the sandbox's mark"
    assert box.clean() == [] and marked_processes(box.mark) == []
    assert not box.root.exists()


def test_the_sandbox_folder_is_private_and_fresh_each_time():
    first, second = Sandbox(None), Sandbox(None)
    try:
        assert first.root != second.root and stat.S_IMODE(first.root.stat().st_mode) == 0o700
    finally:
        first.clean(), second.clean()


def test_a_kernels_code_paths_are_its_interpreter_and_its_pythonpath(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/code")
    paths = kernel_paths([sys.executable, "-m", "ipykernel_launcher"], Sandbox.base_environment())
    assert os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))) in paths
    assert "/somewhere/code" in paths and sandbox.PACKAGE_PARENT in paths


def test_without_root_isolation_is_impossible_and_says_why(monkeypatch):
    monkeypatch.setattr(sandbox, "can_isolate", lambda: False)
    assert isolation_problem([sys.executable]) == "the grader is not root"
    assert "not isolated (the grader is not root)" in sandbox.notice()


def test_open_to_others_reads_the_permission_bits_of_the_path_and_every_folder_above(tmp_path):
    top = Path(tempfile.mkdtemp(prefix="bnlab-test-open-"))
    try:
        os.chmod(top, 0o755)
        (top / "shared.ipynb").write_text("{}")
        os.chmod(top / "shared.ipynb", 0o644)
        assert open_to_others(top) and open_to_others(top / "shared.ipynb")
        assert not open_to_others(top, write=True)
        os.chmod(top, 0o711)
        assert not open_to_others(top) and open_to_others(top / "shared.ipynb")
        os.chmod(top, 0o700)
        assert not open_to_others(top / "shared.ipynb")
    finally:
        import shutil

        shutil.rmtree(top)
