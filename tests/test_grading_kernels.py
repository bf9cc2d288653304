"""bnlab.grading.kernels: kernel channels wait in short slices, so a message whose wake-up was lost is seen within
one slice; notebooks run with them through nbclient; the book build uses the same wait. The tests run with any
jupyter_client that has an asyncio channel (8 here; 7.4.9 in Colab)."""

import asyncio
import importlib.util
from pathlib import Path
from queue import Empty

import nbformat
import pytest
from bnlab.grading import kernels
from bnlab.grading.kernels import ASYNC_CHANNEL, PatientChannel, PatientKernelClient, notebook_client

REPO = Path(__file__).resolve().parents[1]


class Clock:
    """Virtual time in seconds: the tests below never sleep."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


class SocketThatMissesItsWakeUp:
    """A stand-in for a zmq.asyncio socket whose message arrives at ``arrival`` (virtual seconds) without waking a
    poll that is already waiting: a poll sees the message only if it *starts* at or after the arrival (the real
    check at the start of each poll); otherwise it sleeps its whole timeout and reports nothing."""

    def __init__(self, clock: Clock, arrival: float):
        self.clock, self.arrival = clock, arrival
        self.polls: list[int] = []

    async def poll(self, timeout_ms):
        self.polls.append(timeout_ms)
        if self.clock.now >= self.arrival:
            return 1
        self.clock.now += timeout_ms / 1000
        return 0


def patient_channel(socket) -> PatientChannel:
    channel = PatientChannel.__new__(PatientChannel)  # no real socket or session needed: get_msg polls and receives
    channel.socket = socket

    async def recv():
        return {"msg_type": "execute_reply"}

    channel._recv = recv
    return channel


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(kernels, "time", clock)
    return clock


def test_a_message_whose_wake_up_was_lost_is_seen_within_one_slice(clock):
    socket = SocketThatMissesItsWakeUp(clock, arrival=2.5)
    message = asyncio.run(patient_channel(socket).get_msg(timeout=600))
    assert message == {"msg_type": "execute_reply"}
    assert 2.5 <= clock.now <= 2.5 + kernels.WAKE_INTERVAL, f"seen at {clock.now} s, sent at 2.5 s"


def test_the_plain_asyncio_channel_sleeps_through_the_same_message_until_its_timeout(clock):
    """The failure PatientChannel exists for, on the same stand-in socket."""
    socket = SocketThatMissesItsWakeUp(clock, arrival=2.5)
    with pytest.raises(Empty):
        asyncio.run(ASYNC_CHANNEL.get_msg(patient_channel(socket), timeout=600))
    assert clock.now == 600


def test_every_slice_is_at_most_the_wake_interval(clock):
    socket = SocketThatMissesItsWakeUp(clock, arrival=7.2)
    asyncio.run(patient_channel(socket).get_msg(timeout=None))
    assert len(socket.polls) >= 8 and max(socket.polls) <= kernels.WAKE_INTERVAL * 1000


def test_no_message_raises_empty_at_the_timeout(clock):
    socket = SocketThatMissesItsWakeUp(clock, arrival=float("inf"))
    with pytest.raises(Empty):
        asyncio.run(patient_channel(socket).get_msg(timeout=5.5))
    assert clock.now == pytest.approx(5.5)


def test_a_notebook_runs_through_patient_channels():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 6 * 7"),
        nbformat.v4.new_code_cell("print(x)"),
    ])
    client = notebook_client(nb, timeout=60, kernel_name="python3")
    with client.setup_kernel():
        assert isinstance(client.kc, PatientKernelClient)
        assert all(isinstance(c, PatientChannel) for c in (client.kc.shell_channel, client.kc.iopub_channel))
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
    assert nb.cells[1].outputs[0]["text"] == "42\n"


def test_the_book_build_waits_the_same_way(monkeypatch):
    monkeypatch.setattr(ASYNC_CHANNEL, "get_msg", ASYNC_CHANNEL.get_msg)  # restored afterwards
    spec = importlib.util.spec_from_file_location("patient_kernels", REPO / "book" / "patient_kernels.py")
    extension = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extension)
    extension.setup(app=None)
    assert ASYNC_CHANNEL.get_msg is kernels.patient_get_msg


def test_the_channel_found_is_the_one_asyncio_clients_use():
    import inspect

    from jupyter_client.asynchronous import AsyncKernelClient

    assert inspect.iscoroutinefunction(ASYNC_CHANNEL.get_msg)
    assert issubclass(AsyncKernelClient().shell_channel_class, ASYNC_CHANNEL)
    assert issubclass(PatientChannel, ASYNC_CHANNEL)
