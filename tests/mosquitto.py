"""A private Mosquitto broker on 127.0.0.1 and a subscriber for the tests.

Each :class:`Broker` writes its own configuration in its own temporary folder,
listens on a free ephemeral port of 127.0.0.1 only, and can be stopped and started
again on the same port to simulate an outage. The system's Mosquitto service is
never touched.

Started as root, Mosquitto drops to the ``mosquitto`` user before it reads the
password file, TLS keys or its persistence folder, so everything it reads lives in
a folder that user can traverse, in files made group-readable by it
(:func:`share_with_broker`).
"""

from __future__ import annotations

import asyncio
import grp
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

__all__ = [
    "LOOPBACK",
    "MOSQUITTO",
    "Broker",
    "MakeBroker",
    "MakeSubscriber",
    "Received",
    "Subscriber",
    "eventually",
    "free_port",
    "share_with_broker",
    "wait_until",
]

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
LOOPBACK = "127.0.0.1"
BROKER_USER = "mosquitto"

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
SUBSCRIBE_TIMEOUT_S = 10.0
PROBE_INTERVAL_S = 0.02
PROBE_CONNECT_TIMEOUT_S = 0.2
LOG_TAIL_CHARS = 2_000
# Files the broker reads: owner read/write, the broker's group read.
SHARED_FILE_MODE = 0o640
# The broker's folder: the broker's group may enter it and, for persistence, write.
SHARED_DIR_MODE = 0o770


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def share_with_broker(path: Path, mode: int = SHARED_FILE_MODE) -> Path:
    """Make ``path`` readable by the broker after it dropped to its own user."""
    if os.geteuid() == 0:
        try:
            gid = grp.getgrnam(BROKER_USER).gr_gid
        except KeyError:
            gid = -1
        if gid >= 0:
            os.chown(path, -1, gid)
    path.chmod(mode)
    return path


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true; raise :class:`TimeoutError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(PROBE_INTERVAL_S)


async def eventually(
    predicate: Callable[[], bool], within_s: float, what: str = "condition"
) -> None:
    """Like :func:`wait_until`, but yields to the event loop between polls."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {within_s} s")
        await asyncio.sleep(PROBE_INTERVAL_S)


@dataclass
class Broker:
    """One private Mosquitto process on ``127.0.0.1:port``.

    ``options`` are extra lines for the global part of the configuration,
    ``listener_options`` extra lines under the listener (TLS files, for example).
    With ``persistence`` the broker keeps sessions and queued messages across
    :meth:`stop` and :meth:`start`, so a persistent subscriber misses nothing
    during an outage.
    """

    directory: Path
    port: int = field(default_factory=free_port)
    options: tuple[str, ...] = ("allow_anonymous true",)
    listener_options: tuple[str, ...] = ()
    persistence: bool = False
    host: str = LOOPBACK
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def create(
        cls,
        options: Iterable[str] = ("allow_anonymous true",),
        listener_options: Iterable[str] = (),
        *,
        persistence: bool = False,
    ) -> Broker:
        """Return a stopped broker with a fresh folder the broker user can enter."""
        if MOSQUITTO is None:
            raise FileNotFoundError("mosquitto is not installed (not on PATH)")
        directory = Path(tempfile.mkdtemp(prefix="edge-gateway-mosquitto-"))
        share_with_broker(directory, SHARED_DIR_MODE)
        return cls(
            directory=directory,
            options=tuple(options),
            listener_options=tuple(listener_options),
            persistence=persistence,
        )

    @property
    def config_file(self) -> Path:
        """The configuration file this broker is started with."""
        return self.directory / "mosquitto.conf"

    @property
    def log_file(self) -> Path:
        """Where the broker's own log (stderr) goes."""
        return self.directory / "mosquitto.log"

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self) -> str:
        """Return the end of the broker's log, for failure messages."""
        if not self.log_file.exists():
            return ""
        return self.log_file.read_text(errors="replace")[-LOG_TAIL_CHARS:]

    def _write_config(self) -> None:
        lines = [
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.directory}/",
            ]
        else:
            lines.append("persistence false")
        lines += list(self.options)
        # An explicit listener on the loopback address only.
        lines.append(f"listener {self.port} {self.host}")
        lines += list(self.listener_options)
        self.config_file.write_text("\n".join(lines) + "\n")
        share_with_broker(self.config_file)

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the broker and return once its port accepts connections."""
        if self.running:
            return
        assert MOSQUITTO is not None
        self._write_config()
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if not self.running:
                raise RuntimeError(f"mosquitto exited on start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"mosquitto did not listen:\n{self.log_tail()}")
            time.sleep(PROBE_INTERVAL_S)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(
                (self.host, self.port), timeout=PROBE_CONNECT_TIMEOUT_S
            ):
                return True
        except OSError:
            return False

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open, nothing is answered."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused broker run again (SIGCONT)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and wait for it to exit."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            # A paused broker would not act on SIGTERM until continued.
            process.send_signal(signal.SIGCONT)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)

    def close(self) -> None:
        """Stop the broker and delete its folder."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class Received:
    """One message a :class:`Subscriber` saw, in arrival order."""

    topic: str
    payload: bytes
    retain: bool


class Subscriber:
    """A paho client in its own thread that records what it receives, in order.

    It uses a persistent MQTT 3.1.1 session (``clean_session=False``) and
    subscribes again on every connect, so with a persistent broker it receives
    what was published while it was cut off by an outage.
    """

    def __init__(
        self,
        broker: Broker,
        topic_filter: str,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        tls: dict[str, Any] | None = None,
    ) -> None:
        self.topic_filter = topic_filter
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls is not None:
            self._client.tls_set(**tls)
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._broker = broker

    def __enter__(self) -> Subscriber:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, timeout: float = SUBSCRIBE_TIMEOUT_S) -> None:
        """Connect, subscribe, and return once the broker confirmed the filter."""
        self._client.connect(self._broker.host, self._broker.port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"no SUBACK for {self.topic_filter} within {timeout} s")

    def stop(self) -> None:
        """Disconnect and stop the client's thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        if not reason_code.is_failure:
            client.subscribe(self.topic_filter, qos=1)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: object,
    ) -> None:
        self._subscribed.set()

    def _on_message(
        self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage
    ) -> None:
        with self._lock:
            self._messages.append(
                Received(message.topic, bytes(message.payload), bool(message.retain))
            )

    @property
    def messages(self) -> list[Received]:
        """A snapshot of everything received so far, oldest first."""
        with self._lock:
            return list(self._messages)

    def payloads(self, topic: str | None = None) -> list[bytes]:
        """Payloads received so far, on ``topic`` only when given."""
        return [m.payload for m in self.messages if topic is None or m.topic == topic]


# The factory fixtures of conftest.py: make_broker(...) and make_subscriber(...).
MakeBroker = Callable[..., Broker]
MakeSubscriber = Callable[..., Subscriber]
