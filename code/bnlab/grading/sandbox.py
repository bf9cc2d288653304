"""Where learner code runs: a private folder, and, when the grader is root, an unprivileged user of its own.

The mechanism, and why: every kernel runs as a numeric uid from a pool (``FIRST_UID`` upwards, one per parallel
job, each held with a lock file so that two graders on one machine never share one), with no groups, the "no new
privileges" flag set (set-uid programs cannot give root back) and ``umask 077``, in a fresh folder that only that
uid can enter. The grader's own files (its copies of the submissions, the cases, the results) stay in its memory
and in root's private folders, which that uid cannot read or write; the grader writes its outputs only after every
process of that uid has ended. After each notebook, ``Sandbox.clean`` ends *every* process of the uid with
``kill(-1, SIGKILL)`` sent as that uid (the kernel sends it to all its processes at once, so a process that forks,
starts a new session or detaches cannot escape it) and removes what the uid left in the shared temporary
folders. Plain Unix users need nothing but root and a Linux kernel: they work in Gradescope's and CI's
containers, where user namespaces (bubblewrap) are usually blocked and bubblewrap is not installed. Resource
limits cap core dumps, file sizes and the uid's processes.

One complement: when the kernel's Python (or bnlab) lies in a folder other users cannot enter (Python installed
under ``/root``, say), the launcher gives the kernel a private mount namespace in which that folder is an empty
in-memory one holding only the paths the kernel needs (``expose``); the rest of it stays hidden. Where the
machine does not allow a mount namespace either, the grader cannot isolate and says so.

What it does not do: it does not hide files that every user may read (the grader says so when the submissions
are among them, ``open_to_others``), and it does not limit memory or network access.

Without root, none of this is possible: kernels run as the grader's own user, which the grader says once
(``NOTICE``). It still gives each kernel a private folder and ends the processes it can find (the kernel's process
group, and every process that still carries the sandbox's mark in its environment).

This file also runs as a script, with the standard library only, as the small launcher that drops the
privileges before the kernel starts (``enter``) and that ends a uid's processes (``end``).
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import resource
import shutil
import signal
import stat
import sys
import tempfile
import time
from pathlib import Path

FIRST_UID = 61000  # the pool's first uid (and gid); uids known to the system are skipped
SHARED_TEMP = ("/tmp", "/var/tmp", "/dev/shm")
LOCKS = "/run/bnlab-grader"
MAX_PROCESSES = 1024  # processes and threads of a sandbox uid
MAX_FILE_BYTES = 2 * 1024**3
MARK = "BNLAB_SANDBOX"
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # the folder bnlab is imported from


def notice(reason: str = "the grader is not root") -> str:
    """What the grader says, once, when it cannot isolate learner code."""
    return (f"bnlab.grade: learner code is not isolated ({reason}): it runs as your own user, so it can read and "
            f"change your files, and processes it starts may outlive the grading. For isolation, grade as root in "
            f"a container or throwaway machine (as Gradescope does): each kernel then runs as an unprivileged user "
            f"of its own.")


def can_isolate() -> bool:
    return sys.platform.startswith("linux") and os.geteuid() == 0


# --- the launcher: runs as root, as a script, just before the kernel --------------------------------------------


def become(uid: int, gid: int) -> None:
    """Drop root for good: no groups, real, effective and saved ids all ``uid`` / ``gid``."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise SystemExit("bnlab sandbox: could not drop root")


CLONE_NEWNS, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV = 0x20000, 4096, 8192, 16384, 1 << 18, 2, 4


def libc_call(name: str, *args) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{name}: {os.strerror(error)}")


def no_new_privileges() -> None:
    """``prctl(PR_SET_NO_NEW_PRIVS)``: from now on, executing a set-uid program gives no privileges."""
    libc_call("prctl", 38, 1, 0, 0, 0)


def mount(source, target, fstype, flags: int, data=None) -> None:
    encode = lambda v: None if v is None else str(v).encode()  # noqa: E731
    libc_call("mount", encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data))


def blocked_by(path) -> Path | None:
    """The outermost folder above ``path`` that users other than its owner cannot enter, or None."""
    path = Path(os.path.abspath(path))
    for folder in reversed(path.parents):
        try:
            if not folder.stat().st_mode & stat.S_IXOTH:
                return folder
        except OSError:
            return None
    return None


def expose(paths: list, staging: Path) -> None:
    """In a new mount namespace, replace each folder that blocks one of ``paths`` by an empty in-memory folder
    holding only those paths (bound back in from the real ones). Needs root (CAP_SYS_ADMIN)."""
    blocked: dict = {}
    for path in paths:
        folder = blocked_by(path)
        if folder is not None and Path(path).exists():
            blocked.setdefault(folder, set()).add(Path(os.path.abspath(path)))
    if not blocked:
        return
    libc_call("unshare", CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    count = 0
    for folder, inside in blocked.items():
        inside = sorted(p for p in inside if not any(q != p and q in p.parents for q in inside))
        stages = []
        for path in inside:
            stage = staging / f"expose-{count}"
            count += 1
            stage.mkdir(parents=True)
            mount(path, stage, None, MS_BIND | MS_REC)
            stages.append((stage, path))
        mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        for stage, path in stages:
            target = folder / path.relative_to(folder)
            target.mkdir(parents=True, exist_ok=True)
            for parent in [target, *target.parents]:
                if parent == folder:
                    break
                os.chmod(parent, 0o755)
            mount(stage, target, None, MS_MOVE)


def enter(args) -> None:
    """Set up the process and become the kernel (``exec``)."""
    try:
        os.setsid()  # its own session and process group: the grader interrupts and ends the group
    except OSError:
        pass
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
    os.umask(0o077)
    root = Path(args.root)
    if args.uid is not None:
        expose(args.expose, root)
        resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))
        for path in args.own:
            os.chown(path, args.uid, args.gid)
        become(args.uid, args.gid)
    no_new_privileges()
    for name in ("home", "tmp", "work"):
        (root / name).mkdir(exist_ok=True)
    os.chdir(root / "work")
    os.execvp(args.command[0], args.command)


def end(args) -> None:
    """As ``uid``: send SIGKILL to every process of that uid, until none is left (zombies aside)."""
    become(args.uid, args.gid)
    for _ in range(200):
        try:
            os.kill(-1, signal.SIGKILL)  # every process this uid may signal: all of its own, at once
        except ProcessLookupError:
            return
        if not [pid for pid in processes_of(args.uid) if pid != os.getpid()]:
            return
        time.sleep(0.01)


def launcher_main(argv: list) -> None:
    parser = argparse.ArgumentParser(prog="sandbox.py")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("enter")
    p.add_argument("--uid", type=int)
    p.add_argument("--gid", type=int)
    p.add_argument("--root", required=True)
    p.add_argument("--own", action="append", default=[])
    p.add_argument("--expose", action="append", default=[])
    p.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("namespace")
    p = sub.add_parser("end")
    p.add_argument("--uid", type=int, required=True)
    p.add_argument("--gid", type=int, required=True)
    args = parser.parse_args(argv)
    if args.action == "enter":
        args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
        enter(args)
    elif args.action == "namespace":  # can this process have a mount namespace of its own?
        libc_call("unshare", CLONE_NEWNS)
    else:
        end(args)


# --- the grader's side -------------------------------------------------------------------------------------------


def processes_of(uid: int) -> list:
    """The process ids of ``uid``'s live processes (zombies left out), from /proc."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        uids = fields.get("Uid", "").split()
        if uid in {int(u) for u in uids[:3] if u.isdigit()} and not fields.get("State", "").strip().startswith("Z"):
            found.append(int(entry.name))
    return found


def marked_processes(mark: str) -> list:
    """This user's processes whose environment carries ``MARK=mark`` (what a non-root sandbox can find)."""
    found, needle = [], f"{MARK}={mark}".encode()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in Path(entry.path, "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def known_id(uid: int) -> bool:
    import grp
    import pwd

    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


def private_folder(path: str) -> Path:
    """``path``, created if missing, as a folder only root can use; refuses one that someone else could have
    prepared."""
    folder = Path(path)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
        raise RuntimeError(f"{folder} must be a folder owned by root with mode 700; remove it and grade again.")
    return folder


class UidPool:
    """Unprivileged uids for sandboxes, each held with a lock file (``LOCKS``) while this grader uses it."""

    def __init__(self, size: int, first: int = FIRST_UID):
        self.held = []
        try:
            locks = private_folder(LOCKS)
        except OSError:  # a read-only /run: the same, in the temporary folder
            locks = private_folder(os.path.join(tempfile.gettempdir(), "bnlab-grader-locks"))
        uid = first
        while len(self.held) < size:
            if uid > first + 10_000:
                raise RuntimeError(f"no free sandbox uid between {first} and {uid}")
            if not known_id(uid):
                handle = open(locks / f"{uid}.lock", "w")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    handle.close()
                else:
                    self.held.append((uid, handle))
                    end_processes(uid)  # left behind by a grader that was killed
            uid += 1

    @property
    def uids(self) -> list:
        return [uid for uid, _ in self.held]

    def close(self) -> None:
        for _, handle in self.held:
            handle.close()
        self.held = []


LAUNCHER = [sys.executable, "-I", "-S", str(Path(__file__).resolve())]


def end_processes(uid: int) -> None:
    """End every process of ``uid`` (root only)."""
    import subprocess

    subprocess.run([*LAUNCHER, "end", "--uid", str(uid), "--gid", str(uid)], check=False,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


def remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


class Sandbox:
    """One kernel's place: a fresh private folder (``root``) and, when the grader is root, the uid it runs as.

    ``command(kernel_cmd, own=[...])`` is the kernel's command line behind the launcher; ``environment()`` the
    kernel's whole environment (nothing of the grader's beyond what the kernel needs); ``clean()`` ends every
    process of the sandbox and removes its files.
    """

    def __init__(self, uid: int | None = None, *, threads: int = 1):
        self.uid = uid
        self.threads = threads
        self.mark = os.urandom(8).hex()
        # /tmp, not $TMPDIR: the sandbox's uid must be able to reach its folder
        self.root = Path(tempfile.mkdtemp(prefix="bnlab-sandbox-", dir="/tmp" if uid is not None else None))
        if uid is not None:
            os.chown(self.root, uid, uid)
        os.chmod(self.root, 0o700)

    def command(self, kernel_cmd: list, *, own: tuple = ()) -> list:
        ids = ["--uid", str(self.uid), "--gid", str(self.uid)] if self.uid is not None else []
        owned = [arg for path in own for arg in ("--own", str(path))]
        exposed = [arg for path in kernel_paths(kernel_cmd, self.environment()) for arg in ("--expose", path)]
        return [*LAUNCHER, "enter", *ids, "--root", str(self.root), *owned, *exposed, "--", *kernel_cmd]

    @staticmethod
    def base_environment() -> dict:
        """What a kernel's environment keeps from the grader's."""
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
               "LANG": os.environ.get("LANG", "C.UTF-8"),
               "PYTHONPATH": os.pathsep.join(p for p in (PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p)}
        for name in ("BNLAB_DATA", "BNLAB_PROFILE", "VIRTUAL_ENV"):
            if os.environ.get(name):
                env[name] = os.environ[name]
        return env

    def environment(self) -> dict:
        home = self.root / "home"
        return {
            **self.base_environment(),
            "HOME": str(home), "USER": "bnlab-sandbox", "LOGNAME": "bnlab-sandbox",
            "TMPDIR": str(self.root / "tmp"),
            "IPYTHONDIR": str(home / ".ipython"), "MPLCONFIGDIR": str(home / ".matplotlib"),
            "XDG_CACHE_HOME": str(home / ".cache"), "JUPYTER_RUNTIME_DIR": str(self.root / "tmp"),
            "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
            MARK: self.mark,
        }

    def clean(self, kernel_pid: int | None = None) -> list:
        """End every process of this sandbox, remove its folder and whatever its uid left in the shared temporary
        folders. Returns the ids of processes still alive afterwards (none, unless something is badly wrong)."""
        if self.uid is not None:
            end_processes(self.uid)
            for base in SHARED_TEMP:
                try:
                    entries = list(os.scandir(base))
                except OSError:
                    continue
                for entry in entries:
                    try:
                        if entry.stat(follow_symlinks=False).st_uid == self.uid:
                            remove(entry.path)
                    except OSError:
                        pass
            left = processes_of(self.uid)
        else:
            for _ in range(50):
                found = ([kernel_pid] if kernel_pid else []) + marked_processes(self.mark)
                for pid in found:
                    for kill in (os.killpg, os.kill):
                        try:
                            kill(pid, signal.SIGKILL)
                        except OSError:
                            pass
                kernel_pid = None
                left = marked_processes(self.mark)
                if not left:
                    break
                time.sleep(0.02)
        remove(str(self.root))
        return left


def kernel_paths(kernel_cmd: list, env: dict) -> list:
    """What a kernel started with ``kernel_cmd`` reads its code from: its interpreter's installation (the real one
    and, for a virtual environment, the environment) and the folders on its ``PYTHONPATH``."""
    program = shutil.which(kernel_cmd[0], path=env.get("PATH")) or kernel_cmd[0]
    paths = [os.path.dirname(os.path.dirname(os.path.realpath(program))),
             os.path.dirname(os.path.dirname(os.path.abspath(program)))]
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return list(dict.fromkeys(paths))


_namespaces = None


def namespace_available() -> bool:
    """Whether this machine lets the launcher give a kernel a mount namespace of its own (root, not blocked by a
    container's seccomp profile)."""
    global _namespaces
    if _namespaces is None:
        import subprocess

        _namespaces = subprocess.run([*LAUNCHER, "namespace"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL).returncode == 0
    return _namespaces


def isolation_problem(kernel_cmd: list) -> str | None:
    """Why kernels started with ``kernel_cmd`` cannot run as a sandbox user, or None if they can."""
    if not can_isolate():
        return "the grader is not root"
    blocked = [(path, blocked_by(path)) for path in kernel_paths(kernel_cmd, Sandbox.base_environment())]
    blocked = [(path, folder) for path, folder in blocked if folder is not None]
    if blocked and not namespace_available():
        path, folder = blocked[0]
        return (f"the kernel reads {path}, inside {folder}, which other users cannot enter, and this machine does "
                f"not allow a private mount namespace to show it to the sandbox user alone (install Python where "
                f"every user can read it)")
    return None


def open_to_others(path: Path, *, write: bool = False) -> bool:
    """Whether users other than the owner (and its group) can read ``path`` (``write``: change what is in the
    folder), judged from the permission bits of the path and every folder above it."""
    path = Path(path).resolve()
    for folder in reversed(path.parents):
        try:
            if not folder.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if write:
        return bool(mode & stat.S_IWOTH and mode & stat.S_IXOTH)
    return bool(mode & stat.S_IROTH)


if __name__ == "__main__":
    launcher_main(sys.argv[1:])
