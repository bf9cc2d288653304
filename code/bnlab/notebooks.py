"""Executing notebooks with nbclient, without sleeping through a kernel's message.

nbclient waits for a kernel's messages with ``zmq.asyncio``: one ``poll`` per message, as long as the cell's whole
timeout. Rarely, a message arrives without waking that poll (a ZeroMQ socket signals new messages on an
edge-triggered file descriptor, and a wake-up can be lost); the poll then sleeps until its timeout, finds the
message only then, and the notebook carries on as if nothing happened, minutes later. An output message missed that
way is worse: nbclient stops waiting for output once the cell's reply is in, and the output is silently dropped.

``PatientChannel`` waits in slices of ``WAKE_INTERVAL`` seconds instead. Each slice ends with a real, level-triggered
check of the socket, so a lost wake-up costs at most one slice. ``notebook_client`` builds an nbclient
``NotebookClient`` whose kernels talk through such channels; the grader (``bnlab.grade``) and the book build
(``book/patient_kernels.py``) run notebooks with it.
"""

from __future__ import annotations

import time
from queue import Empty

from traitlets import DottedObjectName, Type

WAKE_INTERVAL = 1.0  # seconds: the longest a message can wait unseen

try:
    from jupyter_client.channels import AsyncZMQSocketChannel
except ImportError:  # jupyter_client 6 (Colab's) has no asyncio channel class to build on: nbclient's own is used
    AsyncZMQSocketChannel = None

PatientKernelManager = None

if AsyncZMQSocketChannel is not None:
    from jupyter_client import AsyncKernelManager
    from jupyter_client.asynchronous import AsyncKernelClient

    class PatientChannel(AsyncZMQSocketChannel):
        """A kernel channel whose ``get_msg`` re-checks its socket every ``WAKE_INTERVAL`` seconds while it waits."""

        async def get_msg(self, timeout: float | None = None) -> dict:
            """The next message; ``queue.Empty`` if none arrives within ``timeout`` seconds (``None``: no limit)."""
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = WAKE_INTERVAL if deadline is None else max(0.0, deadline - time.monotonic())
                if await self.socket.poll(int(min(WAKE_INTERVAL, left) * 1000)):
                    return await self._recv()
                if deadline is not None and time.monotonic() >= deadline:
                    raise Empty

    class PatientKernelClient(AsyncKernelClient):
        """An asynchronous kernel client whose shell, IOPub, stdin and control channels are ``PatientChannel``s."""

        shell_channel_class = Type(PatientChannel)
        iopub_channel_class = Type(PatientChannel)
        stdin_channel_class = Type(PatientChannel)
        control_channel_class = Type(PatientChannel)

    class PatientKernelManager(AsyncKernelManager):  # noqa: F811
        """An asynchronous kernel manager whose clients are ``PatientKernelClient``s."""

        client_class = DottedObjectName(f"{__name__}.PatientKernelClient")
        client_factory = Type(klass=PatientKernelClient)


def notebook_client(notebook, *, client_class=None, **options):
    """An nbclient ``NotebookClient`` (or ``client_class``, a subclass) for ``notebook`` whose kernels are started
    by ``PatientKernelManager`` (where jupyter_client is 7 or later). ``options`` go to the client: ``timeout``,
    ``kernel_name``, ``resources``, ..."""
    from nbclient import NotebookClient

    if PatientKernelManager is not None:
        options["kernel_manager_class"] = PatientKernelManager
    return (client_class or NotebookClient)(notebook, **options)
