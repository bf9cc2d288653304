"""Kernel channels that never sleep through a message: the wake-up workaround for running notebooks.

jupyter_client waits for a kernel's messages with ``zmq.asyncio``: one ``poll`` per message, as long as the cell's
whole timeout. Rarely, a message arrives without waking that poll (a ZeroMQ socket signals new messages on an
edge-triggered file descriptor, and a wake-up can be lost); the poll then sleeps until its timeout, finds the
message only then, and the notebook carries on as if nothing happened, minutes later. An output message missed
that way is worse: nbclient stops waiting for output once the cell's reply is in, and the output is silently
dropped.

``PatientChannel`` waits in slices of ``WAKE_INTERVAL`` seconds instead. Each slice ends with a real,
level-triggered check of the socket, so a lost wake-up costs at most one slice. ``PatientKernelManager`` starts
kernels whose clients talk through such channels; ``notebook_client`` builds an nbclient ``NotebookClient`` with
it; ``patch_asyncio_channel`` gives jupyter_client's own asyncio channel the same wait (for tools that do not let
the caller choose the client: the book build, ``book/patient_kernels.py``). The grader's kernels use it too.

It works with every jupyter_client that has an asyncio channel: 8 (``AsyncZMQSocketChannel``), 7 (Colab's 7.4.9,
where ``ZMQSocketChannel`` is the asyncio one) and 6 (``jupyter_client.asynchronous.channels``). With none of
these, ``ASYNC_CHANNEL`` is None and notebooks run with nbclient's own channels, unprotected.
"""

from __future__ import annotations

import inspect
import time
from queue import Empty

from traitlets import DottedObjectName, Type

WAKE_INTERVAL = 1.0  # seconds: the longest a message can wait unseen


def find_asyncio_channel():
    """jupyter_client's channel class whose ``get_msg`` is a coroutine (the one asyncio clients use), or None."""
    candidates = []
    try:
        from jupyter_client import channels

        candidates += [getattr(channels, "AsyncZMQSocketChannel", None), getattr(channels, "ZMQSocketChannel", None)]
    except ImportError:
        pass
    try:
        from jupyter_client.asynchronous import channels as asynchronous_channels  # jupyter_client 6

        candidates.append(getattr(asynchronous_channels, "ZMQSocketChannel", None))
    except ImportError:
        pass
    for cls in candidates:
        if cls is not None and inspect.iscoroutinefunction(getattr(cls, "get_msg", None)):
            return cls
    return None


ASYNC_CHANNEL = find_asyncio_channel()
PatientChannel = PatientKernelClient = PatientKernelManager = None


async def patient_get_msg(self, timeout: float | None = None) -> dict:
    """The next message; ``queue.Empty`` if none arrives within ``timeout`` seconds (``None``: no limit)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = WAKE_INTERVAL if deadline is None else max(0.0, deadline - time.monotonic())
        if await self.socket.poll(int(min(WAKE_INTERVAL, left) * 1000)):
            return await self._recv()
        if deadline is not None and time.monotonic() >= deadline:
            raise Empty


if ASYNC_CHANNEL is not None:
    from jupyter_client.asynchronous import AsyncKernelClient
    from jupyter_client.manager import AsyncKernelManager

    class PatientChannel(ASYNC_CHANNEL):  # noqa: F811
        """A kernel channel whose ``get_msg`` re-checks its socket every ``WAKE_INTERVAL`` seconds while it waits."""

        get_msg = patient_get_msg

    # jupyter_client 6 names no stdin and control channel classes on its asyncio client: set those it has
    PatientKernelClient = type(AsyncKernelClient)("PatientKernelClient", (AsyncKernelClient,), {  # noqa: F811
        "__module__": __name__,
        "__doc__": "An asynchronous kernel client whose channels (shell, IOPub, stdin, control) are PatientChannels.",
        **{f"{name}_channel_class": Type(PatientChannel) for name in ("shell", "iopub", "stdin", "control")
           if hasattr(AsyncKernelClient, f"{name}_channel_class")},
    })

    class PatientKernelManager(AsyncKernelManager):  # noqa: F811
        """An asynchronous kernel manager whose clients are ``PatientKernelClient``s."""

        client_class = DottedObjectName(f"{__name__}.PatientKernelClient")
        client_factory = Type(klass=PatientKernelClient)


def patch_asyncio_channel() -> None:
    """Give jupyter_client's asyncio channel class the patient ``get_msg``, in this process."""
    if ASYNC_CHANNEL is not None:
        ASYNC_CHANNEL.get_msg = patient_get_msg


def notebook_client(notebook, *, client_class=None, **options):
    """An nbclient ``NotebookClient`` (or ``client_class``, a subclass) for ``notebook`` whose kernels are started
    by ``PatientKernelManager`` (where jupyter_client has an asyncio channel). ``options`` go to the client:
    ``timeout``, ``kernel_name``, ``resources``, ..."""
    from nbclient import NotebookClient

    if PatientKernelManager is not None:
        options["kernel_manager_class"] = PatientKernelManager
    return (client_class or NotebookClient)(notebook, **options)
