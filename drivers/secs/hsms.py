"""HSMS-SS (SEMI E37, E37.1): framing, the session state machine and its timers.

One :class:`HsmsConnection` is one TCP connection carrying one session. It frames
messages (4-byte length, 10-byte header, SECS-II text), answers the control
messages (Select, Deselect, Linktest, Separate, Reject), matches replies to open
transactions by their system bytes, and enforces the E37 timers:

- T3: a primary with the W-bit gets its reply in time, or the transaction is
  cancelled (:class:`ReplyTimeout`); the session stays selected.
- T6: a control transaction (Select, Deselect, Linktest) gets its response in time,
  or the link has failed (:class:`ControlTimeout`).
- T7: a connection is selected in time after TCP connect, or it is closed
  (:class:`NotSelectedTimeout`).
- T8: once a message has begun, no gap between its bytes exceeds T8
  (:class:`InterCharacterTimeout`).
- T5 separates connect attempts; the driver enforces it, as it owns the attempts.

Every reason the link fails is a :class:`CommunicationFailure`;
:meth:`HsmsConnection.run` raises it when the session ends, and every open
transaction fails with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar

import structlog

from drivers.secs.codec import FrameError, Item, decode, encode

__all__ = [
    "CONTROL_SESSION",
    "CommunicationFailure",
    "ConnectionClosed",
    "ControlTimeout",
    "Header",
    "HsmsConnection",
    "HsmsError",
    "InterCharacterTimeout",
    "MalformedFrame",
    "Message",
    "NotSelectedByPeer",
    "NotSelectedTimeout",
    "RejectReason",
    "ReplyTimeout",
    "SType",
    "SelectRefused",
    "SelectStatus",
    "Separated",
    "Timers",
    "TransactionAborted",
]

log = structlog.get_logger(__name__)

LENGTH_BYTES = 4
HEADER_BYTES = 10
CONTROL_SESSION = 0xFFFF  # session id of Select/Deselect/Linktest/Separate in HSMS-SS
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_HEADER = struct.Struct(">HBBBBI")
_LENGTH = struct.Struct(">I")
_WBIT = 0x80
_SYSTEM_MASK = 0xFFFFFFFF
CLOSE_TIMEOUT_S = 1.0  # bound on waiting for the socket to close


class SType(enum.IntEnum):
    """HSMS session types (header byte 5)."""

    DATA = 0
    SELECT_REQ = 1
    SELECT_RSP = 2
    DESELECT_REQ = 3
    DESELECT_RSP = 4
    LINKTEST_REQ = 5
    LINKTEST_RSP = 6
    REJECT_REQ = 7
    SEPARATE_REQ = 9


class SelectStatus(enum.IntEnum):
    """Select.rsp status (header byte 3)."""

    ESTABLISHED = 0
    ALREADY_ACTIVE = 1
    NOT_READY = 2
    EXHAUSTED = 3


class RejectReason(enum.IntEnum):
    """Reject.req reason code (header byte 3)."""

    STYPE_NOT_SUPPORTED = 1
    PTYPE_NOT_SUPPORTED = 2
    TRANSACTION_NOT_OPEN = 3
    NOT_SELECTED = 4


@dataclass(frozen=True, slots=True)
class Timers:
    """The E37 timers in seconds, SEMI's typical values by default.

    ``linktest`` is the period of Linktest.req heartbeats (not an E37 timer);
    0 sends none.
    """

    t3: float = 45.0
    t5: float = 10.0
    t6: float = 5.0
    t7: float = 10.0
    t8: float = 5.0
    linktest: float = 60.0


@dataclass(frozen=True, slots=True)
class Header:
    """The 10-byte HSMS message header.

    For a data message ``stream`` and ``function`` are the SECS-II ones; for a
    control message they are header bytes 2 and 3 (a status or reason code).
    """

    session_id: int
    stream: int
    function: int
    wbit: bool
    stype: int
    system: int
    ptype: int = 0

    def pack(self) -> bytes:
        """Return the header's 10 bytes."""
        return _HEADER.pack(
            self.session_id,
            (_WBIT if self.wbit else 0) | self.stream,
            self.function,
            self.ptype,
            self.stype,
            self.system,
        )

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        """Parse 10 header bytes; :class:`FrameError` if there are not 10."""
        if len(data) != HEADER_BYTES:
            raise FrameError(f"header of {len(data)} bytes, expected {HEADER_BYTES}")
        session, byte2, function, ptype, stype, system = _HEADER.unpack(data)
        if stype == SType.DATA:
            return cls(session, byte2 & 0x7F, function, bool(byte2 & _WBIT), 0, system)
        return cls(session, byte2, function, False, stype, system, ptype)


@dataclass(frozen=True, slots=True)
class Message:
    """One HSMS message: header and SECS-II text (undecoded)."""

    header: Header
    text: bytes = b""

    def frame(self) -> bytes:
        """Return the message as sent: length prefix, header, text."""
        return (
            _LENGTH.pack(HEADER_BYTES + len(self.text)) + self.header.pack() + self.text
        )

    @property
    def item(self) -> Item | None:
        """The decoded text; raises :class:`FrameError` if it is malformed."""
        return decode(self.text)

    @property
    def name(self) -> str:
        """``S6F11`` for a data message, the SType's name for a control one."""
        header = self.header
        if header.stype == SType.DATA:
            return f"S{header.stream}F{header.function}"
        try:
            return SType(header.stype).name
        except ValueError:
            return f"SType {header.stype}"


class HsmsError(Exception):
    """A failed HSMS transaction or session."""


class CommunicationFailure(HsmsError):
    """The link is unusable and the connection is closed (E37's NOT CONNECTED)."""


class ConnectionClosed(CommunicationFailure):
    """The TCP connection ended or failed."""


class ControlTimeout(CommunicationFailure):
    """T6: no response to a Select, Deselect or Linktest request."""


class NotSelectedTimeout(CommunicationFailure):
    """T7: the connection was not selected in time."""


class InterCharacterTimeout(CommunicationFailure):
    """T8: a message stopped arriving partway."""


class MalformedFrame(CommunicationFailure):
    """A frame that cannot be parsed, so the byte stream cannot be trusted."""


class NotSelectedByPeer(CommunicationFailure):
    """The peer rejected a data message because it is not selected."""


class Separated(CommunicationFailure):
    """A Separate.req ended the session."""


class SelectRefused(CommunicationFailure):
    """Select.rsp with a non-zero status."""

    def __init__(self, status: int) -> None:
        try:
            meaning = SelectStatus(status).name.lower().replace("_", " ")
        except ValueError:
            meaning = "unknown status"
        super().__init__(f"select refused with status {status} ({meaning})")
        self.status = status


class ReplyTimeout(HsmsError):
    """T3: a primary got no reply; the transaction is cancelled, the link stays."""


class TransactionAborted(HsmsError):
    """The peer aborted a transaction: SxF0, an S9Fx naming it, or a Reject.req."""


PrimaryHandler = Callable[["HsmsConnection", Message], Awaitable[None]]
SelectPolicy = Callable[[], SelectStatus]


def _always_established() -> SelectStatus:
    return SelectStatus.ESTABLISHED


class HsmsConnection:
    """One HSMS-SS session over an open TCP stream.

    ``handler`` is awaited for each primary data message received while selected,
    in arrival order, and answers it with :meth:`reply`; it must not block for
    long, since nothing else is read meanwhile. ``select_policy`` gives the status
    answered to a Select.req. Call :meth:`run` (it owns the reading) and, for the
    active side, :meth:`select`.
    """

    NOT_SELECTED: ClassVar[str] = "not selected"
    SELECTED: ClassVar[str] = "selected"
    NOT_CONNECTED: ClassVar[str] = "not connected"

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        session_id: int,
        timers: Timers,
        handler: PrimaryHandler,
        name: str,
        select_policy: SelectPolicy = _always_established,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.session_id = session_id
        self.timers = timers
        self.name = name
        self.state = self.NOT_SELECTED
        self.failure: CommunicationFailure | None = None
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._select_policy = select_policy
        self._max_message_bytes = max_message_bytes
        self._system = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._control: dict[int, asyncio.Future[Message]] = {}
        self._selected = asyncio.Event()
        self._deselected = asyncio.Event()
        self._deselected.set()
        self._closed = asyncio.Event()

    @property
    def peer(self) -> str:
        """``host:port`` of the other end."""
        peer = self._writer.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if peer else "?"

    @property
    def is_selected(self) -> bool:
        """Whether the session is in E37's SELECTED state."""
        return self.state == self.SELECTED

    # Session life.

    async def run(self) -> None:
        """Read, answer and time the session until it fails; raise why.

        Raises:
            CommunicationFailure: always, once the session has ended; also when
                it was ended by :meth:`separate` or :meth:`close`.
        """
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._receive(), name=f"{self.name}.receive")
                tasks.create_task(self._watch_t7(), name=f"{self.name}.t7")
                tasks.create_task(self._watch_closed(), name=f"{self.name}.closed")
                if self.timers.linktest > 0:
                    tasks.create_task(
                        self._linktest_loop(), name=f"{self.name}.linktest"
                    )
        except* CommunicationFailure as faults:
            first = faults.exceptions[0]
            if isinstance(first, CommunicationFailure):
                self._shutdown(first)
        finally:
            self._shutdown(ConnectionClosed("the session was stopped"))
        failure = self.failure
        assert failure is not None
        raise failure

    async def select(self) -> None:
        """Select the session (active side): Select.req, Select.rsp within T6.

        Raises:
            SelectRefused: a non-zero SelectStatus (the connection is closed).
            ControlTimeout: no Select.rsp within T6 (the connection is closed).
            ConnectionClosed: the connection ended meanwhile.
        """
        response = await self._control_transaction(SType.SELECT_REQ)
        status = response.header.function
        if status != SelectStatus.ESTABLISHED:
            failure = SelectRefused(status)
            self._shutdown(failure)
            raise failure
        self._set_state(self.SELECTED)

    async def wait_selected(self) -> None:
        """Return once the peer has selected the session (passive side)."""
        selected = asyncio.ensure_future(self._selected.wait())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({selected, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            selected.cancel()
            closed.cancel()
        if not self._selected.is_set():
            raise self.failure or ConnectionClosed("closed before select")

    async def deselect(self) -> None:
        """End the selection but keep TCP: Deselect.req, Deselect.rsp within T6.

        A refusal (non-zero DeselectStatus) leaves the session selected. Once
        deselected, T7 runs again: select anew within it or the link is closed.

        Raises:
            TransactionAborted: the peer refused to deselect.
            ControlTimeout: no Deselect.rsp within T6 (the connection is closed).
        """
        response = await self._control_transaction(SType.DESELECT_REQ)
        if response.header.function != 0:
            raise TransactionAborted(
                f"deselect refused with status {response.header.function}"
            )
        self._set_state(self.NOT_SELECTED)

    async def linktest(self) -> None:
        """Send Linktest.req; raise :class:`ControlTimeout` without a rsp in T6."""
        await self._control_transaction(SType.LINKTEST_REQ)

    async def separate(self) -> None:
        """End the session with Separate.req and close the connection."""
        if self.failure is None and self.is_selected:
            self._write_control(SType.SEPARATE_REQ, next(self._system))
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._writer.drain()
        self._shutdown(Separated("separated by this end"))

    async def close(self) -> None:
        """Separate if selected, close the socket; never raises."""
        with contextlib.suppress(OSError):
            await self.separate()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._writer.wait_closed()

    # Data messages.

    async def request(
        self,
        stream: int,
        function: int,
        body: Item | bytes | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Message:
        """Send a primary with the W-bit and return its reply (within T3).

        Raises:
            ReplyTimeout: no reply within T3 (or ``timeout_s``).
            TransactionAborted: the reply is SxF0, or the peer named the
                message in an S9Fx or rejected it.
            CommunicationFailure: the link failed meanwhile.
        """
        system = self._next_system()
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[system] = future
        try:
            await self._send_data(stream, function, True, system, body)
            try:
                async with asyncio.timeout(timeout_s or self.timers.t3):
                    reply = await future
            except TimeoutError:
                raise ReplyTimeout(
                    f"S{stream}F{function}: no reply within T3 = "
                    f"{timeout_s or self.timers.t3:g} s"
                ) from None
        finally:
            self._pending.pop(system, None)
        if reply.header.function == 0:
            raise TransactionAborted(f"S{stream}F{function}: aborted with S{stream}F0")
        return reply

    async def send(
        self, stream: int, function: int, body: Item | bytes | None = None
    ) -> None:
        """Send a primary without the W-bit (no reply expected)."""
        await self._send_data(stream, function, False, self._next_system(), body)

    async def reply(
        self, primary: Message, function: int, body: Item | bytes | None = None
    ) -> None:
        """Answer ``primary`` with ``function`` (0 aborts) and its system bytes."""
        header = primary.header
        await self._send_data(header.stream, function, False, header.system, body)

    async def _send_data(
        self,
        stream: int,
        function: int,
        wbit: bool,
        system: int,
        body: Item | bytes | None,
    ) -> None:
        if self.failure is not None:
            raise self.failure
        if not self.is_selected:
            raise ConnectionClosed("the session is not selected")
        text = body if isinstance(body, bytes) else encode(body)
        header = Header(self.session_id, stream, function, wbit, SType.DATA, system)
        self._writer.write(Message(header, text).frame())
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            failure = ConnectionClosed(f"send failed: {exc}")
            self._shutdown(failure)
            raise failure from exc

    def _next_system(self) -> int:
        return next(self._system) & _SYSTEM_MASK or next(self._system)

    # Control messages.

    async def _control_transaction(self, stype: SType) -> Message:
        if self.failure is not None:
            raise self.failure
        system = self._next_system()
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._control[system] = future
        try:
            self._write_control(stype, system)
            async with asyncio.timeout(self.timers.t6):
                return await future
        except TimeoutError:
            failure = ControlTimeout(
                f"no response to {stype.name} within T6 = {self.timers.t6:g} s"
            )
            self._shutdown(failure)
            raise failure from None
        finally:
            self._control.pop(system, None)

    def _write_control(
        self,
        stype: SType,
        system: int,
        byte2: int = 0,
        byte3: int = 0,
        session_id: int = CONTROL_SESSION,
    ) -> None:
        header = Header(session_id, byte2, byte3, False, stype, system)
        self._writer.write(Message(header).frame())

    def _reject(self, header: Header, reason: RejectReason) -> None:
        # Byte 2 names what was rejected: the PType for reason 2, else the SType.
        byte2 = header.ptype if reason == RejectReason.PTYPE_NOT_SUPPORTED else 0
        if reason == RejectReason.STYPE_NOT_SUPPORTED:
            byte2 = header.stype
        log.debug(
            "hsms_reject_sent",
            connection=self.name,
            stype=header.stype,
            reason=reason.name,
        )
        self._write_control(
            SType.REJECT_REQ, header.system, byte2, reason, header.session_id
        )

    # Reading.

    async def _receive(self) -> None:
        while True:
            message = await self._read_message()
            await self._dispatch(message)

    async def _read_message(self) -> Message:
        prefix = await self._read_exactly(LENGTH_BYTES, first_unbounded=True)
        (length,) = _LENGTH.unpack(prefix)
        if length < HEADER_BYTES:
            raise self._fail(MalformedFrame(f"message length {length} < 10"))
        if length > self._max_message_bytes:
            raise self._fail(
                MalformedFrame(
                    f"message of {length} bytes exceeds the limit of "
                    f"{self._max_message_bytes}"
                )
            )
        data = await self._read_exactly(length)
        return Message(Header.unpack(data[:HEADER_BYTES]), data[HEADER_BYTES:])

    async def _read_exactly(self, n: int, first_unbounded: bool = False) -> bytes:
        # T8 bounds each gap between bytes of one message, not the whole message.
        chunks: list[bytes] = []
        got = 0
        while got < n:
            try:
                if first_unbounded and got == 0:
                    chunk = await self._reader.read(n)
                else:
                    async with asyncio.timeout(self.timers.t8):
                        chunk = await self._reader.read(n - got)
            except TimeoutError:
                raise self._fail(
                    InterCharacterTimeout(
                        f"message stalled after {got} of {n} bytes for "
                        f"T8 = {self.timers.t8:g} s"
                    )
                ) from None
            except OSError as exc:
                raise self._fail(ConnectionClosed(f"receive failed: {exc}")) from exc
            if not chunk:
                detail = "closed by the peer"
                if got:
                    detail += f" after {got} of {n} bytes of a message"
                raise self._fail(ConnectionClosed(detail))
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    async def _dispatch(self, message: Message) -> None:
        header = message.header
        if header.ptype != 0:
            self._reject(header, RejectReason.PTYPE_NOT_SUPPORTED)
            return
        if header.stype == SType.DATA:
            await self._dispatch_data(message)
            return
        self._dispatch_control(message)

    async def _dispatch_data(self, message: Message) -> None:
        header = message.header
        if not self.is_selected:
            self._reject(header, RejectReason.NOT_SELECTED)
            return
        if header.function % 2 == 0:
            future = self._pending.get(header.system)
            if future is not None and not future.done():
                future.set_result(message)
            else:
                log.debug(
                    "hsms_unmatched_reply", connection=self.name, message=message.name
                )
            return
        if header.stream == 9:
            self._fail_transaction_named_in(message)
        try:
            await self._handler(self, message)
        except CommunicationFailure:
            raise
        except Exception:
            # A handler bug must neither end the session nor leave the peer
            # waiting for T3: the transaction is aborted instead.
            log.exception(
                "hsms_handler_failed", connection=self.name, message=message.name
            )
            if header.wbit:
                await self.reply(message, 0)

    def _fail_transaction_named_in(self, message: Message) -> None:
        # S9F1/3/5/7/11 carry MHEAD, the header of the offending message.
        if message.header.function not in (1, 3, 5, 7, 11):
            return
        try:
            item = message.item
            mhead = item.value if item is not None else b""
            if not isinstance(mhead, bytes) or len(mhead) != HEADER_BYTES:
                return
            system = Header.unpack(mhead).system
        except FrameError:
            return
        future = self._pending.get(system)
        if future is not None and not future.done():
            future.set_exception(
                TransactionAborted(f"the equipment answered {message.name}")
            )

    def _dispatch_control(self, message: Message) -> None:
        header = message.header
        stype = header.stype
        if stype == SType.SELECT_REQ:
            status = (
                SelectStatus.ALREADY_ACTIVE
                if self.is_selected
                else self._select_policy()
            )
            self._write_control(SType.SELECT_RSP, header.system, 0, status)
            if status == SelectStatus.ESTABLISHED:
                self._set_state(self.SELECTED)
        elif stype == SType.DESELECT_REQ:
            self._write_control(SType.DESELECT_RSP, header.system)
            self._set_state(self.NOT_SELECTED)
        elif stype == SType.LINKTEST_REQ:
            self._write_control(SType.LINKTEST_RSP, header.system)
        elif stype == SType.SEPARATE_REQ:
            raise self._fail(Separated("the peer separated the session"))
        elif stype == SType.REJECT_REQ:
            self._fail_rejected(header)
        elif stype in (SType.SELECT_RSP, SType.DESELECT_RSP, SType.LINKTEST_RSP):
            future = self._control.get(header.system)
            if future is None or future.done():
                self._reject(header, RejectReason.TRANSACTION_NOT_OPEN)
                return
            if stype == SType.SELECT_RSP and header.function == 0:
                # Selected now, not when select() resumes: the equipment's first
                # data message may be the very next frame read.
                self._set_state(self.SELECTED)
            future.set_result(message)
        else:
            self._reject(header, RejectReason.STYPE_NOT_SUPPORTED)

    def _fail_rejected(self, header: Header) -> None:
        if header.function == RejectReason.NOT_SELECTED and self.is_selected:
            # The peer does not consider the session selected (equipment that
            # lost a select race does this): the session is unusable.
            raise self._fail(
                NotSelectedByPeer("the peer rejected a data message: not selected")
            )
        error = TransactionAborted(f"rejected by the peer, reason {header.function}")
        for table in (self._pending, self._control):
            future = table.get(header.system)
            if future is not None and not future.done():
                future.set_exception(error)

    # Timers.

    async def _watch_t7(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.timers.t7):
                    await self._selected.wait()
            except TimeoutError:
                raise self._fail(
                    NotSelectedTimeout(f"not selected within T7 = {self.timers.t7:g} s")
                ) from None
            await self._deselected.wait()

    async def _linktest_loop(self) -> None:
        while True:
            await asyncio.sleep(self.timers.linktest)
            if self.is_selected:
                await self.linktest()

    async def _watch_closed(self) -> None:
        # Ends run() when select(), separate() or a failed send closed the link.
        await self._closed.wait()
        assert self.failure is not None
        raise self.failure

    # State.

    def _set_state(self, state: str) -> None:
        if self.failure is not None:
            return
        self.state = state
        if state == self.SELECTED:
            self._deselected.clear()
            self._selected.set()
        else:
            self._selected.clear()
            self._deselected.set()

    def _fail(self, failure: CommunicationFailure) -> CommunicationFailure:
        self._shutdown(failure)
        return self.failure or failure

    def _shutdown(self, failure: CommunicationFailure) -> None:
        """Record the first failure, fail every open transaction, close the socket."""
        if self.failure is not None:
            return
        self.failure = failure
        self.state = self.NOT_CONNECTED
        self._selected.clear()
        self._closed.set()
        for table in (self._pending, self._control):
            for future in table.values():
                if not future.done():
                    future.set_exception(failure)
        self._writer.close()
