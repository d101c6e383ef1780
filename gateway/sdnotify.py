"""The service manager's notification protocol, without libsystemd.

systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service: a unix datagram
socket, given as a path or, with a leading ``@``, as an abstract name. Each
notification is one datagram of ``KEY=VALUE`` lines (``READY=1``,
``STATUS=...``, ``WATCHDOG=1``, ``RELOADING=1``, ``STOPPING=1``). Without the
variable every call does nothing, so the daemon runs the same by hand.

``$WATCHDOG_USEC`` (with ``$WATCHDOG_PID`` naming this process, when set) asks
for ``WATCHDOG=1`` at least that often; :func:`watchdog_interval_s` reads it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

__all__ = ["Notifier", "watchdog_interval_s"]

log = structlog.get_logger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
_US_PER_S = 1_000_000
# systemd cuts STATUS= at this length; a longer line would be cut mid-word.
MAX_STATUS_CHARS = 200


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """Return the watchdog timeout the service manager asked for, in seconds.

    ``None`` when there is none, when it is not a positive integer, or when
    ``$WATCHDOG_PID`` names another process.
    """
    env = os.environ if environ is None else environ
    pid = env.get(WATCHDOG_PID_ENV)
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get(WATCHDOG_USEC_ENV, ""))
    except ValueError:
        return None
    return usec / _US_PER_S if usec > 0 else None


def _address(value: str) -> str | bytes:
    # An abstract socket name starts with a NUL byte; systemd writes it as "@".
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends notifications to ``$NOTIFY_SOCKET``; does nothing without it.

    A failed send is logged once (``sd_notify_failed``) and never raised: the
    service manager going away must not stop the daemon.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        target = env.get(NOTIFY_SOCKET_ENV, "")
        self._address: str | bytes | None = _address(target) if target else None
        self._socket: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        """True when a service manager listens for notifications."""
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; return True if it left."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(message, self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("sd_notify_failed", error=str(exc), fields=list(fields))
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        """Tell the manager start-up (or a reload) is complete."""
        return self.send("READY=1", _status(status))

    def reloading(self) -> bool:
        """Tell the manager a reload began (with the monotonic time it asks for)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Tell the manager the daemon is shutting down."""
        return self.send("STOPPING=1", _status("stopping"))

    def status(self, status: str) -> bool:
        """Update the one-line status ``systemctl status`` shows."""
        return self.send(_status(status))

    def watchdog(self) -> bool:
        """Ping the watchdog: the daemon makes progress."""
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket. Idempotent."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _status(text: str) -> str:
    line = " ".join(text.split())
    return "STATUS=" + line[:MAX_STATUS_CHARS]
