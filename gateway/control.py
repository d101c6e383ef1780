"""The daemon's status socket: a unix stream socket in the runtime directory.

A client connects, sends one line (``status``) and reads one JSON document (the
status report) until the daemon closes the connection. The socket is created
with mode 0660 in a folder of mode 0750: only the service's user and group (and
root) can ask. Nothing is ever changed through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

__all__ = ["ControlError", "StatusServer", "query_status"]

log = structlog.get_logger(__name__)

REQUEST = b"status\n"
SOCKET_MODE = 0o660
FOLDER_MODE = 0o750
# Bounds on one exchange: a client that says nothing is dropped after this.
REQUEST_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 64
MAX_REPLY_BYTES = 16 * 1024 * 1024

Report = Callable[[], Awaitable[dict[str, Any]]]


class ControlError(Exception):
    """The status socket cannot be used (bound, reached or read)."""


class StatusServer:
    """Serve ``report()`` on the unix socket at ``path``."""

    def __init__(self, path: Path, report: Report) -> None:
        self.path = path
        self._report = report
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind the socket (replacing a stale one) and start serving.

        Raises:
            ControlError: the folder cannot be made, or another daemon answers
                on the socket, or it cannot be bound.
        """
        path = self.path
        try:
            path.parent.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise ControlError(f"cannot create {path.parent}: {exc}") from exc
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise ControlError(f"{path} exists and is not a socket")
            if await asyncio.to_thread(_answers, path):
                raise ControlError(f"another daemon answers on {path}")
            path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o117)  # the socket is born 0660, never wider
        try:
            listener.bind(str(path))
        except OSError as exc:
            listener.close()
            raise ControlError(f"cannot bind {path}: {exc}") from exc
        finally:
            os.umask(old_umask)
        os.chmod(path, SOCKET_MODE)
        self._server = await asyncio.start_unix_server(self._serve, sock=listener)
        log.info("status_socket_listening", path=str(path))

    async def close(self) -> None:
        """Stop serving and remove the socket file. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                request = await reader.readline()
            if request.strip() != REQUEST.strip():
                reply: dict[str, Any] = {"error": "unknown request; send 'status'"}
            else:
                reply = await self._report()
            writer.write(json.dumps(reply).encode())
            await writer.drain()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("status_request_failed", error=str(exc) or type(exc).__name__)
        except Exception:  # a report bug must not end the server
            log.exception("status_report_failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def query_status(path: Path, timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """Ask the daemon on ``path`` for its status report.

    Raises:
        ControlError: nothing answers on ``path``, or the reply is not a report.
    """
    chunks = []
    received = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout_s)
        try:
            client.connect(str(path))
            client.sendall(REQUEST)
            while chunk := client.recv(65536):
                received += len(chunk)
                if received > MAX_REPLY_BYTES:
                    raise ControlError(f"{path}: reply larger than {MAX_REPLY_BYTES}")
                chunks.append(chunk)
        except OSError as exc:
            raise ControlError(f"{path}: {exc.strerror or exc}") from exc
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise ControlError(f"{path}: reply is not JSON: {exc}") from exc
    if not isinstance(reply, dict) or "error" in reply:
        raise ControlError(f"{path}: unexpected reply {str(reply)[:200]}")
    return reply
