"""sd_notify and the watchdog, against a real unix datagram socket."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_process import Daemon, short_tempdir, write_main, write_tool
from mosquitto import wait_until

from gateway.sdnotify import MAX_STATUS_CHARS, Notifier, watchdog_interval_s
from gateway.watchdog import Probe, ProgressMonitor, run_watchdog

# The daemon is asked for a ping at least every 0.8 s, so it pings every 0.2 s.
WATCHDOG_USEC = 800_000
RECEIVE_TIMEOUT_S = 0.05


class NotifySocket:
    """A bound datagram socket standing where systemd's notify socket would be."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(RECEIVE_TIMEOUT_S)
        self.messages: list[tuple[float, list[str]]] = []

    def drain(self) -> list[list[str]]:
        """Receive everything waiting; return every message so far (as lines)."""
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                break
            self.messages.append((time.monotonic(), data.decode().split("\n")))
        return [fields for _, fields in self.messages]

    def firsts(self) -> list[str]:
        """The first field of every message, in arrival order."""
        return [fields[0] for fields in self.drain()]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_dir() -> Iterator[Path]:
    with short_tempdir() as folder:
        yield folder


def test_notifier_sends_datagrams_to_a_path_socket(notify_dir: Path) -> None:
    """READY, STATUS, WATCHDOG and STOPPING arrive as KEY=VALUE datagrams."""
    path = str(notify_dir / "notify")
    listener = NotifySocket(path)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("2/2 tools up")
    assert notifier.watchdog()
    assert notifier.status("x" * 500)
    assert notifier.stopping()
    notifier.close()

    messages = listener.drain()
    listener.close()
    assert messages[0] == ["READY=1", "STATUS=2/2 tools up"]
    assert messages[1] == ["WATCHDOG=1"]
    assert messages[2] == ["STATUS=" + "x" * MAX_STATUS_CHARS]
    assert messages[3][0] == "STOPPING=1"


def test_notifier_reaches_an_abstract_socket() -> None:
    """An ``@name`` NOTIFY_SOCKET is the abstract socket of that name."""
    name = f"edge-gateway-test-{uuid.uuid4().hex}"
    listener = NotifySocket(b"\0" + name.encode())
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
    assert notifier.reloading()
    notifier.close()
    (message,) = listener.drain()
    listener.close()
    assert message[0] == "RELOADING=1"
    assert message[1].startswith("MONOTONIC_USEC=")
    assert int(message[1].split("=")[1]) > 0


def test_notifier_without_a_manager_does_nothing() -> None:
    """Without NOTIFY_SOCKET nothing is sent and nothing fails."""
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("up")


def test_notifier_survives_a_vanished_manager(notify_dir: Path) -> None:
    """A notify socket that went away gives False, never an exception."""
    notifier = Notifier({"NOTIFY_SOCKET": str(notify_dir / "gone")})
    assert not notifier.watchdog()
    assert not notifier.watchdog()
    notifier.close()


def test_watchdog_interval_follows_the_environment() -> None:
    """WATCHDOG_USEC is read in seconds; WATCHDOG_PID of another process disables."""
    pid = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": pid}) == 0.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "nonsense"}) is None
    assert watchdog_interval_s({}) is None


def test_progress_monitor_flags_only_waiting_work_that_does_not_move() -> None:
    """Idle stages never stall; a stage with waiting, unfinished work does."""
    waiting, done = [0], [0]
    monitor = ProgressMonitor(
        [Probe("pipeline", lambda: waiting[0], lambda: done[0])], stall_s=1.0
    )
    start = time.monotonic()
    assert monitor.stalled(start + 5.0) == []  # idle
    waiting[0] = 3
    assert monitor.stalled(start + 5.5) == []  # work arrived just now
    assert monitor.stalled(start + 6.6) == ["pipeline"]
    done[0] = 1
    assert monitor.stalled(start + 6.7) == []  # it moved again
    assert monitor.stalled(start + 7.8) == ["pipeline"]


async def test_a_stalled_pipeline_stops_the_watchdog_pings(notify_dir: Path) -> None:
    """While a queue holds work no consumer takes, no WATCHDOG=1 is sent."""
    path = str(notify_dir / "notify")
    listener = NotifySocket(path)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    queue: asyncio.Queue[int] = asyncio.Queue()
    finished = [0]
    consuming = asyncio.Event()
    consuming.set()

    async def consume() -> None:
        while True:
            await consuming.wait()
            await queue.get()
            finished[0] += 1

    async def produce() -> None:
        while True:
            queue.put_nowait(1)
            await asyncio.sleep(0.01)

    monitor = ProgressMonitor(
        [Probe("pipeline", queue.qsize, lambda: finished[0])], stall_s=0.3
    )
    async with asyncio.TaskGroup() as tasks:
        workers = [tasks.create_task(consume()), tasks.create_task(produce())]
        watchdog = tasks.create_task(run_watchdog(notifier, monitor, timeout_s=0.2))
        await asyncio.sleep(0.5)
        healthy = len(listener.firsts())

        consuming.clear()  # the consumer stops taking work: the pipeline stalls
        await asyncio.sleep(0.5)  # stall_s passes
        stalled_at = len(listener.firsts())
        await asyncio.sleep(0.8)
        still_stalled = len(listener.firsts())

        consuming.set()
        await asyncio.sleep(0.4)
        recovered = len(listener.firsts())
        for task in (*workers, watchdog):
            task.cancel()
    listener.close()
    notifier.close()

    assert healthy >= 5  # every 0.05 s
    assert still_stalled == stalled_at  # not one ping while stalled
    assert recovered > still_stalled


async def test_a_blocked_event_loop_sends_no_pings(notify_dir: Path) -> None:
    """The pings come from the event loop: a loop stuck in a call sends none."""
    path = str(notify_dir / "notify")
    listener = NotifySocket(path)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    monitor = ProgressMonitor([], stall_s=1.0)
    watchdog = asyncio.create_task(run_watchdog(notifier, monitor, timeout_s=0.2))
    await asyncio.sleep(0.3)
    before = len(listener.drain())
    time.sleep(0.6)  # noqa: ASYNC251 - the loop is blocked on purpose
    await asyncio.sleep(0.2)
    after = len(listener.drain())
    watchdog.cancel()
    await asyncio.gather(watchdog, return_exceptions=True)
    listener.close()
    notifier.close()

    # A pinger beside the loop would have sent 0.8 s / 0.05 s = 16; the loop's
    # task sends only in the 0.2 s it ran (plus scheduling slack).
    assert before >= 3
    assert after - before <= 6


@pytest.mark.slow
def test_daemon_notifies_ready_watchdog_reload_and_stopping(
    tmp_path: Path, notify_dir: Path
) -> None:
    """READY, periodic WATCHDOG, RELOADING then READY on SIGHUP, STOPPING at the end."""
    path = str(notify_dir / "notify")
    listener = NotifySocket(path)
    config = write_main(tmp_path / "config", tmp_path / "gateway.db")
    write_tool(config, "etch-01")
    daemon = Daemon(
        config,
        tmp_path / "gateway.log",
        env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(WATCHDOG_USEC)},
    )
    try:
        wait_until(lambda: "READY=1" in listener.firsts(), 30, "READY=1")
        ready = next(m for m in listener.drain() if m[0] == "READY=1")
        assert ready[1].startswith("STATUS=")
        assert "tools up" in ready[1]
        before = listener.firsts().count("WATCHDOG=1")
        time.sleep(1.0)
        assert listener.firsts().count("WATCHDOG=1") - before >= 3

        daemon.send(signal.SIGHUP)
        wait_until(
            lambda: listener.firsts().count("READY=1") >= 2, 20, "READY=1 after reload"
        )
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    firsts = [f for f in listener.firsts() if f not in ("WATCHDOG=1",)]
    listener.close()
    order = [f for f in firsts if not f.startswith("STATUS=")]
    assert order == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    # The watchdog stops with the daemon: no ping after STOPPING=1.
    all_firsts = [fields[0] for _, fields in listener.messages]
    assert "WATCHDOG=1" not in all_firsts[all_firsts.index("STOPPING=1") :]
