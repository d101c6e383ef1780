"""A GEM equipment served over HSMS (passive), driven by a :class:`Simulation`.

What the simulated equipment offers, derived from the tool file and the simulation:

- status variables: each tag whose source names an ``svid`` (name = tag name,
  units = tag unit, value = the tag's simulated signal, F8); data variables: each
  tag whose source names a ``vid``. Every one of them may appear in a report.
- equipment constants: ``ECID 1`` EstablishCommunicationsTimeout (s).
- collection events: ``CEID 100`` ProcessStarted and ``CEID 101``
  ProcessCompleted, alternating every half ``cycle_s``; reports are whatever the
  host defines (S2F33/S2F35/S2F37), kept across connections as equipment does.
- alarms: one per scheduled fault that names a tag (ALID = the fault's position
  in ``faults``, from 1), set while the fault is active and cleared after it.
- a ``disconnect`` fault drops the session and refuses select (status 2)
  during its window.

After select the equipment sends S1F13, as tools do, while the host sends its own.
Malformed messages are answered with S9F7, unknown streams with S9F3, unknown
functions with S9F5, each carrying the offending header (MHEAD).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import structlog

from drivers.base import DriverSettings
from drivers.secs.codec import (
    Format,
    FrameError,
    Item,
    decode_scalar_list,
    id_of,
)
from drivers.secs.driver import HsmsSettings, HsmsSource
from drivers.secs.gem import ACCEPTED, ALARM_SET_BIT
from drivers.secs.hsms import (
    CommunicationFailure,
    HsmsConnection,
    HsmsError,
    Message,
    SelectStatus,
    Timers,
)
from drivers.signals import FaultSpec
from drivers.simulation import Simulation, ToolSimulator

if TYPE_CHECKING:
    from gateway.config.models import ToolConfig

__all__ = ["CEID_PROCESS_COMPLETED", "CEID_PROCESS_STARTED", "HsmsSimulator"]

log = structlog.get_logger(__name__)

MDLN = "EDGESIM"
SOFTREV = "1.0.0"
CEID_PROCESS_STARTED = 100
CEID_PROCESS_COMPLETED = 101
ECID_ESTABLISH_TIMEOUT = 1
ESTABLISH_TIMEOUT_S = 10
DEFAULT_CYCLE_S = 10.0
ALARM_CHECK_S = 0.1  # how often fault windows are checked for alarm changes
# Reject codes of the report set-up messages (E5).
DRACK_ALREADY_DEFINED, DRACK_UNKNOWN_VID = 3, 4
LRACK_ALREADY_LINKED, LRACK_UNKNOWN_CEID, LRACK_UNKNOWN_RPTID = 3, 4, 5
ERACK_UNKNOWN_CEID = 1
ACKC5_ERROR = 1
ONLACK_ALREADY_ONLINE = 2
COMMACK_DENIED = 1  # E30: communication denied, try again later
# S9 functions the equipment sends about a message it cannot take.
S9_UNKNOWN_STREAM, S9_UNKNOWN_FUNCTION, S9_ILLEGAL_DATA = 3, 5, 7
_CATEGORY_OF_FAULT = {
    "spike": 4,  # parameter control error
    "step": 4,
    "drift": 3,  # parameter control warning
    "noise_burst": 3,
    "stuck": 6,  # equipment status warning
    "dropout": 6,
}
_F8_SCALAR = np.dtype([("f", "u1"), ("n", "u1"), ("v", ">f8")])
_F8_FORMAT_BYTE = Format.F8 << 2 | 1
_SUPPORTED_STREAMS = frozenset({1, 2, 5, 6})
# The equipment side needs no heartbeat of its own: the host sends Linktest.req.
EQUIPMENT_TIMERS = Timers(t3=10.0, t5=1.0, t6=5.0, t7=10.0, t8=5.0, linktest=0.0)


@dataclass(slots=True)
class _Alarm:
    alid: int
    text: str
    category: int
    fault: FaultSpec
    set: bool = False


@dataclass(slots=True)
class _GemState:
    """What the host configured; kept across connections, as equipment does."""

    reports: dict[int | str, tuple[int | str, ...]] = field(default_factory=dict)
    links: dict[int, list[int | str]] = field(default_factory=dict)
    enabled_events: set[int] = field(default_factory=set)
    enabled_alarms: set[int] = field(default_factory=set)
    online: bool = False


class HsmsSimulator(ToolSimulator):
    """A passive HSMS GEM equipment serving a tool's simulated signals.

    ``cycle_s`` is the period of the ProcessStarted/ProcessCompleted pair;
    ``timers`` the equipment's HSMS timers. :attr:`reply_latencies_s` collects the
    time from each S6F11 sent to its S6F12 received.
    """

    kind: ClassVar[str] = "hsms"

    def __init__(
        self,
        tool: ToolConfig,
        simulation: Simulation,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        cycle_s: float = DEFAULT_CYCLE_S,
        timers: Timers = EQUIPMENT_TIMERS,
    ) -> None:
        super().__init__(tool, simulation, host, port)
        self.cycle_s = cycle_s
        self.timers = timers
        self.variables: dict[int, int] = {}  # VID/SVID -> tag index
        self.status_variables: dict[int, int] = {}
        for i, tag in enumerate(tool.tags):
            source = tag.source
            if not isinstance(source, HsmsSource):
                continue
            if source.svid is not None:
                self.status_variables[source.svid] = i
                self.variables[source.svid] = i
            if source.vid is not None:
                self.variables[source.vid] = i
        self.events = {
            CEID_PROCESS_STARTED: "ProcessStarted",
            CEID_PROCESS_COMPLETED: "ProcessCompleted",
        }
        self.alarms = {
            i + 1: _Alarm(
                i + 1,
                f"{fault.tag} {fault.kind.replace('_', ' ')}"[:120],
                _CATEGORY_OF_FAULT.get(fault.kind, 7),
                fault,
            )
            for i, fault in enumerate(simulation.faults)
            if fault.tag is not None
        }
        self.state = _GemState()
        self.reply_latencies_s: list[float] = []
        self.events_sent = 0
        self.establish_denials = 0
        """How many of the host's next S1F13 to deny (COMMACK 1), as a busy tool."""
        self.establish_requests = 0
        """S1F13 received from the host."""
        self.alarms_sent = 0
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._connection: HsmsConnection | None = None
        self._dataid = 0

    # Life cycle.

    async def start(self) -> None:
        """Listen on ``host:port`` (an ephemeral port when 0)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop the session; never raises."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._sessions):
            task.cancel()
        for task in list(self._sessions):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._sessions.clear()

    def driver_settings(self) -> DriverSettings:
        """The tool's ``[driver]`` settings, active, pointed at this simulator."""
        settings = self.tool.driver
        if not isinstance(settings, HsmsSettings):
            raise TypeError(f"{self.tool.id}: the hsms simulator needs an hsms tool")
        return settings.model_copy(
            update={"host": self.host, "port": self.port, "mode": "active"}
        )

    @property
    def connection(self) -> HsmsConnection | None:
        """The selected session, if any."""
        return self._connection

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        connection = HsmsConnection(
            reader,
            writer,
            session_id=0,
            timers=self.timers,
            handler=self._handle,
            name=f"hsms-sim[{self.tool.id}]",
            select_policy=self._select_status,
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(connection.run())
                tasks.create_task(self._equipment(connection))
        except* (CommunicationFailure, OSError):
            pass
        finally:
            if self._connection is connection:
                self._connection = None
            await connection.close()
            self._sessions.discard(task)

    def _select_status(self) -> SelectStatus:
        if self.disconnected():
            return SelectStatus.NOT_READY
        if self._connection is not None and self._connection.failure is None:
            return SelectStatus.EXHAUSTED
        return SelectStatus.ESTABLISHED

    async def _equipment(self, connection: HsmsConnection) -> None:
        """The equipment's own activity once selected: S1F13, events, alarms."""
        await connection.wait_selected()
        self._connection = connection
        with contextlib.suppress(HsmsError):
            await connection.request(1, 13, Item.L(Item.A(MDLN), Item.A(SOFTREV)))
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._process_cycle(connection))
            tasks.create_task(self._watch_faults(connection))

    async def _process_cycle(self, connection: HsmsConnection) -> None:
        half = self.cycle_s / 2
        ceids = (CEID_PROCESS_STARTED, CEID_PROCESS_COMPLETED)
        n = 0
        while True:
            await asyncio.sleep(half)
            await self.trigger(ceids[n % 2], connection)
            n += 1

    async def _watch_faults(self, connection: HsmsConnection) -> None:
        while True:
            if self.disconnected():
                await connection.separate()
                return
            now_s = self.elapsed_s()
            for alarm in self.alarms.values():
                active = _fault_active(alarm.fault, now_s, self.simulation.step_s)
                if active != alarm.set:
                    alarm.set = active
                    await self._report_alarm(connection, alarm)
            await asyncio.sleep(ALARM_CHECK_S)

    # What the equipment sends.

    async def trigger(
        self, ceid: int, connection: HsmsConnection | None = None
    ) -> bool:
        """Send an S6F11 for ``ceid`` if it is enabled; return whether it was sent."""
        connection = connection or self._connection
        if connection is None or ceid not in self.state.enabled_events:
            return False
        body = self._event_report(ceid)
        sent = time.perf_counter()
        try:
            await connection.request(6, 11, body)
        except HsmsError as exc:
            log.warning("hsms_sim_event_unacknowledged", ceid=ceid, error=str(exc))
            return False
        self.reply_latencies_s.append(time.perf_counter() - sent)
        self.events_sent += 1
        return True

    async def _report_alarm(self, connection: HsmsConnection, alarm: _Alarm) -> None:
        if alarm.alid not in self.state.enabled_alarms:
            return
        alcd = alarm.category | (ALARM_SET_BIT if alarm.set else 0)
        body = Item.L(Item.B(alcd), Item.U4(alarm.alid), Item.A(alarm.text))
        try:
            await connection.request(5, 1, body)
        except HsmsError as exc:
            log.warning(
                "hsms_sim_alarm_unacknowledged", alid=alarm.alid, error=str(exc)
            )
            return
        self.alarms_sent += 1

    def _event_report(self, ceid: int) -> Item:
        self._dataid += 1
        reports = [
            Item.L(_id_item(rptid), Item.L(*self._values(self.state.reports[rptid])))
            for rptid in self.state.links.get(ceid, ())
            if rptid in self.state.reports
        ]
        return Item.L(Item.U4(self._dataid), Item.U4(ceid), Item.L(*reports))

    def _values(self, vids: Sequence[int | str]) -> list[Item]:
        indices = [self.variables.get(v) if isinstance(v, int) else None for v in vids]
        known = np.array([i for i in indices if i is not None], dtype=np.intp)
        values, _ = self.sample_now(known) if known.size else (np.empty(0), None)
        it = iter(values.tolist())
        return [Item.L() if i is None else Item.F8(next(it)) for i in indices]

    # What the equipment answers.

    async def _handle(self, connection: HsmsConnection, message: Message) -> None:
        header = message.header
        handler = _HANDLERS.get((header.stream, header.function))
        if handler is None:
            if header.wbit or header.stream not in _SUPPORTED_STREAMS:
                known_stream = header.stream in _SUPPORTED_STREAMS
                function = S9_UNKNOWN_FUNCTION if known_stream else S9_UNKNOWN_STREAM
                await connection.send(9, function, Item(Format.B, header.pack()))
            return
        try:
            reply = handler(self, message)
        except FrameError as exc:
            log.warning("hsms_sim_illegal_data", message=message.name, error=str(exc))
            await connection.send(9, S9_ILLEGAL_DATA, Item(Format.B, header.pack()))
            return
        if header.wbit:
            await connection.reply(message, header.function + 1, reply)

    def _s1f1(self, message: Message) -> Item:
        return Item.L(Item.A(MDLN), Item.A(SOFTREV))

    def _s1f3(self, message: Message) -> bytes | Item:
        requested = _requested_ids(message)
        if requested is None:
            requested = list(self.status_variables)
        indices = [
            self.status_variables.get(v) if isinstance(v, int) else None
            for v in requested
        ]
        if all(i is not None for i in indices):
            # Every SVID known: the reply is a fixed-stride run of F8 items.
            values, _ = self.sample_now(np.array(indices, dtype=np.intp))
            rows = np.empty(len(values), dtype=_F8_SCALAR)
            rows["f"], rows["n"], rows["v"] = _F8_FORMAT_BYTE, 8, values
            return _list_header(len(values)) + rows.tobytes()
        return Item.L(*self._values(requested))

    def _s1f11(self, message: Message) -> Item:
        requested = _requested_ids(message) or list(self.status_variables)
        entries = []
        for svid in requested:
            index = self.status_variables.get(svid) if isinstance(svid, int) else None
            tag = self.tool.tags[index] if index is not None else None
            entries.append(
                Item.L(
                    _id_item(svid),
                    Item.A(tag.name if tag else ""),
                    Item.A(tag.unit if tag else ""),
                )
            )
        return Item.L(*entries)

    def _s1f13(self, message: Message) -> Item:
        self.establish_requests += 1
        if self.establish_denials > 0:
            self.establish_denials -= 1
            return Item.L(Item.B(COMMACK_DENIED), Item.L())
        return Item.L(Item.B(ACCEPTED), Item.L(Item.A(MDLN), Item.A(SOFTREV)))

    def _s1f15(self, message: Message) -> Item:
        self.state.online = False
        return Item.B(ACCEPTED)

    def _s1f17(self, message: Message) -> Item:
        was_online, self.state.online = self.state.online, True
        return Item.B(ONLACK_ALREADY_ONLINE if was_online else ACCEPTED)

    def _s2f13(self, message: Message) -> Item:
        requested = _requested_ids(message) or [ECID_ESTABLISH_TIMEOUT]
        return Item.L(
            *(
                Item.U4(ESTABLISH_TIMEOUT_S)
                if ecid == ECID_ESTABLISH_TIMEOUT
                else Item.L()
                for ecid in requested
            )
        )

    def _s2f29(self, message: Message) -> Item:
        return Item.L(
            Item.L(
                Item.U4(ECID_ESTABLISH_TIMEOUT),
                Item.A("EstablishCommunicationsTimeout"),
                Item.U4(1),
                Item.U4(120),
                Item.U4(ESTABLISH_TIMEOUT_S),
                Item.A("s"),
            )
        )

    def _s2f33(self, message: Message) -> Item:
        item = message.item
        if item is None:
            raise FrameError("S2F33 without a body")
        _, definitions = item.fields(2)
        state = self.state
        if not definitions.items:
            state.reports.clear()
            state.links.clear()
            return Item.B(ACCEPTED)
        parsed = []
        for definition in definitions.items:
            rptid_item, vids_item = definition.fields(2)
            parsed.append((id_of(rptid_item), tuple(id_of(v) for v in vids_item.items)))
        for rptid, vids in parsed:
            if vids and rptid in state.reports:
                return Item.B(DRACK_ALREADY_DEFINED)
            if any(v not in self.variables for v in vids):
                return Item.B(DRACK_UNKNOWN_VID)
        for rptid, vids in parsed:
            if vids:
                state.reports[rptid] = vids
            else:
                state.reports.pop(rptid, None)
                for linked in state.links.values():
                    with contextlib.suppress(ValueError):
                        linked.remove(rptid)
        return Item.B(ACCEPTED)

    def _s2f35(self, message: Message) -> Item:
        item = message.item
        if item is None:
            raise FrameError("S2F35 without a body")
        _, links = item.fields(2)
        state = self.state
        parsed = []
        for link in links.items:
            ceid_item, rptids_item = link.fields(2)
            parsed.append((id_of(ceid_item), [id_of(r) for r in rptids_item.items]))
        for ceid, rptids in parsed:
            if ceid not in self.events:
                return Item.B(LRACK_UNKNOWN_CEID)
            if any(r not in state.reports for r in rptids):
                return Item.B(LRACK_UNKNOWN_RPTID)
            assert isinstance(ceid, int)
            if any(r in state.links.get(ceid, ()) for r in rptids):
                return Item.B(LRACK_ALREADY_LINKED)
        for ceid, rptids in parsed:
            assert isinstance(ceid, int)
            if rptids:
                state.links.setdefault(ceid, []).extend(rptids)
            else:
                state.links.pop(ceid, None)
        return Item.B(ACCEPTED)

    def _s2f37(self, message: Message) -> Item:
        item = message.item
        if item is None:
            raise FrameError("S2F37 without a body")
        ceed, ceids = item.fields(2)
        enable = bool(ceed.scalar())
        requested = [id_of(c) for c in ceids.items] or list(self.events)
        if any(c not in self.events for c in requested):
            return Item.B(ERACK_UNKNOWN_CEID)
        chosen = {c for c in requested if isinstance(c, int)}
        if enable:
            self.state.enabled_events |= chosen
        else:
            self.state.enabled_events -= chosen
        return Item.B(ACCEPTED)

    def _s5f3(self, message: Message) -> Item:
        item = message.item
        if item is None:
            raise FrameError("S5F3 without a body")
        aled, alid_item = item.fields(2)
        enable = bool(int(aled.scalar()) & ALARM_SET_BIT)
        is_empty = isinstance(alid_item.value, np.ndarray) and alid_item.value.size == 0
        chosen = set(self.alarms) if is_empty else {id_of(alid_item)}
        if not chosen <= set(self.alarms):
            return Item.B(ACKC5_ERROR)
        alids = {a for a in chosen if isinstance(a, int)}
        if enable:
            self.state.enabled_alarms |= alids
        else:
            self.state.enabled_alarms -= alids
        return Item.B(ACCEPTED)

    def _s5f5(self, message: Message) -> Item:
        requested = _requested_ids(message) or list(self.alarms)
        return self._alarm_list([a for a in requested if a in self.alarms])

    def _s5f7(self, message: Message) -> Item:
        return self._alarm_list(sorted(self.state.enabled_alarms))

    def _alarm_list(self, alids: Sequence[int | str]) -> Item:
        entries = []
        for alid in alids:
            alarm = self.alarms[alid]  # type: ignore[index]
            alcd = alarm.category | (ALARM_SET_BIT if alarm.set else 0)
            entries.append(
                Item.L(Item.B(alcd), Item.U4(alarm.alid), Item.A(alarm.text))
            )
        return Item.L(*entries)

    def _s6f15(self, message: Message) -> Item:
        item = message.item
        if item is None:
            raise FrameError("S6F15 without a body")
        ceid = id_of(item)
        if not isinstance(ceid, int) or ceid not in self.events:
            return Item.L()
        return self._event_report(ceid)


def _requested_ids(message: Message) -> list[int | str] | None:
    """The IDs of a ``<L[n] ID...>`` body; ``None`` for an empty list (meaning all)."""
    text = message.text
    try:
        values, valid = decode_scalar_list(text)
    except FrameError:
        values, valid = np.empty(0), np.empty(0, dtype=bool)
    if valid.size and valid.all():
        return [int(v) for v in values]
    item = message.item
    if item is None:
        raise FrameError(f"{message.name} without a body")
    ids = [id_of(element) for element in item.items]
    return ids or None


def _list_header(count: int) -> bytes:
    if count <= 0xFF:
        return bytes((Format.L << 2 | 1, count))
    if count <= 0xFFFF:
        return bytes((Format.L << 2 | 2,)) + count.to_bytes(2, "big")
    return bytes((Format.L << 2 | 3,)) + count.to_bytes(3, "big")


def _id_item(value: int | str) -> Item:
    return Item.U4(value) if isinstance(value, int) else Item.A(value)


def _fault_active(fault: FaultSpec, now_s: float, step_s: float) -> bool:
    since = now_s - fault.at_s
    if since < 0:
        return False
    duration = fault.duration_s if fault.duration_s is not None else step_s
    if fault.repeat_s is not None:
        since %= fault.repeat_s
    return since < duration


_HANDLERS: dict[tuple[int, int], Any] = {
    (1, 1): HsmsSimulator._s1f1,
    (1, 3): HsmsSimulator._s1f3,
    (1, 11): HsmsSimulator._s1f11,
    (1, 13): HsmsSimulator._s1f13,
    (1, 15): HsmsSimulator._s1f15,
    (1, 17): HsmsSimulator._s1f17,
    (2, 13): HsmsSimulator._s2f13,
    (2, 29): HsmsSimulator._s2f29,
    (2, 33): HsmsSimulator._s2f33,
    (2, 35): HsmsSimulator._s2f35,
    (2, 37): HsmsSimulator._s2f37,
    (5, 3): HsmsSimulator._s5f3,
    (5, 5): HsmsSimulator._s5f5,
    (5, 7): HsmsSimulator._s5f7,
    (6, 15): HsmsSimulator._s6f15,
}
