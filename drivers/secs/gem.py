"""GEM (SEMI E30) host behaviour: the scenarios a data-collection host performs.

Functions here drive one selected :class:`~drivers.secs.hsms.HsmsConnection`:
establish communications (S1F13), discover status variables and equipment constants
(S1F11, S2F29), set up event reports (S2F37, S2F33, S2F35), enable alarms (S5F5,
S5F3). :class:`HostResponder` answers what the equipment sends: S1F1, S1F13, S6F11,
S5F1, S2F17 and the rest of E30's host duties; other primaries get SxF0.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import structlog

from drivers.secs.codec import Format, FrameError, Item, id_of, scalar_list
from drivers.secs.hsms import (
    HsmsConnection,
    Message,
    ReplyTimeout,
    TransactionAborted,
)

__all__ = [
    "ACCEPTED",
    "AlarmReport",
    "EstablishDenied",
    "EventReport",
    "EventSetup",
    "HostResponder",
    "ReportSetup",
    "alarm_severity",
    "discover_equipment_constants",
    "discover_status_variables",
    "enable_alarms",
    "establish_communications",
    "parse_alarm_report",
    "parse_event_report",
    "setup_reports",
]

log = structlog.get_logger(__name__)

ACCEPTED = 0  # COMMACK, DRACK, LRACK, ERACK, ACKC5, ACKC6, ACKC10, GRANT6 alike
ALARM_SET_BIT = 0x80
ALARM_CATEGORY_MASK = 0x7F
ALARM_ENABLE = 0x80  # ALED
# ALCD categories (E5) by how urgently an operator must act.
_CRITICAL_CATEGORIES = frozenset({1, 2, 4, 5})  # safety, control error, irrecoverable
_WARNING_CATEGORIES = frozenset({3, 6, 8})  # warnings, data integrity
# Replies of the host to equipment primaries (E30), besides event and alarm reports.
_HOST_TIME_FORMAT = "%Y%m%d%H%M%S"


@dataclass(frozen=True, slots=True)
class ReportSetup:
    """A report the host defines: RPTID and its VIDs, in order."""

    rptid: int
    vids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class EventSetup:
    """A collection event the host links reports to and enables."""

    ceid: int
    rptids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class EventReport:
    """A received S6F11: DATAID, CEID and each report's values in VID order."""

    dataid: int | str
    ceid: int | str
    reports: tuple[tuple[int | str, tuple[Item, ...]], ...]


@dataclass(frozen=True, slots=True)
class AlarmReport:
    """A received S5F1: the ALCD byte, ALID and ALTX."""

    alcd: int
    alid: int | str
    altx: str

    @property
    def is_set(self) -> bool:
        """Whether ALCD's bit 8 says the alarm was set (else cleared)."""
        return bool(self.alcd & ALARM_SET_BIT)

    @property
    def category(self) -> int:
        """ALCD's bits 1-7: the alarm's category."""
        return self.alcd & ALARM_CATEGORY_MASK


class EstablishDenied(Exception):
    """The equipment did not accept S1F13 within the configured attempts."""


def alarm_severity(category: int) -> Literal["info", "warning", "critical"]:
    """Map an ALCD category to an alert severity."""
    if category in _CRITICAL_CATEGORIES:
        return "critical"
    if category in _WARNING_CATEGORIES:
        return "warning"
    return "info"


def id_item(fmt: Format, value: int) -> Item:
    """An ID in the tool's configured format (U4 unless the tool wants another)."""
    return Item.array(fmt, (value,))


def _ack(reply: Message, what: str) -> int:
    """Return the one-byte ack code of ``reply``; :class:`FrameError` if malformed."""
    item = reply.item
    if item is None or item.format is not Format.B or len(item.value) != 1:
        raise FrameError(f"{reply.name}: expected <B ack> for {what}, got {item!r}")
    return int(item.scalar())


def _body(message: Message) -> Item:
    item = message.item
    if item is None:
        raise FrameError(f"{message.name} without a body")
    return item


# Scenarios the host runs.


async def establish_communications(
    connection: HsmsConnection, delay_s: float, attempts: int
) -> tuple[str, str]:
    """Send S1F13 until COMMACK 0; return the equipment's (MDLN, SOFTREV).

    A denial (COMMACK 1), an abort or a T3 timeout is retried after ``delay_s``.

    Raises:
        EstablishDenied: no acceptance in ``attempts`` tries.
    """
    reason = ""
    for attempt in range(1, attempts + 1):
        try:
            reply = await connection.request(1, 13, Item.L())
            commack_item, info = _body(reply).fields(2)
            commack = int(commack_item.scalar())
            if commack == ACCEPTED:
                names = [field.text for field in info.items]
                return (names[0], names[1]) if len(names) == 2 else ("", "")
            reason = f"COMMACK {commack}"
        except (TransactionAborted, ReplyTimeout, FrameError) as exc:
            reason = str(exc)
        log.warning(
            "gem_establish_retry",
            connection=connection.name,
            attempt=attempt,
            reason=reason,
            retry_in=delay_s,
        )
        if attempt < attempts:
            await asyncio.sleep(delay_s)
    raise EstablishDenied(f"communications not established: {reason}")


async def discover_status_variables(
    connection: HsmsConnection, svids: Sequence[int], fmt: Format
) -> dict[int | str, tuple[str, str]]:
    """S1F11 for ``svids``: return SVID -> (SVNAME, UNITS) of those the tool knows."""
    if not svids:
        return {}
    reply = await connection.request(1, 11, scalar_list(fmt, svids))
    found: dict[int | str, tuple[str, str]] = {}
    for entry in reply.item.items if reply.item else ():
        svid, name, units = entry.fields(3)
        if name.text or units.text:
            found[id_of(svid)] = (name.text, units.text)
    return found


async def discover_equipment_constants(
    connection: HsmsConnection,
) -> dict[int | str, tuple[str, str]]:
    """S2F29 for every ECID: return ECID -> (ECNAME, UNITS); empty if not offered."""
    reply = await connection.request(2, 29, Item.L())
    found: dict[int | str, tuple[str, str]] = {}
    for entry in reply.item.items if reply.item else ():
        fields = entry.fields(6)
        found[id_of(fields[0])] = (fields[1].text, fields[5].text)
    return found


async def setup_reports(
    connection: HsmsConnection,
    reports: Sequence[ReportSetup],
    events: Sequence[EventSetup],
    fmt: Format,
    dataid: int = 0,
) -> list[str]:
    """Replace the tool's report definitions with ours; return refusals, if any.

    Follows the idempotent order: disable all events, delete all reports (and
    their links), define, link, enable. Each refusal is one line naming the
    message and its ack code; the others are still attempted.
    """
    dataid_item = id_item(fmt, dataid)
    refusals: list[str] = []

    async def step(function: int, body: Item, what: str) -> None:
        reply = await connection.request(2, function, body)
        code = _ack(reply, what)
        if code != ACCEPTED:
            refusals.append(f"S2F{function} {what}: ack {code}")

    await step(37, Item.L(Item.BOOLEAN(False), Item.L()), "disable all events")
    await step(33, Item.L(dataid_item, Item.L()), "delete all reports")
    if reports:
        definitions = [
            Item.L(id_item(fmt, r.rptid), scalar_list(fmt, r.vids)) for r in reports
        ]
        await step(33, Item.L(dataid_item, Item.L(*definitions)), "define reports")
    linked = [e for e in events if e.rptids]
    if linked:
        links = [
            Item.L(id_item(fmt, e.ceid), scalar_list(fmt, e.rptids)) for e in linked
        ]
        await step(35, Item.L(dataid_item, Item.L(*links)), "link reports")
    if events:
        ceids = scalar_list(fmt, [e.ceid for e in events])
        await step(37, Item.L(Item.BOOLEAN(True), ceids), "enable events")
    return refusals


async def enable_alarms(
    connection: HsmsConnection, alids: Sequence[int], fmt: Format
) -> list[int | str]:
    """S5F3 (with the W-bit) for each ALID, or for every alarm S5F5 lists.

    Returns the ALIDs the tool accepted; refusals are logged.
    """
    targets: Iterable[int | str] = alids
    if not alids:
        reply = await connection.request(5, 5, Item.L())
        targets = [
            id_of(e.fields(3)[1]) for e in (reply.item.items if reply.item else ())
        ]
    enabled: list[int | str] = []
    for alid in targets:
        alid_item = id_item(fmt, alid) if isinstance(alid, int) else Item.A(alid)
        reply = await connection.request(5, 3, Item.L(Item.B(ALARM_ENABLE), alid_item))
        code = _ack(reply, f"enable alarm {alid}")
        if code == ACCEPTED:
            enabled.append(alid)
        else:
            log.warning(
                "gem_alarm_enable_refused",
                connection=connection.name,
                alid=alid,
                ack=code,
            )
    return enabled


# Parsing what the equipment reports.


def parse_event_report(item: Item | None, annotated: bool = False) -> EventReport:
    """Parse an S6F11 (or S6F16) body, or with ``annotated`` an S6F13 body.

    An annotated report pairs each value with its VID (``<L[2] VID V>``); the
    values are returned alone, in report order, as for S6F11.

    Raises:
        FrameError: the body is not ``<L[3] DATAID CEID <L[a] <L[2] RPTID <L[b]>>>>``.
    """
    if item is None:
        raise FrameError("empty event report")
    dataid, ceid, reports = item.fields(3)
    parsed = []
    for report in reports.items:
        rptid, values = report.fields(2)
        items = values.items
        if annotated:
            items = tuple(pair.fields(2)[1] for pair in items)
        parsed.append((id_of(rptid), items))
    return EventReport(id_of(dataid), id_of(ceid), tuple(parsed))


def parse_alarm_report(item: Item | None) -> AlarmReport:
    """Parse an S5F1 body.

    Raises:
        FrameError: the body is not ``<L[3] <B ALCD> ALID <A ALTX>>``.
    """
    if item is None:
        raise FrameError("empty alarm report")
    alcd, alid, altx = item.fields(3)
    if alcd.format is not Format.B or len(alcd.value) != 1:
        raise FrameError(f"ALCD must be one Binary byte, got {alcd!r}")
    return AlarmReport(int(alcd.scalar()), id_of(alid), altx.text)


EventCallback = Callable[[EventReport], Awaitable[None]]
AlarmCallback = Callable[[AlarmReport], Awaitable[None]]


class HostResponder:
    """Answers the equipment's primaries as an E30 host does.

    ``on_event`` and ``on_alarm`` are awaited before the acknowledgement is sent, so
    an acknowledged report has been accepted. ``reply_to_unwaited_alarms``
    answers S5F1 sent without the W-bit too (equipment built on secsgem waits
    T3 for that reply all the same).
    """

    def __init__(
        self,
        tool: str,
        on_event: EventCallback,
        on_alarm: AlarmCallback,
        reply_to_unwaited_alarms: bool = False,
    ) -> None:
        self.tool = tool
        self._on_event = on_event
        self._on_alarm = on_alarm
        self._reply_unwaited = reply_to_unwaited_alarms
        self._unhandled_logged: set[str] = set()

    async def __call__(self, connection: HsmsConnection, message: Message) -> None:
        """Answer ``message``; never raises for what the message contains."""
        header = message.header
        key = (header.stream, header.function)
        try:
            if key in ((6, 11), (6, 13)):
                await self._event(connection, message)
            elif key == (5, 1):
                await self._alarm(connection, message)
            elif key == (1, 1) and header.wbit:
                await connection.reply(message, 2, Item.L())
            elif key == (1, 13) and header.wbit:
                await connection.reply(message, 14, Item.L(Item.B(ACCEPTED), Item.L()))
            elif key == (2, 17) and header.wbit:
                now = dt.datetime.now(dt.UTC).strftime(_HOST_TIME_FORMAT) + "00"
                await connection.reply(message, 18, Item.A(now))
            elif key in ((6, 1), (10, 1), (6, 5)):
                if header.wbit:
                    await connection.reply(message, key[1] + 1, Item.B(ACCEPTED))
            elif header.stream == 9:
                self._log_stream9(message)
            else:
                await self._unhandled(connection, message)
        except FrameError as exc:
            log.error(  # noqa: TRY400 - the message is the fault, not our code
                "gem_malformed_message",
                tool=self.tool,
                message=message.name,
                error=str(exc),
            )
            if header.wbit:
                await connection.reply(message, 0)

    async def _event(self, connection: HsmsConnection, message: Message) -> None:
        report = parse_event_report(message.item, message.header.function == 13)
        await self._on_event(report)
        if message.header.wbit:
            await connection.reply(message, message.header.function + 1, Item.B(0))

    async def _alarm(self, connection: HsmsConnection, message: Message) -> None:
        report = parse_alarm_report(message.item)
        await self._on_alarm(report)
        if message.header.wbit or self._reply_unwaited:
            await connection.reply(message, 2, Item.B(ACCEPTED))

    def _log_stream9(self, message: Message) -> None:
        log.warning("gem_equipment_error", tool=self.tool, message=message.name)

    async def _unhandled(self, connection: HsmsConnection, message: Message) -> None:
        if message.name not in self._unhandled_logged:
            self._unhandled_logged.add(message.name)
            log.warning(
                "gem_unhandled_message",
                tool=self.tool,
                message=message.name,
                answer="abort" if message.header.wbit else "none",
            )
        if message.header.wbit:
            await connection.reply(message, 0)
