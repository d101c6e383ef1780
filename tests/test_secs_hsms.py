"""HSMS session state machine against scripted byte streams on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import ConnectionLost, PollGroup
from drivers.batch import BAD_COMM, GOOD
from drivers.secs.codec import Item, encode
from drivers.secs.driver import HsmsDriver, HsmsSettings, HsmsSource
from drivers.secs.gem import HostResponder
from drivers.secs.hsms import (
    CommunicationFailure,
    ControlTimeout,
    HsmsConnection,
    InterCharacterTimeout,
    MalformedFrame,
    Message,
    NotSelectedTimeout,
    ReplyTimeout,
    SelectRefused,
    Separated,
    Timers,
    TransactionAborted,
)

FAST = Timers(t3=0.3, t5=0.05, t6=0.3, t7=0.3, t8=0.2, linktest=0.0)
WITHIN_S = 5.0  # bound on anything a test waits for


@dataclass
class Frame:
    """One frame as the scripted peer saw it, parsed with struct alone."""

    session: int
    byte2: int
    byte3: int
    ptype: int
    stype: int
    system: int
    text: bytes
    raw: bytes

    @property
    def sf(self) -> tuple[int, int]:
        return self.byte2 & 0x7F, self.byte3


def frame(
    stype: int,
    system: int,
    byte2: int = 0,
    byte3: int = 0,
    session: int = 0xFFFF,
    text: bytes = b"",
    ptype: int = 0,
) -> bytes:
    """Bytes of one HSMS message, built by hand."""
    header = struct.pack(">HBBBBI", session, byte2, byte3, ptype, stype, system)
    return struct.pack(">I", 10 + len(text)) + header + text


def data(
    stream: int,
    function: int,
    system: int,
    body: Item | None = None,
    wbit: bool = False,
) -> bytes:
    """Bytes of a data message."""
    byte2 = stream | (0x80 if wbit else 0)
    return frame(0, system, byte2, function, session=0, text=encode(body))


Answer = Callable[[Frame], bytes | None]


@dataclass
class ScriptedPeer:
    """A TCP peer that records each frame and writes what ``answer`` returns."""

    answer: Answer
    frames: list[Frame] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.writers.append(writer)
        try:
            while True:
                prefix = await reader.readexactly(4)
                (length,) = struct.unpack(">I", prefix)
                body = await reader.readexactly(length)
                fields = struct.unpack(">HBBBBI", body[:10])
                received = Frame(*fields, body[10:], prefix + body)
                self.frames.append(received)
                self.arrived.set()
                reply = self.answer(received)
                if reply:
                    writer.write(reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def until(self, predicate: Callable[[list[Frame]], bool]) -> None:
        """Wait until the frames received satisfy ``predicate``."""
        async with asyncio.timeout(WITHIN_S):
            while not predicate(self.frames):
                self.arrived.clear()
                await self.arrived.wait()

    def send(self, raw: bytes) -> None:
        self.writers[-1].write(raw)

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.server is not None:
            self.server.close()


def select_ok(received: Frame) -> bytes | None:
    """Answer Select.req with status 0, and nothing else."""
    if received.stype == 1:
        return frame(2, received.system)
    return None


@pytest.fixture
async def peer_factory() -> AsyncIterator[Callable[[Answer], ScriptedPeer]]:
    peers: list[ScriptedPeer] = []

    def make(answer: Answer) -> ScriptedPeer:
        peer = ScriptedPeer(answer)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        await peer.stop()


async def no_primaries(connection: HsmsConnection, message: Message) -> None:
    """A handler for tests that expect no primary."""
    raise AssertionError(f"unexpected {message.name}")


async def open_active(
    peer: ScriptedPeer, timers: Timers = FAST, handler=no_primaries
) -> tuple[HsmsConnection, asyncio.Task[None]]:
    """Connect to ``peer`` and start the session's reader."""
    await peer.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
    connection = HsmsConnection(
        reader, writer, session_id=0, timers=timers, handler=handler, name="test"
    )
    return connection, asyncio.create_task(connection.run())


async def finish(run: asyncio.Task[None]) -> None:
    """Stop a session task still running, and collect how it ended."""
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError, CommunicationFailure):
        await run


async def ended(run: asyncio.Task[None]) -> BaseException | None:
    """Wait for the session task and return what it raised."""
    async with asyncio.timeout(WITHIN_S):
        await asyncio.wait({run})
    return run.exception()


async def test_select_sends_the_reference_bytes(peer_factory) -> None:
    """Select.req is the E37 byte vector and Select.rsp 0 selects the session."""
    peer = peer_factory(select_ok)
    connection, run = await open_active(peer)

    await connection.select()

    assert peer.frames[0].raw.hex(" ").upper() == (
        "00 00 00 0A FF FF 00 00 00 01 00 00 00 01"
    )
    assert connection.is_selected
    await connection.close()
    assert isinstance(await ended(run), Separated)
    assert peer.frames[-1].stype == 9  # Separate.req on the way out


async def test_select_refused_closes_the_connection(peer_factory) -> None:
    """A Select.rsp status 3 raises SelectRefused and ends the session."""
    peer = peer_factory(lambda f: frame(2, f.system, 0, 3) if f.stype == 1 else None)
    connection, run = await open_active(peer)

    with pytest.raises(SelectRefused, match="status 3"):
        await connection.select()

    assert isinstance(await ended(run), SelectRefused)


async def test_linktest_without_response_fails_the_link_after_t6(peer_factory) -> None:
    """An unanswered Linktest.req ends the session with ControlTimeout (T6)."""
    peer = peer_factory(select_ok)
    timers = Timers(t3=1, t5=0.05, t6=0.2, t7=1, t8=1, linktest=0.1)
    connection, run = await open_active(peer, timers)
    await connection.select()

    failure = await ended(run)

    assert isinstance(failure, ControlTimeout)
    assert any(f.stype == 5 for f in peer.frames)


async def test_reply_timeout_cancels_only_the_transaction(peer_factory) -> None:
    """A primary without reply raises ReplyTimeout (T3) and the session stays up."""
    answered = False

    def answer(f: Frame) -> bytes | None:
        nonlocal answered
        if f.stype == 1:
            return frame(2, f.system)
        if f.sf == (1, 1) and answered:
            return data(1, 2, f.system, Item.L())
        answered = True
        return None

    peer = peer_factory(answer)
    connection, run = await open_active(peer)
    await connection.select()

    with pytest.raises(ReplyTimeout, match="T3"):
        await connection.request(1, 1)
    reply = await connection.request(1, 1)

    assert reply.item == Item.L()
    assert connection.is_selected
    assert not run.done()
    await connection.close()


async def test_not_selected_within_t7_closes_a_passive_connection() -> None:
    """A passive side closes a connection that is not selected within T7."""
    sessions: list[asyncio.Task[None]] = []

    async def serve(reader, writer) -> None:
        connection = HsmsConnection(
            reader,
            writer,
            session_id=0,
            timers=FAST,
            handler=no_primaries,
            name="passive",
        )
        task = asyncio.current_task()
        assert task is not None
        sessions.append(task)
        await connection.run()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(WITHIN_S):
            assert await reader.read() == b""  # closed by the passive side
        assert isinstance(await ended(sessions[0]), NotSelectedTimeout)
    finally:
        writer.close()
        server.close()


async def test_stalled_message_fails_after_t8(peer_factory) -> None:
    """A message that stops partway ends the session with InterCharacterTimeout."""
    peer = peer_factory(select_ok)
    connection, run = await open_active(peer)
    await connection.select()

    peer.send(struct.pack(">I", 20) + b"\x00\x00\x81")

    failure = await ended(run)
    assert isinstance(failure, InterCharacterTimeout)
    assert "3 of 20" in str(failure)


async def test_length_below_ten_is_a_malformed_frame(peer_factory) -> None:
    """A length prefix under 10 ends the session with MalformedFrame."""
    peer = peer_factory(select_ok)
    connection, run = await open_active(peer)
    await connection.select()

    peer.send(struct.pack(">I", 4) + b"\x00" * 4)

    assert isinstance(await ended(run), MalformedFrame)


async def test_separate_from_the_peer_ends_the_session(peer_factory) -> None:
    """A received Separate.req ends the session and fails open transactions."""
    peer = peer_factory(select_ok)
    connection, run = await open_active(peer)
    await connection.select()
    pending = asyncio.create_task(connection.request(1, 1))
    await asyncio.sleep(0.05)

    peer.send(frame(9, 77))

    assert isinstance(await ended(run), Separated)
    with pytest.raises(Separated):
        await pending


async def test_rejects_what_it_cannot_take(peer_factory) -> None:
    """Data before select, an unknown SType and a PType 1 each get a Reject.req."""
    peer = peer_factory(lambda f: None)
    _, run = await open_active(peer)

    peer.send(data(1, 1, 41, wbit=True))
    peer.send(frame(8, 42))
    peer.send(frame(5, 43, ptype=1))
    peer.send(frame(6, 44))  # a Linktest.rsp nobody asked for
    await peer.until(lambda frames: len([f for f in frames if f.stype == 7]) >= 4)

    rejects = {f.system: f for f in peer.frames if f.stype == 7}
    assert (rejects[41].byte2, rejects[41].byte3, rejects[41].session) == (0, 4, 0)
    assert (rejects[42].byte2, rejects[42].byte3) == (8, 1)
    assert (rejects[43].byte2, rejects[43].byte3) == (1, 2)
    assert rejects[44].byte3 == 3
    await finish(run)


async def test_linktest_request_is_answered_with_its_system_bytes(
    peer_factory,
) -> None:
    """A Linktest.req is answered with Linktest.rsp, also while not selected."""
    peer = peer_factory(lambda f: None)
    _, run = await open_active(peer)

    peer.send(frame(5, 0xABCDEF))
    await peer.until(lambda frames: any(f.stype == 6 for f in frames))

    [response] = [f for f in peer.frames if f.stype == 6]
    assert response.system == 0xABCDEF
    await finish(run)


async def test_abort_reply_and_s9_name_the_failed_transaction(peer_factory) -> None:
    """An SxF0 reply, and an S9F5 carrying the message's header, abort it."""

    def answer(f: Frame) -> bytes | None:
        if f.stype == 1:
            return frame(2, f.system)
        if f.sf == (2, 23):
            return data(9, 5, 900, Item.B(*f.raw[4:14]))
        if f.sf == (1, 15):
            return data(1, 0, f.system)
        return None

    peer = peer_factory(answer)
    connection, run = await open_active(
        peer, handler=HostResponder("t", on_event=None, on_alarm=None)
    )  # type: ignore[arg-type]
    await connection.select()

    with pytest.raises(TransactionAborted, match="S9F5"):
        await connection.request(2, 23, Item.L())
    with pytest.raises(TransactionAborted, match="S1F0"):
        await connection.request(1, 15)
    assert connection.is_selected
    await finish(run)


async def test_host_answers_equipment_primaries(peer_factory) -> None:
    """S1F1, S1F13 are answered; an unknown primary and a malformed S6F11 get SxF0."""
    events = []

    async def on_event(report) -> None:
        events.append(report)

    responder = HostResponder("t", on_event, on_event)  # type: ignore[arg-type]
    peer = peer_factory(select_ok)
    connection, run = await open_active(peer, handler=responder)
    await connection.select()

    peer.send(data(1, 1, 11, wbit=True))
    peer.send(data(1, 13, 12, Item.L(Item.A("M"), Item.A("1")), wbit=True))
    peer.send(data(7, 19, 13, wbit=True))
    peer.send(data(6, 11, 14, Item.L(Item.U4(1)), wbit=True))
    report = Item.L(Item.U1(1), Item.U2(100), Item.L(Item.L(Item.U4(5), Item.L())))
    peer.send(data(6, 11, 15, report, wbit=True))
    await peer.until(lambda frames: len([f for f in frames if f.stype == 0]) >= 5)

    replies = {f.system: f for f in peer.frames if f.stype == 0}
    assert (replies[11].sf, replies[11].text) == ((1, 2), encode(Item.L()))
    assert replies[12].sf == (1, 14)
    assert replies[12].text == encode(Item.L(Item.B(0), Item.L()))
    assert replies[13].sf == (7, 0)
    assert replies[14].sf == (6, 0)
    assert (replies[15].sf, replies[15].text) == ((6, 12), encode(Item.B(0)))
    assert [e.ceid for e in events] == [100]
    await finish(run)


def gem_equipment(*, answer_polls: bool, answer_linktests: int) -> Answer:
    """A scripted GEM equipment: select, S1F13, S1F3 and linktests as told."""
    linktests = 0

    def answer(f: Frame) -> bytes | None:
        nonlocal linktests
        if f.stype == 1:
            return frame(2, f.system)
        if f.stype == 5:
            linktests += 1
            return frame(6, f.system) if linktests <= answer_linktests else None
        if f.sf == (1, 13):
            body = Item.L(Item.B(0), Item.L(Item.A("SCRIPT"), Item.A("1")))
            return data(1, 14, f.system, body)
        if f.sf == (1, 3) and answer_polls:
            return data(1, 4, f.system, Item.L(Item.F8(1.5), Item.U2(7)))
        return None

    return answer


def scripted_driver(port: int, **overrides: object) -> HsmsDriver:
    """A driver of two SVIDs in one read group, without discovery or alarms."""
    values: dict[str, object] = {
        "kind": "hsms",
        "port": port,
        "t3_s": 0.3,
        "t5_s": 0.05,
        "t6_s": 0.3,
        "t7_s": 1.0,
        "linktest_s": 0.0,
        "discover": False,
        "alarms": False,
    }
    settings = HsmsSettings.model_validate(values | overrides)
    group = PollGroup("g", 0.1, (0, 1))
    return HsmsDriver(
        "scripted",
        settings,
        ["a", "b"],
        [HsmsSource(svid=10), HsmsSource(svid=11)],
        [group],
    )


async def test_driver_polls_and_marks_a_group_bad_on_t3(peer_factory) -> None:
    """S1F3 replies become a batch; an unanswered poll gives BAD_COMM, link kept."""
    peer = peer_factory(gem_equipment(answer_polls=True, answer_linktests=0))
    await peer.start()
    driver = scripted_driver(peer.port)
    await driver.connect()
    group = driver.groups[0]

    batch = await driver.read_group(group)
    np.testing.assert_array_equal(batch.values, [[1.5, 7.0]])
    assert (batch.quality == GOOD).all()
    poll = next(f for f in peer.frames if f.sf == (1, 3))
    assert poll.text == encode(Item.L(Item.U4(10), Item.U4(11)))

    peer.answer = gem_equipment(answer_polls=False, answer_linktests=0)
    batch = await driver.read_group(group)
    assert (batch.quality == BAD_COMM).all()
    assert np.isnan(batch.values).all()
    await driver.close()


async def test_driver_linktest_timeout_loses_the_link_and_reconnects(
    peer_factory,
) -> None:
    """An unanswered linktest ends acquire with ConnectionLost; connect works again."""
    peer = peer_factory(gem_equipment(answer_polls=True, answer_linktests=1))
    await peer.start()
    driver = scripted_driver(peer.port, linktest_s=0.1)
    await driver.connect()
    batches = []

    async def sink(batch) -> None:
        batches.append(batch)

    with pytest.raises(ConnectionLost, match="T6"):
        async with asyncio.timeout(WITHIN_S):
            await driver.acquire(sink)
    await driver.close()
    assert batches

    peer.answer = gem_equipment(answer_polls=True, answer_linktests=100)
    await driver.connect()
    batch = await driver.read_group(driver.groups[0])
    assert (batch.quality == GOOD).all()
    await driver.close()


async def test_deselect_returns_to_not_selected_and_t7_runs_again(
    peer_factory,
) -> None:
    """Deselect.rsp 0 leaves TCP open but not selected; T7 then closes the link."""

    def answer(f: Frame) -> bytes | None:
        if f.stype in (1, 3):
            return frame(f.stype + 1, f.system)
        return None

    peer = peer_factory(answer)
    connection, run = await open_active(peer)
    await connection.select()

    await connection.deselect()

    assert not connection.is_selected
    assert [f.stype for f in peer.frames] == [1, 3]
    assert isinstance(await ended(run), NotSelectedTimeout)


async def test_annotated_event_report_is_acknowledged_with_s6f14(
    peer_factory,
) -> None:
    """An S6F13 (values paired with VIDs) gives the same report as an S6F11."""
    reports = []

    async def on_event(report) -> None:
        reports.append(report)

    responder = HostResponder("t", on_event, on_event)  # type: ignore[arg-type]
    peer = peer_factory(select_ok)
    connection, run = await open_active(peer, handler=responder)
    await connection.select()
    pair = Item.L(Item.U4(3001), Item.F8(2.5))
    body = Item.L(Item.U4(1), Item.U4(110), Item.L(Item.L(Item.U4(9), Item.L(pair))))

    peer.send(data(6, 13, 21, body, wbit=True))
    await peer.until(lambda frames: any(f.sf == (6, 14) for f in frames))

    [report] = reports
    assert (report.ceid, report.reports[0][0]) == (110, 9)
    assert report.reports[0][1] == (Item.F8(2.5),)
    await finish(run)


async def _feed(data: bytes) -> BaseException | None:
    """Run a passive session over a socket pair fed ``data`` then EOF."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    connection = HsmsConnection(
        reader,
        writer,
        session_id=0,
        timers=FAST,
        handler=no_primaries,
        name="fuzz",
    )
    run = asyncio.create_task(connection.run())
    theirs.sendall(data)
    theirs.shutdown(socket.SHUT_WR)
    try:
        return await ended(run)
    finally:
        theirs.close()


SELECT_REQ = bytes.fromhex("00 00 00 0A FF FF 00 00 00 01 00 00 00 01")


@given(st.binary(max_size=200))
@settings(max_examples=60, deadline=None)
def test_random_bytes_end_the_session_with_a_communication_failure(
    noise: bytes,
) -> None:
    """Whatever bytes arrive (after a select), the session ends by a link failure."""
    failure = asyncio.run(_feed(SELECT_REQ + noise))
    assert isinstance(failure, CommunicationFailure)
