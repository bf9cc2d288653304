"""Running one submission: its own cells, then one probe per exercise, in sandboxed Jupyter kernels.

Budgets, each spent only by what it is for:

* the notebook's own cells share ``Options.timeout`` seconds per kernel. A cell that runs past it is interrupted,
  and it and the cells after it are left out; a cell that ends the kernel (``exit()``, ``os._exit``, a crash) or
  ignores the interrupt is left out and the notebook runs again in a new kernel, at most ``Options.max_restarts``
  times;
* each exercise's probe has ``Options.check_timeout`` seconds (enforced inside the kernel), plus ``PROBE_MARGIN``
  outside it. A probe that ends its kernel or will not stop costs that exercise only: the remaining exercises are
  probed in a new kernel, after the notebook's cells ran again there (their restarts are not counted).

The probe is ``bnlab.exercises.probe``'s source, read by the grader from its own copy and sent as the cell's text,
with the request (the answer's name and the inputs, drawn by the grader just before) as a string. It sends back
one display message of type ``probe.MIME_TYPE``; nothing else the kernel prints or stores is read. The kernel's
messages are capped at ``MAX_MESSAGE_BYTES`` (ZeroMQ drops a larger one), so that no output can exhaust the
grader's memory.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

from ..exercises import probe
from ..exercises.core import GRADING
from ..exercises.probe import describe_error
from .kernels import PatientKernelManager

KERNEL_STARTUP = 60.0  # seconds a kernel may take to start
KERNEL_START_TRIES = 3  # a kernel can fail to start for a passing reason
PROBE_MARGIN = 5.0  # seconds a probe gets beyond its check's own time limit
INTERRUPT_GRACE = 5.0  # seconds a kernel has to answer after an interrupt
OUTPUT_GRACE = 3.0  # seconds to wait for a cell's last outputs after its reply
MAX_MESSAGE_BYTES = 16 * 1024**2
PROBE_SOURCE = Path(probe.__file__).read_text(encoding="utf-8")


async def maybe_await(value):
    return await value if inspect.isawaitable(value) else value


def field_of(message, name: str) -> dict:
    """A message's ``header``, ``parent_header`` or ``content``: a dict, whatever the kernel sent."""
    value = message.get(name) if isinstance(message, dict) else None
    return value if isinstance(value, dict) else {}


def kernel_manager_class():
    if PatientKernelManager is not None:
        return PatientKernelManager
    from jupyter_client.manager import AsyncKernelManager

    return AsyncKernelManager


class SandboxedKernelManager(kernel_manager_class()):
    """A kernel manager that starts its kernel behind the sandbox's launcher (``sandbox.Sandbox.command``)."""

    sandbox = None

    def format_kernel_cmd(self, extra_arguments=None):
        command = super().format_kernel_cmd(extra_arguments)
        return self.sandbox.command(command, own=(self.connection_file,)) if self.sandbox else command


@dataclass
class Reply:
    """How a cell ended: ``"ok"``, ``"error"`` (with ``error``), ``"timeout"`` or ``"died"``; ``exits`` if it asked
    the kernel to shut down (``exit()``); ``displays``: the probe's messages."""

    status: str
    msg_id: str
    error: str = ""
    exits: bool = False
    displays: list = field(default_factory=list)


class Kernel:
    """One kernel in a sandbox, talking over Unix sockets in the sandbox's folder."""

    def __init__(self, sandbox, kernel_name: str, context):
        self.km = SandboxedKernelManager(kernel_name=kernel_name, context=context)
        self.km.sandbox = sandbox
        self.km.transport = "ipc"  # sockets in the sandbox's private folder: no other user can connect
        self.km.connection_file = str(sandbox.root / "kernel.json")
        self.km.ip = str(sandbox.root / "ipc")
        self.env = {**sandbox.environment(), GRADING: "1"}  # the notebook's own check() calls do nothing
        self.kc = None

    @property
    def pid(self) -> int | None:
        provisioner = getattr(self.km, "provisioner", None)
        pid = getattr(provisioner, "pid", None) or getattr(getattr(self.km, "kernel", None), "pid", None)
        return pid if isinstance(pid, int) else None

    async def start(self) -> None:
        # The kernel writes to nowhere: what it prints to its own stdout must not reach the grader's terminal or log.
        await maybe_await(self.km.start_kernel(env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
        self.kc = self.km.client()
        self.kc.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        await asyncio.wait_for(maybe_await(self.kc.wait_for_ready(timeout=KERNEL_STARTUP)), KERNEL_STARTUP + 5)

    async def alive(self) -> bool:
        try:
            return bool(await maybe_await(self.km.is_alive()))
        except Exception:  # noqa: BLE001
            return False

    async def reply_to(self, msg_id: str):
        """The shell reply to ``msg_id``, or None once the kernel has died."""
        while True:
            try:
                message = await self.kc.get_shell_msg(timeout=1)
            except Empty:
                if not await self.alive():
                    return None
                continue
            if field_of(message, "parent_header").get("msg_id") == msg_id:
                return message

    async def outputs_of(self, msg_id: str, displays: list) -> None:
        """Collect the probe's display messages for ``msg_id`` until the kernel is idle again."""
        while True:
            try:
                message = await self.kc.get_iopub_msg(timeout=1)
            except Empty:
                continue
            if field_of(message, "parent_header").get("msg_id") != msg_id:
                continue
            kind, content = field_of(message, "header").get("msg_type"), field_of(message, "content")
            if kind == "status" and content.get("execution_state") == "idle":
                return
            if kind in ("display_data", "execute_result") and isinstance(content.get("data"), dict):
                text = content["data"].get(probe.MIME_TYPE)
                if isinstance(text, str) and len(text) <= probe.MAX_BYTES:
                    displays.append(text)

    async def execute(self, code: str, timeout: float, *, history: bool = True) -> Reply:
        """Run ``code`` as a cell for at most ``timeout`` seconds (``history``: numbered, as a notebook's cells are)."""
        msg_id = self.kc.execute(code, store_history=history, allow_stdin=False, stop_on_error=False)
        displays: list = []
        outputs = asyncio.ensure_future(self.outputs_of(msg_id, displays))
        try:
            message = await asyncio.wait_for(self.reply_to(msg_id), timeout)
        except asyncio.TimeoutError:
            outputs.cancel()
            return Reply("timeout", msg_id, displays=displays)
        if message is None:
            outputs.cancel()
            return Reply("died", msg_id, displays=displays)
        try:
            await asyncio.wait_for(outputs, OUTPUT_GRACE)
        except asyncio.TimeoutError:
            pass
        content = field_of(message, "content")
        payload = content.get("payload") if isinstance(content.get("payload"), list) else []
        exits = any(isinstance(p, dict) and p.get("source") == "ask_exit" and not p.get("keepkernel") for p in payload)
        if content.get("status") == "error":
            error = f"{content.get('ename', 'an error')}: {str(content.get('evalue', ''))[:200]}".rstrip(": ")
            return Reply("error", msg_id, error, exits, displays)
        return Reply("ok", msg_id, "", exits, displays)

    async def interrupt(self, msg_id: str) -> bool:
        """Interrupt the running cell; True if the kernel then answers."""
        try:
            await maybe_await(self.km.interrupt_kernel())
            return await asyncio.wait_for(self.reply_to(msg_id), INTERRUPT_GRACE) is not None
        except Exception:  # noqa: BLE001 - a timeout, or a kernel already gone
            return False

    async def stop(self) -> None:
        if self.kc is not None:
            try:
                self.kc.stop_channels()
            except Exception:  # noqa: BLE001
                pass
        try:
            await asyncio.wait_for(maybe_await(self.km.shutdown_kernel(now=True)), 30)
        except Exception:  # noqa: BLE001 - a kernel that never started, or is gone
            pass


def probe_cell(request_text: str) -> str:
    """The cell that runs the probe on ``request_text`` in a submission's kernel: the probe's source and the request
    travel as strings; nothing is imported from the kernel's ``bnlab``."""
    return ("def __bnlab_probe(source, request):\n"
            "    namespace = {'__name__': 'bnlab_probe'}\n"
            "    exec(compile(source, 'bnlab-probe', 'exec'), namespace)\n"
            "    namespace['publish'](request, globals())\n"
            f"__bnlab_probe({PROBE_SOURCE!r}, {request_text!r})\n"
            "del __bnlab_probe\n")


def first_line(source: str) -> str:
    line = next((l.strip() for l in source.splitlines() if l.strip()), "")
    return line if len(line) <= 40 else line[:37] + "..."


@dataclass
class Outcome:
    """What running a submission produced.

    Attributes:
        events: what happened in the notebook's own cells and to its kernels, as dicts with a ``kind``
            (``error``, ``timeout``, ``died``, ``unresponsive``, ``kernel``, ``gave up``, ``left``).
        observations: the probe's JSON text per exercise key.
        failures: why an exercise has no observation: ``timeout``, ``deaf``, ``died``, ``error: ...``,
            ``no record``, ``kernel``, ``gave up``.
        kernels: how many kernels ran.
    """

    events: list = field(default_factory=list)
    observations: dict = field(default_factory=dict)
    failures: dict = field(default_factory=dict)
    kernels: int = 0

    def event(self, **event) -> None:
        if event not in self.events:  # the same cell fails the same way in every kernel it runs in
            self.events.append(event)


async def run_cells(kernel: Kernel, cells: list, skip: set, timeout: float, outcome: Outcome) -> int | None:
    """Run the notebook's cells; None when done, or the index of a cell that ended the kernel or would not stop."""
    deadline = time.monotonic() + timeout
    for index, (number, source) in enumerate(cells):
        if index in skip:
            continue
        where = {"cell": number, "first_line": first_line(source)}
        reply = await kernel.execute(source, max(0.0, deadline - time.monotonic()))
        if reply.status == "timeout":
            skip.update(range(index, len(cells)))  # the budget is spent: this cell and the rest stay out
            outcome.event(kind="timeout", **where)
            if not await kernel.interrupt(reply.msg_id):
                outcome.event(kind="unresponsive", **where)
                return index
            return None
        if reply.status == "died" or reply.exits:
            outcome.event(kind="died", **where)
            return index
        if reply.status == "error":
            outcome.event(kind="error", error=reply.error, **where)
    return None


async def run_probe(kernel: Kernel, key: str, request_text: str, check_timeout: float, outcome: Outcome) -> bool:
    """Probe one exercise; True if the kernel can go on with the next."""
    reply = await kernel.execute(probe_cell(request_text), check_timeout + PROBE_MARGIN, history=False)
    if reply.displays:
        outcome.observations[key] = reply.displays[0]
    if reply.status == "timeout":
        answered = await kernel.interrupt(reply.msg_id)
        outcome.failures[key] = "timeout" if answered else "deaf"
        return answered
    if reply.status == "died":
        outcome.failures[key] = "died"
        return False
    if key not in outcome.observations:
        outcome.failures[key] = f"error: {reply.error}" if reply.status == "error" else "no record"
    return not reply.exits


async def run_submission(cells: list, requests: list, *, new_sandbox, kernel_name: str, timeout: float,
                         check_timeout: float, max_restarts: int, context, outcome: Outcome) -> Outcome:
    """Run a submission's ``cells`` and probe each exercise in ``requests`` (``[(key, request JSON)]``), in fresh
    sandboxes from ``new_sandbox()``; fills and returns ``outcome``."""
    skip: set = set()
    pending = list(requests)
    deaths = start_failures = 0
    while pending:
        sandbox = new_sandbox()
        kernel = Kernel(sandbox, kernel_name, context)
        try:
            try:
                await kernel.start()
            except Exception as error:  # noqa: BLE001 - a missing kernel, a port taken, a crash at start
                start_failures += 1
                if start_failures >= KERNEL_START_TRIES:
                    outcome.event(kind="kernel", error=f"it did not start in {start_failures} tries "
                                                       f"({describe_error(error)})")
                    outcome.failures.update({key: "kernel" for key, _ in pending})
                    return outcome
                continue
            outcome.kernels += 1
            culprit = await run_cells(kernel, cells, skip, timeout, outcome)
            if culprit is not None:
                skip.add(culprit)
                deaths += 1
                if deaths > max_restarts:
                    outcome.event(kind="gave up", restarts=max_restarts)
                    outcome.failures.update({key: "gave up" for key, _ in pending})
                    return outcome
                continue
            while pending:
                key, request = pending.pop(0)
                if not await run_probe(kernel, key, request, check_timeout, outcome):
                    break
        finally:
            await kernel.stop()
            left = await asyncio.to_thread(sandbox.clean, kernel.pid)
            if left:
                outcome.event(kind="left", processes=len(left))
    return outcome
