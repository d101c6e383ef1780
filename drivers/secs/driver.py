"""The ``hsms`` driver: a SECS/GEM host collecting status variables, reports and alarms.

At connect the driver opens HSMS-SS (active by default: it dials the tool's port;
passive: it listens for a tool that dials out), selects the session, establishes
GEM communications, discovers the tags' status variables, replaces the tool's event
report definitions with the configured ones and enables alarms. Then:

- ``read`` poll groups are polled with S1F3 (their tags name an ``svid``);
- each S6F11 is acknowledged and becomes an ``event`` :class:`EquipmentEvent`; the
  numeric values of ``subscribe`` groups' tags (which name a ``vid``) it carries
  become a :class:`ReadingBatch` of their group;
- each S5F1 becomes an ``alarm`` event, set or cleared by ALCD's bit 8.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.base import (
    BatchSink,
    ConnectFailed,
    ConnectionLost,
    Driver,
    DriverSettings,
    EquipmentEvent,
    PollGroup,
    TagSource,
)
from drivers.batch import BAD_COMM, BAD_DEVICE, BAD_NO_VALUE, GOOD, ReadingBatch
from drivers.secs.codec import (
    Format,
    FrameError,
    decode_scalar_list,
    encode,
    numeric_value,
    scalar_list,
    to_json,
)
from drivers.secs.gem import (
    AlarmReport,
    EstablishDenied,
    EventReport,
    EventSetup,
    HostResponder,
    ReportSetup,
    alarm_severity,
    discover_equipment_constants,
    discover_status_variables,
    enable_alarms,
    establish_communications,
    setup_reports,
)
from drivers.secs.hsms import (
    CommunicationFailure,
    ConnectionClosed,
    HsmsConnection,
    HsmsError,
    ReplyTimeout,
    Timers,
    TransactionAborted,
)

__all__ = ["EventConfig", "HsmsDriver", "HsmsSettings", "HsmsSource", "ReportConfig"]

log = structlog.get_logger(__name__)

IdFormat = Literal["U1", "U2", "U4", "U8", "I1", "I2", "I4", "I8"]
MAX_ID = (1 << 32) - 1
MAX_SESSION_ID = 32767  # 15 bits, the SECS-I heritage of the device id
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Reports and alarms waiting for the pipeline; when full, the tool's next report is
# acknowledged only once there is room, which slows the tool rather than losing it.
EVENT_QUEUE_LIMIT = 1024


class ReportConfig(BaseModel):
    """One ``[[driver.reports]]`` entry: a report the gateway defines (S2F33)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    rptid: int = Field(ge=0, le=MAX_ID)
    vids: tuple[int, ...] = Field(min_length=1)


class EventConfig(BaseModel):
    """One ``[[driver.events]]`` entry: a collection event to link and enable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    ceid: int = Field(ge=0, le=MAX_ID)
    name: str = ""
    reports: tuple[int, ...] = ()


class HsmsSettings(DriverSettings):
    """The ``[driver]`` table of an HSMS (SECS/GEM) tool.

    Attributes:
        kind: ``"hsms"``.
        host, port: the tool's address (active) or the local one to listen on
            (passive).
        mode: ``"active"`` (the gateway connects; usual) or ``"passive"``.
        session_id: the tool's device id.
        t3_s, t5_s, t6_s, t7_s, t8_s: the E37 timers, seconds (SEMI defaults).
        linktest_s: seconds between Linktest.req heartbeats; 0 sends none.
        establish_delay_s, establish_attempts: S1F13 retries per connect.
        id_format: SECS-II format of the IDs the gateway sends.
        dataid: DATAID of the report set-up messages.
        reports, events: the event reports to define, link and enable.
        alarms: enable alarm reports (S5F3) at connect.
        alids: the alarms to enable; empty means every alarm the tool lists.
        reply_to_unwaited_alarms: also answer S5F1 sent without the W-bit.
        discover: ask the tool for its status variable and constant names.
        max_message_bytes: longest HSMS message accepted.
    """

    kind: Literal["hsms"]
    host: str = "127.0.0.1"
    port: int = Field(default=5000, ge=1, le=65535)
    mode: Literal["active", "passive"] = "active"
    session_id: int = Field(default=0, ge=0, le=MAX_SESSION_ID)
    t3_s: float = Field(default=45.0, gt=0, le=120)
    t5_s: float = Field(default=10.0, ge=0, le=240)
    t6_s: float = Field(default=5.0, gt=0, le=240)
    t7_s: float = Field(default=10.0, gt=0, le=240)
    t8_s: float = Field(default=5.0, gt=0, le=120)
    linktest_s: float = Field(default=60.0, ge=0, le=3600)
    establish_delay_s: float = Field(default=10.0, ge=0, le=600)
    establish_attempts: int = Field(default=3, ge=1, le=100)
    id_format: IdFormat = "U4"
    dataid: int = Field(default=0, ge=0, le=MAX_ID)
    reports: tuple[ReportConfig, ...] = ()
    events: tuple[EventConfig, ...] = ()
    alarms: bool = True
    alids: tuple[int, ...] = ()
    reply_to_unwaited_alarms: bool = False
    discover: bool = True
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES, ge=1024, le=1 << 30
    )

    @property
    def timers(self) -> Timers:
        """The session timers."""
        return Timers(
            t3=self.t3_s,
            t5=self.t5_s,
            t6=self.t6_s,
            t7=self.t7_s,
            t8=self.t8_s,
            linktest=self.linktest_s,
        )


class HsmsSource(TagSource):
    """A tag's ``source``: ``svid`` (polled with S1F3) or ``vid`` (from reports)."""

    svid: int | None = Field(default=None, ge=0, le=MAX_ID)
    vid: int | None = Field(default=None, ge=0, le=MAX_ID)

    @model_validator(mode="after")
    def _one_id(self) -> HsmsSource:
        if (self.svid is None) == (self.vid is None):
            raise ValueError("give exactly one of svid (polled) or vid (reported)")
        return self


@dataclass(frozen=True, slots=True)
class _ReadPlan:
    group: PollGroup
    request: bytes  # the encoded S1F3 body, built once


@dataclass(frozen=True, slots=True)
class _ReportRoute:
    """Where one report's values go: positions in the report -> group columns."""

    group: PollGroup
    positions: npt.NDArray[np.intp]
    columns: npt.NDArray[np.intp]


class HsmsDriver(Driver):
    """A SECS/GEM host over HSMS-SS for one tool.

    Raises:
        TypeError: ``settings`` or a source is not of this driver's schema.
    """

    kind: ClassVar[str] = "hsms"
    Settings: ClassVar[type[DriverSettings]] = HsmsSettings
    Source: ClassVar[type[TagSource]] = HsmsSource
    modes: ClassVar[frozenset[str]] = frozenset({"read", "subscribe"})

    def __init__(
        self,
        tool: str,
        settings: Any,
        tag_names: Sequence[str],
        sources: Sequence[Any],
        groups: Sequence[PollGroup],
    ) -> None:
        super().__init__(tool, settings, tag_names, sources, groups)
        self._config: HsmsSettings = settings
        self._id_format = Format[self._config.id_format]
        self._event_names = {e.ceid: e.name for e in self._config.events}
        self._report_vids: dict[int | str, tuple[int, ...]] = {
            r.rptid: r.vids for r in self._config.reports
        }
        self._read_plans = {
            g.name: _ReadPlan(g, self._s1f3_body(g)) for g in groups if g.mode == "read"
        }
        self._routes = self._report_routes(groups)
        self._connection: HsmsConnection | None = None
        self._session: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self._incoming: asyncio.Queue[
            tuple[asyncio.StreamReader, asyncio.StreamWriter]
        ] = asyncio.Queue()
        self._queue: asyncio.Queue[ReadingBatch | EquipmentEvent] = asyncio.Queue(
            EVENT_QUEUE_LIMIT
        )
        self._last_attempt: float | None = None
        self._warned_reports: set[int | str] = set()
        self.equipment: tuple[str, str] = ("", "")
        self.status_variables: dict[int | str, tuple[str, str]] = {}
        self.equipment_constants: dict[int | str, tuple[str, str]] = {}
        self.events = 0
        self.alarms = 0
        # Per tag: the SVID is missing from the equipment's S1F12 namelist, or
        # the last S1F4 gave no number for it.
        self._unknown = np.zeros(len(tag_names), dtype=bool)
        self._no_value = np.zeros(len(tag_names), dtype=bool)

    # Configuration rules that span the tables.

    @classmethod
    def check(
        cls,
        settings: Any,
        tag_names: Sequence[str],
        sources: Sequence[Any],
        groups: Sequence[PollGroup],
    ) -> list[tuple[str, str]]:
        """Add a ``(key path, rule)`` pair for each id that does not fit together."""
        issues = super().check(settings, tag_names, sources, groups)
        if not isinstance(settings, HsmsSettings):
            return issues
        issues += _duplicates(
            "driver.reports", [r.rptid for r in settings.reports], "rptid"
        )
        issues += _duplicates(
            "driver.events", [e.ceid for e in settings.events], "ceid"
        )
        defined = {r.rptid for r in settings.reports}
        for i, event in enumerate(settings.events):
            unknown = [r for r in event.reports if r not in defined]
            if unknown:
                issues.append(
                    (
                        f"driver.events[{i}].reports",
                        f"report(s) {unknown} are not defined in driver.reports",
                    )
                )
        reported = {
            vid
            for r in settings.reports
            if any(r.rptid in e.reports for e in settings.events)
            for vid in r.vids
        }
        for group in groups:
            for t in group.tags:
                # The loader hands the tags themselves; their source is inside.
                source = getattr(sources[t], "source", sources[t])
                if not isinstance(source, HsmsSource):
                    continue
                if group.mode == "read" and source.svid is None:
                    issues.append(
                        (
                            f"tags[{t}].source",
                            f"{tag_names[t]} is in read group {group.name!r}: "
                            "it needs an svid",
                        )
                    )
                if group.mode == "subscribe" and source.vid not in reported:
                    issues.append(
                        (
                            f"tags[{t}].source",
                            f"{tag_names[t]} is in subscribe group {group.name!r}: "
                            "it needs a vid carried by a report linked to an event",
                        )
                    )
        return issues

    # Session.

    @property
    def address(self) -> str:
        """``host:port`` of the tool (active) or of the listening socket (passive)."""
        return f"{self._config.host}:{self._config.port}"

    async def connect(self) -> None:
        """Open and select the session, establish communications, set up reports.

        Raises:
            ConnectFailed: the tool cannot be reached, refuses the session, or
                does not establish communications; the message names the address.
        """
        await self._wait_t5()
        try:
            if self._config.mode == "active":
                await self._connect_active()
            else:
                await self._accept_passive()
            await self._start_gem()
        except (HsmsError, OSError, TimeoutError, EstablishDenied, FrameError) as exc:
            await self.close()
            raise ConnectFailed(
                self.tool, f"hsms {self._config.mode} {self.address}: {exc}"
            ) from exc
        finally:
            self._last_attempt = time.monotonic()
        log.info(
            "hsms_communicating",
            tool=self.tool,
            address=self.address,
            model=self.equipment[0],
            softrev=self.equipment[1],
        )

    async def _wait_t5(self) -> None:
        # E37's T5: successive connect attempts are at least T5 apart.
        if self._last_attempt is not None:
            wait = self._last_attempt + self._config.t5_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    async def _connect_active(self) -> None:
        config = self._config
        try:
            async with asyncio.timeout(config.t6_s):
                reader, writer = await asyncio.open_connection(config.host, config.port)
        except TimeoutError:
            raise ConnectionClosed(
                f"no TCP connection within {config.t6_s:g} s (T6)"
            ) from None
        connection = self._open_session(reader, writer)
        await connection.select()

    async def _accept_passive(self) -> None:
        config = self._config
        if self._server is None:
            self._server = await asyncio.start_server(
                self._on_tool_connected, config.host, config.port
            )
        try:
            async with asyncio.timeout(config.t7_s):
                reader, writer = await self._incoming.get()
                connection = self._open_session(reader, writer)
                await connection.wait_selected()
        except TimeoutError:
            raise ConnectionClosed(
                f"no tool connected and selected within {config.t7_s:g} s (T7)"
            ) from None

    def _on_tool_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._connection is not None and self._connection.failure is None:
            log.warning("hsms_second_connection_refused", tool=self.tool)
            writer.close()
            return
        self._incoming.put_nowait((reader, writer))

    def _open_session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> HsmsConnection:
        config = self._config
        responder = HostResponder(
            self.tool, self._on_event, self._on_alarm, config.reply_to_unwaited_alarms
        )
        connection = HsmsConnection(
            reader,
            writer,
            session_id=config.session_id,
            timers=config.timers,
            handler=responder,
            name=f"hsms[{self.tool}]",
            max_message_bytes=config.max_message_bytes,
        )
        self._connection = connection
        self._session = asyncio.create_task(
            connection.run(), name=f"hsms[{self.tool}].session"
        )
        return connection

    async def _start_gem(self) -> None:
        connection = self._require_connection()
        config = self._config
        self.equipment = await establish_communications(
            connection, config.establish_delay_s, config.establish_attempts
        )
        if config.discover:
            await self._discover(connection)
        if config.reports or config.events:
            refusals = await setup_reports(
                connection,
                [ReportSetup(r.rptid, r.vids) for r in config.reports],
                [EventSetup(e.ceid, e.reports) for e in config.events],
                self._id_format,
                config.dataid,
            )
            for refusal in refusals:
                log.error("hsms_report_setup_refused", tool=self.tool, detail=refusal)
        if config.alarms:
            enabled = await enable_alarms(connection, config.alids, self._id_format)
            log.info("hsms_alarms_enabled", tool=self.tool, count=len(enabled))

    async def _discover(self, connection: HsmsConnection) -> None:
        svids = [s.svid for s in self.sources if s.svid is not None]
        try:
            self.status_variables = await discover_status_variables(
                connection, svids, self._id_format
            )
        except (TransactionAborted, ReplyTimeout, FrameError) as exc:
            log.warning(
                "hsms_svid_namelist_unavailable", tool=self.tool, error=str(exc)
            )
        self._unknown[:] = False
        for i, (name, source) in enumerate(
            zip(self.tag_names, self.sources, strict=True)
        ):
            if source.svid is not None and source.svid not in self.status_variables:
                self._unknown[i] = bool(self.status_variables)  # a namelist came
                log.warning(
                    "hsms_svid_unknown", tool=self.tool, tag=name, svid=source.svid
                )
        try:
            self.equipment_constants = await discover_equipment_constants(connection)
        except (TransactionAborted, ReplyTimeout, FrameError) as exc:
            log.info("hsms_ec_namelist_unavailable", tool=self.tool, error=str(exc))

    def _require_connection(self) -> HsmsConnection:
        connection = self._connection
        if connection is None or connection.failure is not None:
            detail = connection.failure if connection is not None else "no session"
            raise ConnectionLost(self.tool, f"hsms {self.address}: {detail}")
        return connection

    async def close(self) -> None:
        """Separate and close the session (and the listener); never raises."""
        connection, session = self._connection, self._session
        self._connection = self._session = None
        if connection is not None:
            await connection.close()
        if session is not None:
            session.cancel()
            with contextlib.suppress(asyncio.CancelledError, HsmsError):
                await session
        if self._server is not None:
            self._server.close()
            self._server = None
        while not self._incoming.empty():
            _, writer = self._incoming.get_nowait()
            writer.close()

    # Acquisition.

    async def acquire(self, sink: BatchSink) -> None:
        """Poll the read groups and deliver reports and alarms, until the link fails.

        Raises:
            ConnectionLost: the HSMS session ended (T6, T7, T8, separate, TCP).
        """
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(super().acquire(sink), name=f"hsms[{self.tool}].poll")
                tasks.create_task(
                    self._deliver(sink), name=f"hsms[{self.tool}].deliver"
                )
                tasks.create_task(self._watch(), name=f"hsms[{self.tool}].watch")
        except* ConnectionLost as faults:
            raise faults.exceptions[0] from None

    async def _watch(self) -> None:
        session = self._session
        if session is None:
            raise ConnectionLost(self.tool, "acquire without a session")
        try:
            await asyncio.shield(session)
        except CommunicationFailure as exc:
            raise ConnectionLost(self.tool, f"hsms {self.address}: {exc}") from exc

    async def _deliver(self, sink: BatchSink) -> None:
        while True:
            await sink(await self._queue.get())

    async def read_group(self, group: PollGroup) -> ReadingBatch:
        """Poll ``group``'s status variables with S1F3.

        A T3 timeout gives a batch of ``BAD_COMM``, an aborted or malformed reply
        one of ``BAD_DEVICE``; an unknown or non-numeric SVID is ``BAD_DEVICE``.

        Raises:
            ConnectionLost: the session has ended.
        """
        connection = self._require_connection()
        plan = self._read_plans[group.name]
        try:
            reply = await connection.request(1, 3, plan.request)
            values, valid = decode_scalar_list(reply.text)
        except CommunicationFailure as exc:
            raise ConnectionLost(self.tool, f"hsms {self.address}: {exc}") from exc
        except ReplyTimeout as exc:
            log.warning(
                "hsms_poll_timeout", tool=self.tool, group=group.name, error=str(exc)
            )
            return self._bad(group, BAD_COMM)
        except (TransactionAborted, FrameError) as exc:
            log.warning(
                "hsms_poll_refused", tool=self.tool, group=group.name, error=str(exc)
            )
            return self._bad(group, BAD_DEVICE)
        if len(values) != len(group.tags):
            log.warning(
                "hsms_poll_wrong_count",
                tool=self.tool,
                group=group.name,
                expected=len(group.tags),
                got=len(values),
            )
            return self._bad(group, BAD_DEVICE)
        quality = np.where(valid, GOOD, BAD_DEVICE).astype(np.uint8)
        self._no_value[group.tag_index] = ~valid
        return ReadingBatch(
            tool=self.tool,
            group=group.name,
            timestamps=np.array([time.time_ns()], dtype=np.int64),
            tags=group.tag_index,
            values=values.reshape(1, -1),
            quality=quality.reshape(1, -1),
        )

    def tag_faults(self) -> dict[str, str]:
        """Tags whose SVID the equipment does not list, or gave no number for."""
        faults = {}
        for t in np.flatnonzero(self._unknown | self._no_value).tolist():
            svid = self.sources[t].svid
            faults[self.tag_names[t]] = (
                f"SVID {svid} not in the equipment's status variable list (S1F12)"
                if self._unknown[t]
                else f"SVID {svid}: S1F4 gave no number"
            )
        return faults

    def _bad(self, group: PollGroup, code: int) -> ReadingBatch:
        return ReadingBatch.all_bad(
            self.tool, group.name, time.time_ns(), group.tag_index, code
        )

    # What the tool reports.

    async def _on_event(self, report: EventReport) -> None:
        ts_ns = time.time_ns()
        self.events += 1
        ceid = report.ceid
        code = ceid if isinstance(ceid, int) else 0
        reports = []
        for rptid, values in report.reports:
            vids = self._report_vids.get(rptid)
            if vids is not None and len(vids) == len(values):
                shown: Any = {
                    str(vid): to_json(value)
                    for vid, value in zip(vids, values, strict=True)
                }
            else:
                self._warn_unknown_report(rptid, len(values))
                shown = [to_json(value) for value in values]
            reports.append({"rptid": rptid, "values": shown})
        data: dict[str, Any] = {"dataid": report.dataid, "reports": reports}
        if not isinstance(ceid, int):
            data["ceid"] = ceid
        name = self._event_names.get(code) or f"CEID {ceid}"
        await self._queue.put(
            EquipmentEvent(self.tool, "event", ts_ns, code, name, data=data)
        )
        for batch in self._report_batches(report, ts_ns):
            await self._queue.put(batch)

    def _warn_unknown_report(self, rptid: int | str, count: int) -> None:
        if rptid not in self._warned_reports:
            self._warned_reports.add(rptid)
            log.warning(
                "hsms_report_unknown", tool=self.tool, rptid=rptid, values=count
            )

    def _report_batches(self, report: EventReport, ts_ns: int) -> list[ReadingBatch]:
        columns: dict[
            str, tuple[PollGroup, npt.NDArray[np.float64], npt.NDArray[np.uint8]]
        ] = {}
        for rptid, values in report.reports:
            for route in self._routes.get(rptid, ()) if isinstance(rptid, int) else ():
                if len(values) != len(self._report_vids[rptid]):
                    continue
                name = route.group.name
                if name not in columns:
                    k = len(route.group.tags)
                    columns[name] = (
                        route.group,
                        np.full(k, np.nan),
                        np.full(k, BAD_NO_VALUE, dtype=np.uint8),
                    )
                _, row, quality = columns[name]
                for position, column in zip(
                    route.positions, route.columns, strict=True
                ):
                    number = numeric_value(values[position])
                    if number is None:
                        quality[column] = BAD_DEVICE
                    else:
                        row[column] = number
                        quality[column] = GOOD
        return [
            ReadingBatch(
                tool=self.tool,
                group=group.name,
                timestamps=np.array([ts_ns], dtype=np.int64),
                tags=group.tag_index,
                values=row.reshape(1, -1),
                quality=quality.reshape(1, -1),
            )
            for group, row, quality in columns.values()
        ]

    async def _on_alarm(self, report: AlarmReport) -> None:
        self.alarms += 1
        alid = report.alid
        data: dict[str, Any] = {"alcd": report.alcd, "category": report.category}
        if not isinstance(alid, int):
            data["equipment_alid"] = alid
        await self._queue.put(
            EquipmentEvent(
                self.tool,
                "alarm",
                time.time_ns(),
                alid if isinstance(alid, int) else 0,
                report.altx,
                state="set" if report.is_set else "cleared",
                severity=alarm_severity(report.category),
                data=data,
            )
        )

    # Plans built once.

    def _s1f3_body(self, group: PollGroup) -> bytes:
        svids = [self.sources[t].svid for t in group.tags]
        return encode(scalar_list(self._id_format, [s for s in svids if s is not None]))

    def _report_routes(
        self, groups: Sequence[PollGroup]
    ) -> dict[int, list[_ReportRoute]]:
        routes: dict[int, list[_ReportRoute]] = {}
        for group in groups:
            if group.mode != "subscribe":
                continue
            column_of = {self.sources[t].vid: c for c, t in enumerate(group.tags)}
            for report in self._config.reports:
                pairs = [
                    (p, column_of[vid])
                    for p, vid in enumerate(report.vids)
                    if vid in column_of
                ]
                if pairs:
                    positions, columns = zip(*pairs, strict=True)
                    routes.setdefault(report.rptid, []).append(
                        _ReportRoute(
                            group,
                            np.array(positions, dtype=np.intp),
                            np.array(columns, dtype=np.intp),
                        )
                    )
        return routes


def _duplicates(key: str, ids: Sequence[int], field: str) -> list[tuple[str, str]]:
    seen: set[int] = set()
    issues = []
    for i, value in enumerate(ids):
        if value in seen:
            issues.append((f"{key}[{i}].{field}", f"{field} {value} is given twice"))
        seen.add(value)
    return issues
