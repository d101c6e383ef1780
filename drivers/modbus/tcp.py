"""A lean Modbus TCP client: pipelined reads straight into a poll's buffer.

One :class:`TcpLink` is one connection. :meth:`TcpLink.read` queues a poll's
requests; up to ``concurrency`` of them are in flight at once, and each reply,
parsed in the protocol's ``data_received``, releases the next request at once. A
poll therefore costs one task switch, not one per request: this is what keeps
100k tags a second within a few percent of a core (pymodbus's client spends about
270 µs of CPU per request, see the README).

Every reply must answer a request in flight: its transaction id, unit id and
function code are checked. A reply that answers nothing, or a malformed frame,
means the connection is out of step; it is dropped and every poll waiting on it
fails, so the supervisor reopens it. A request with no reply within its timeout
fails the link the same way, unless the timeout is one silent unit among several
(see :mod:`drivers.modbus.silence`): then that unit's requests of the poll are
answered with exception 0x0B, and a late reply to them is recognised by its
transaction id and dropped.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from drivers.base import ConnectFailed, ConnectionLost, DriverError
from drivers.batch import UInt8Array
from drivers.modbus.errors import FrameError, RequestTimeout, TransactionMismatch
from drivers.modbus.plan import Request
from drivers.modbus.silence import SILENT_UNIT, SilenceJudge

__all__ = ["TcpLink"]

_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
_READ = struct.Struct(">HHHBBHH")  # MBAP + function code, address, count
_MBAP_SIZE = 7
_READ_LENGTH = 6  # unit id + function code + address + count
_EXCEPTION_FLAG = 0x80
_MAX_LENGTH = 254  # unit id + the largest PDU (253 bytes)
_TID_MODULUS = 1 << 16
# How long replies may gather before a long poll reads them (see _coalesce).
COALESCE_S = 0.002
# Smallest window that gathers replies: a smaller one would be starved by the
# pause (half a window per COALESCE_S is its most).
COALESCE_WINDOW = 8
# Transaction ids of requests given up on a silent unit, kept to recognise their
# late replies; far fewer than the 65,536 ids, so none is reused while kept.
_ABANDONED_KEPT = 1024


@dataclass(slots=True, eq=False)
class _Poll:
    """One :meth:`TcpLink.read` call: its requests, buffer and completion."""

    requests: Sequence[Request]
    buffer: memoryview
    exceptions: UInt8Array
    done: asyncio.Future[None]
    remaining: int
    cancelled: bool = False


@dataclass(slots=True)
class _InFlight:
    poll: _Poll
    index: int
    deadline: float  # loop time by which the reply must be in


class TcpLink(asyncio.Protocol):
    """One Modbus TCP connection to ``host:port`` on behalf of tool ``tool``."""

    def __init__(
        self,
        tool: str,
        host: str,
        port: int,
        request_timeout_s: float,
        concurrency: int,
        unit_ids: Iterable[int] = (),
    ) -> None:
        self.tool = tool
        self.host = host
        self.port = port
        self.request_timeout_s = request_timeout_s
        self.concurrency = concurrency
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._rx = bytearray()
        self._queue: deque[tuple[_Poll, int]] = deque()
        self._in_flight: dict[int, _InFlight] = {}
        self._next_tid = 0
        self._error: DriverError | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._silence = SilenceJudge(unit_ids)
        self._abandoned: dict[int, None] = {}

    async def open(self, timeout_s: float) -> None:
        """Connect within ``timeout_s``.

        Raises:
            ConnectFailed: refused, unreachable, or not connected in time.
        """
        where = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(timeout_s):
                await self._loop.create_connection(lambda: self, self.host, self.port)
        except TimeoutError:
            raise ConnectFailed(
                self.tool, f"no Modbus TCP connection to {where} within {timeout_s} s"
            ) from None
        except OSError as exc:
            raise ConnectFailed(
                self.tool, f"cannot connect to {where}: {exc.strerror or exc}"
            ) from exc

    def close(self) -> None:
        """Close the connection; polls still waiting fail with ConnectionLost."""
        self._fail(ConnectionLost(self.tool, "connection closed by the gateway"))

    async def read(self, requests: Sequence[Request], buffer: bytearray) -> UInt8Array:
        """Send ``requests``, put each reply's data at its offset in ``buffer``.

        Returns:
            Per request, the exception code it was answered with (0 = data).

        Raises:
            ConnectionLost: the link failed (timeout, out of step, reset).
        """
        if self._error is not None:
            raise self._error
        poll = _Poll(
            requests,
            memoryview(buffer),
            np.zeros(len(requests), dtype=np.uint8),
            self._loop.create_future(),
            len(requests),
        )
        if not requests:
            return poll.exceptions
        self._queue.extend((poll, i) for i in range(len(requests)))
        self._send_next()
        try:
            await poll.done
        except asyncio.CancelledError:
            poll.cancelled = True
            raise
        return poll.exceptions

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (asyncio sets TCP_NODELAY on TCP sockets)."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every waiting poll: the device or the network closed the link."""
        detail = f": {exc}" if exc else ""
        self._fail(
            ConnectionLost(
                self.tool, f"connection to {self.host}:{self.port} lost{detail}"
            )
        )

    def data_received(self, data: bytes) -> None:
        """Parse every complete reply in the received bytes."""
        rx = self._rx
        rx += data
        position = 0
        available = len(rx)
        try:
            while available - position >= _MBAP_SIZE:
                tid, protocol, length, unit_id = _MBAP.unpack_from(rx, position)
                if protocol != 0 or length < 2 or length > _MAX_LENGTH:
                    raise FrameError(
                        self.tool,
                        f"bad MBAP header from {self.host}:{self.port} "
                        f"(protocol id {protocol}, length {length})",
                    )
                end = position + 6 + length
                if end > available:
                    break
                self._answer(tid, unit_id, rx, position + _MBAP_SIZE, end)
                position = end
        except ConnectionLost as exc:
            self._fail(exc)
            return
        del rx[:position]
        self._send_next()
        if self._queue and self._in_flight and self.concurrency >= COALESCE_WINDOW:
            self._coalesce()

    def _coalesce(self) -> None:
        # A long poll keeps the window full. Rather than wake up for each reply
        # as it arrives, let replies gather for a moment and take them in one
        # read: a few milliseconds of latency on a poll that spans many round
        # trips anyway, for several times fewer wake-ups and system calls.
        transport = self._transport
        if transport is None or self._resume is not None:
            return
        transport.pause_reading()
        self._resume = self._loop.call_later(COALESCE_S, self._resume_reading)

    def _resume_reading(self) -> None:
        self._resume = None
        if self._transport is not None:
            self._transport.resume_reading()

    # internals

    def _answer(
        self, tid: int, unit_id: int, rx: bytearray, pdu: int, end: int
    ) -> None:
        pending = self._in_flight.pop(tid, None)
        if pending is None:
            if tid in self._abandoned:
                del self._abandoned[tid]
                self._silence.answered()  # late, but the link is alive
                return
            raise TransactionMismatch(
                self.tool,
                f"reply with transaction id {tid} answers no request in flight: "
                "connection out of step",
            )
        poll = pending.poll
        request = poll.requests[pending.index]
        function = rx[pdu]
        if unit_id != request.unit_id:
            raise TransactionMismatch(
                self.tool,
                f"reply to {request.describe()} came from unit {unit_id}: "
                "connection out of step",
            )
        self._silence.answered()
        if function == request.function_code | _EXCEPTION_FLAG and end - pdu == 2:
            poll.exceptions[pending.index] = rx[pdu + 1]
        elif function == request.function_code and rx[pdu + 1] == request.byte_count:
            if end - pdu != 2 + request.byte_count:
                raise FrameError(
                    self.tool, f"reply to {request.describe()} has a wrong length"
                )
            if not poll.cancelled:
                start = request.offset
                poll.buffer[start : start + request.byte_count] = rx[pdu + 2 : end]
        else:
            raise FrameError(
                self.tool,
                f"reply to {request.describe()} has function {function} and "
                f"{rx[pdu + 1]} bytes, expected function {request.function_code} "
                f"and {request.byte_count} bytes",
            )
        poll.remaining -= 1
        if poll.remaining == 0 and not poll.done.done():
            poll.done.set_result(None)

    def _send_next(self) -> None:
        transport = self._transport
        items = self._queue
        in_flight = self._in_flight
        if transport is None or self._error is not None or not items:
            return
        # Refill the window only once it is half empty, so that one write (and
        # one wake-up of the device) carries several requests.
        if len(in_flight) > self.concurrency // 2:
            return
        frames = []
        deadline = self._loop.time() + self.request_timeout_s
        while items and len(in_flight) < self.concurrency:
            poll, index = items.popleft()
            if poll.cancelled:
                continue
            request = poll.requests[index]
            tid = self._next_tid
            self._next_tid = (tid + 1) % _TID_MODULUS
            frames.append(
                _READ.pack(
                    tid,
                    0,
                    _READ_LENGTH,
                    request.unit_id,
                    request.function_code,
                    request.address,
                    request.count,
                )
            )
            in_flight[tid] = _InFlight(poll, index, deadline)
        if frames:
            transport.write(b"".join(frames))
            if self._watchdog is None:
                self._watchdog = self._loop.call_at(deadline, self._check_deadlines)

    def _check_deadlines(self) -> None:
        # One timer watches every request in flight: the oldest one (the dict
        # keeps send order) has the earliest deadline. Cheaper than a timer each.
        self._watchdog = None
        if not self._in_flight:
            return
        tid, oldest = next(iter(self._in_flight.items()))
        if self._loop.time() < oldest.deadline:
            self._watchdog = self._loop.call_at(oldest.deadline, self._check_deadlines)
            return
        request = oldest.poll.requests[oldest.index]
        if not self._silence.unit_is_silent():
            self._fail(
                RequestTimeout(
                    self.tool,
                    f"no reply to {request.describe()} (transaction {tid}) from "
                    f"{self.host}:{self.port} within {self.request_timeout_s} s",
                )
            )
            return
        self._give_up_unit(oldest.poll, request.unit_id)
        self._send_next()
        if self._watchdog is None and self._in_flight:
            deadline = next(iter(self._in_flight.values())).deadline
            self._watchdog = self._loop.call_at(deadline, self._check_deadlines)

    def _give_up_unit(self, poll: _Poll, unit_id: int) -> None:
        """Answer ``poll``'s requests to a silent ``unit_id`` with SILENT_UNIT."""
        requests = poll.requests
        for tid, pending in list(self._in_flight.items()):
            if pending.poll is poll and requests[pending.index].unit_id == unit_id:
                del self._in_flight[tid]
                self._abandoned[tid] = None
                _answer_silent(poll, pending.index)
        while len(self._abandoned) > _ABANDONED_KEPT:
            del self._abandoned[next(iter(self._abandoned))]
        kept: deque[tuple[_Poll, int]] = deque()
        for item in self._queue:
            if item[0] is poll and requests[item[1]].unit_id == unit_id:
                _answer_silent(poll, item[1])
            else:
                kept.append(item)
        self._queue = kept

    def _fail(self, error: DriverError) -> None:
        if self._error is None:
            self._error = error
        for timer in (self._watchdog, self._resume):
            if timer is not None:
                timer.cancel()
        self._watchdog = self._resume = None
        for pending in self._in_flight.values():
            _reject(pending.poll, self._error)
        self._in_flight.clear()
        for poll, _ in self._queue:
            _reject(poll, self._error)
        self._queue.clear()
        if self._transport is not None:
            transport, self._transport = self._transport, None
            transport.close()


def _answer_silent(poll: _Poll, index: int) -> None:
    poll.exceptions[index] = SILENT_UNIT
    poll.remaining -= 1
    if poll.remaining == 0 and not poll.done.done():
        poll.done.set_result(None)


def _reject(poll: _Poll, error: DriverError) -> None:
    # A cancelled poll has no one awaiting it: an exception set on it would only
    # be reported as never retrieved.
    if not poll.cancelled and not poll.done.done():
        poll.done.set_exception(error)
