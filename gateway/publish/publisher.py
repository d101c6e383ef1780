"""The MQTT publisher: drains the outbox to the broker with QoS 1.

Two threads of control cooperate:

- the **network thread** (one per publisher) owns the paho client's socket: it
  connects, runs paho's loop, and on failure waits the shared :class:`Backoff`
  before trying again with a fresh client. paho's own reconnect is not used, so
  every delay follows the gateway's one policy.
- the **drain task** (:meth:`Publisher.run`, on the event loop) owns the outbox
  and all bookkeeping: it fetches committed rows in priority order, publishes
  them while the in-flight window has room, and deletes a row only after its
  PUBACK arrived.

paho callbacks run on the network thread; they hand their news to the event loop
with ``call_soon_threadsafe``, in the order they happened, and touch nothing else.
A lost connection loses nothing: rows in flight are still in the outbox and are
fetched again, in order, after the next connect (a duplicate is possible, which
QoS 1 allows).

The retained status topic says ``online`` after each connect; the last will
says ``offline`` if the connection dies, and :meth:`Publisher.stop` publishes
``offline`` itself before its clean disconnect (which suppresses the will).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.backoff import Backoff
from gateway.config.models import GatewayIdentity, MqttConfig, TlsConfig
from gateway.publish.topics import status_topic

__all__ = [
    "STATUS_SCHEMA",
    "Outbox",
    "PendingMessage",
    "Publisher",
    "PublisherStats",
    "default_client_id",
    "status_payload",
]

log = structlog.get_logger(__name__)

STATUS_SCHEMA = "edge-gateway/status/1"
StatusState = Literal["online", "offline"]
_STATUS_KEYS = frozenset({"schema", "state", "site", "gateway", "ts"})

# Polling the outbox while idle: rows committed by the store's writer become
# visible within this delay even when no producer calls notify().
_IDLE_POLL_S = 0.05
# paho's select() timeout: how quickly the network thread notices a halt request.
_LOOP_TIMEOUT_S = 0.1
# TCP and TLS handshake limit for one connect attempt.
_CONNECT_TIMEOUT_S = 10.0
# Bounded waits for the network thread to send DISCONNECT and exit.
_DISCONNECT_FLUSH_S = 2.0
_JOIN_TIMEOUT_S = 5.0
# Of the shutdown deadline, this much (at most half) is kept for the offline status.
_OFFLINE_RESERVE_S = 0.5
# A session that lasted this long proved the broker healthy: the next outage
# starts again from the shortest delay. Shorter sessions (a broker that accepts
# and drops at once, a duplicate client id) keep growing the delay.
_STABLE_SESSION_S = 10.0
# The birth or offline status can be in flight beside the outbox window.
_STATUS_MESSAGES = 1
# MQTT 5 DISCONNECT reason code 0x04: the broker publishes the will anyway.
_DISCONNECT_WITH_WILL = "Disconnect with will message"


class PendingMessage(Protocol):
    """An outbox row as the publisher reads it (``gateway.store.OutboxRow``)."""

    @property
    def id(self) -> int:
        """Row id: unique, increasing in enqueue order."""

    @property
    def priority(self) -> int:
        """0 alert, 1 event, 2 summary, 3 telemetry."""

    @property
    def topic(self) -> str:
        """Full MQTT topic."""

    @property
    def payload(self) -> bytes:
        """Message body, ready to send."""

    @property
    def qos(self) -> int:
        """MQTT QoS level (1 for everything the gateway produces)."""

    @property
    def retain(self) -> bool:
        """Whether the broker keeps it as the topic's retained message."""


class Outbox(Protocol):
    """What the publisher needs of the store: committed rows in, deletions out."""

    def pending_messages(
        self, limit: int, exclude: Collection[int] = ()
    ) -> Sequence[PendingMessage]:
        """Committed rows ordered by priority then id, without ``exclude`` ids."""

    def ack_messages(self, ids: Sequence[int]) -> None:
        """Delete rows the broker acknowledged.

        The deletion may be committed later, but from this call on
        :meth:`pending_messages` must not return these rows again.
        """


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """Counters for ``edge-gateway status`` (since the publisher was built)."""

    connected: bool
    published: int
    acked: int
    refused: int
    dropped: int
    reconnects: int
    in_flight: int
    last_error: str | None


def default_client_id(identity: GatewayIdentity) -> str:
    """Return ``edge-gateway-<site>-<id>``: stable across restarts of one gateway."""
    return f"edge-gateway-{identity.site}-{identity.id}"


def _iso_now() -> str:
    moment = datetime.now(tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_payload(
    state: StatusState,
    identity: GatewayIdentity,
    birth: Mapping[str, object] | None = None,
    ts: str | None = None,
) -> bytes:
    """Return the JSON of the retained status message.

    ``birth`` adds fields such as ``version`` and ``tools`` to the ``online``
    status. ``ts`` is ISO 8601 UTC, now when not given; in the last will it is
    the time the will was registered, since the broker sends it verbatim.
    """
    document: dict[str, object] = {
        "schema": STATUS_SCHEMA,
        "state": state,
        "site": identity.site,
        "gateway": identity.id,
    }
    document.update(birth or {})
    document["ts"] = ts or _iso_now()
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSL socket that closes itself when its handshake fails.

    paho leaves the socket open when ``do_handshake`` raises (a certificate
    refused, for example); without this every failed attempt would leak one
    file descriptor until the garbage collector found it.
    """

    def do_handshake(self, block: bool = False) -> None:
        """Run the TLS handshake; close the socket if it fails."""
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def _tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """Build the client TLS context once, naming the key of a file that fails."""
    try:
        context = ssl.create_default_context(
            cafile=str(tls.ca_file) if tls.ca_file else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"mqtt.tls.ca_file {tls.ca_file}: {exc}") from exc
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"mqtt.tls.cert_file/key_file {tls.cert_file}, {tls.key_file}: {exc}"
            ) from exc
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.sslsocket_class = _ClosingSSLSocket
    return context


def _network_thread_writes(client: mqtt.Client, userdata: object, sock: object) -> None:
    """paho write-registration hook: nothing to do, the network thread writes."""


@dataclass(slots=True)
class _Session:
    """Per-connection facts known to the network thread (paho's userdata)."""

    established_at: float | None = None
    refusal: str | None = None


@dataclass(slots=True)
class _Counters:
    published: int = 0
    acked: int = 0
    refused: int = 0
    dropped: int = 0
    connects: int = 0


@dataclass(slots=True)
class _Window:
    """Rows published on the current connection and not yet acknowledged."""

    size: int
    by_mid: dict[int, int] = field(default_factory=dict)
    row_ids: set[int] = field(default_factory=set)

    @property
    def room(self) -> int:
        return self.size - len(self.by_mid)

    def add(self, mid: int, row_id: int) -> None:
        self.by_mid[mid] = row_id
        self.row_ids.add(row_id)

    def pop(self, mid: int) -> int | None:
        row_id = self.by_mid.pop(mid, None)
        if row_id is not None:
            self.row_ids.discard(row_id)
        return row_id

    def clear(self) -> None:
        self.by_mid.clear()
        self.row_ids.clear()


class Publisher:
    """Forwards the outbox to the MQTT broker and keeps the status topic current.

    Run :meth:`run` as a task for the daemon's lifetime; call :meth:`stop` for an
    orderly shutdown, after which :meth:`run` returns. Cancelling :meth:`run`
    instead drops the connection without the offline status, so the broker
    publishes the last will. Raises :class:`ValueError` from the constructor when
    a TLS file cannot be loaded or ``birth`` is not JSON or reuses a status key.
    """

    def __init__(
        self,
        config: MqttConfig,
        identity: GatewayIdentity,
        outbox: Outbox,
        birth: Mapping[str, object],
    ) -> None:
        reused = _STATUS_KEYS.intersection(birth)
        if reused:
            raise ValueError(f"birth must not set status keys: {sorted(reused)}")
        status_payload("online", identity, birth)  # fails early if not JSON
        self._config = config
        self._identity = identity
        self._outbox = outbox
        self._birth = dict(birth)
        self.client_id = config.client_id or default_client_id(identity)
        self.status_topic = status_topic(
            config.topic_prefix, identity.site, identity.id
        )
        self._tls = _tls_context(config.tls) if config.tls.enabled else None
        if config.tls.enabled and not config.tls.verify:
            log.warning("mqtt_tls_unverified", host=config.host, port=config.port)

        # Shared with the network thread: set only by the owner noted.
        self._halt = threading.Event()  # set by the loop
        self._halt_mode: Literal["clean", "will"] = "will"  # set by the loop
        self._last_error: str | None = None  # set by the network thread
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

        # Owned by the event loop.
        self._client: mqtt.Client | None = None
        self._window = _Window(config.max_inflight)
        self._ack_batch: list[int] = []
        self._counters = _Counters()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._offline_acked = asyncio.Event()
        self._offline_mid: int | None = None
        self._closing = False
        self._fetching = True
        self._finished = False

    # ----------------------------------------------------------------- status

    @property
    def connected(self) -> bool:
        """True while a broker session is established."""
        return self._client is not None

    @property
    def stats(self) -> PublisherStats:
        """A snapshot of the counters, for status reports."""
        counters = self._counters
        return PublisherStats(
            connected=self.connected,
            published=counters.published,
            acked=counters.acked,
            refused=counters.refused,
            dropped=counters.dropped,
            reconnects=max(0, counters.connects - 1),
            in_flight=len(self._window.by_mid),
            last_error=self._last_error,
        )

    def notify(self) -> None:
        """Wake the drain task now (call from the event loop after enqueuing)."""
        self._wake.set()

    # --------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Connect, keep connected and drain the outbox until stopped or cancelled.

        Raises :class:`RuntimeError` when called twice.
        """
        if self._thread is not None:
            raise RuntimeError("Publisher.run() was already started")
        if self._finished:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._network_main, name=f"mqtt[{self.client_id}]", daemon=True
        )
        self._thread.start()
        try:
            await self._drain()
        finally:
            if self._thread.is_alive():
                # Cancelled without stop(): drop the session so the will fires.
                self._halt_mode = "will"
                self._halt.set()
                await asyncio.to_thread(self._thread.join, _JOIN_TIMEOUT_S)

    async def stop(self, deadline_s: float) -> None:
        """Publish what fits in ``deadline_s`` seconds, then go offline and close.

        Pending rows are published until the outbox is empty or the deadline
        nears; what is left stays in the outbox for the next start. Then the
        retained ``offline`` status is published and, once acknowledged, the
        session is closed cleanly; if it is not acknowledged in time the session
        is dropped so that the broker publishes the last will instead.
        """
        if self._thread is None:
            self._finished = True  # a later run() returns at once
            return
        if self._closing or self._finished:
            return  # already stopping or stopped
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        reserve = min(_OFFLINE_RESERVE_S, deadline_s / 2)

        self._closing = True
        self._wake.set()
        try:
            async with asyncio.timeout_at(deadline - reserve):
                await self._drained.wait()
        except TimeoutError:
            log.warning("mqtt_shutdown_backlog", in_flight=len(self._window.by_mid))
        self._fetching = False

        offline_acked = await self._publish_offline(deadline)
        self._halt_mode = "clean" if offline_acked else "will"
        self._halt.set()
        await asyncio.to_thread(self._thread.join, _JOIN_TIMEOUT_S)
        self._flush_acks()
        self._finished = True
        self._wake.set()
        log.info("mqtt_stopped", **self._stats_fields())

    async def _publish_offline(self, deadline: float) -> bool:
        client = self._client
        if client is None:
            return False
        info = client.publish(
            self.status_topic,
            status_payload("offline", self._identity),
            qos=1,
            retain=True,
        )
        self._offline_mid = info.mid
        try:
            async with asyncio.timeout_at(deadline):
                await self._offline_acked.wait()
        except TimeoutError:
            log.warning("mqtt_offline_unacknowledged", topic=self.status_topic)
            return False
        return True

    def _stats_fields(self) -> dict[str, object]:
        stats = self.stats
        return {
            "published": stats.published,
            "acked": stats.acked,
            "reconnects": stats.reconnects,
            "in_flight": stats.in_flight,
        }

    # ------------------------------------------------------ drain (event loop)

    async def _drain(self) -> None:
        while not self._finished:
            self._wake.clear()
            self._flush_acks()
            if self._fetching:
                self._fill_window()
            try:
                async with asyncio.timeout(_IDLE_POLL_S):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _fill_window(self) -> None:
        client = self._client
        if client is None:
            if self._closing and not self._window.by_mid:
                self._check_drained()
            return
        room = self._window.room
        if room <= 0:
            return
        rows = self._outbox.pending_messages(limit=room, exclude=self._window.row_ids)
        for row in rows:
            if not self._publish_row(client, row):
                break
        if self._closing and not rows and not self._window.by_mid:
            self._drained.set()

    def _check_drained(self) -> None:
        if not self._outbox.pending_messages(limit=1, exclude=self._window.row_ids):
            self._drained.set()

    def _publish_row(self, client: mqtt.Client, row: PendingMessage) -> bool:
        """Publish one row; return False when the connection is gone."""
        try:
            info = client.publish(
                row.topic, row.payload, qos=row.qos, retain=row.retain
            )
        except ValueError as exc:
            self._drop_row(row, str(exc))
            return True
        self._window.add(info.mid, row.id)
        self._counters.published += 1
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def _drop_row(self, row: PendingMessage, error: str) -> None:
        # The topic or payload can never be sent (wildcard, oversize): a retry
        # would block the queue forever, so the row is deleted and reported.
        log.error("mqtt_message_dropped", topic=row.topic, row=row.id, error=error)
        self._counters.dropped += 1
        self._ack_batch.append(row.id)

    def _flush_acks(self) -> None:
        if self._ack_batch:
            ids, self._ack_batch = self._ack_batch, []
            self._outbox.ack_messages(ids)

    # ------------------------------------- events from the network thread

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is None:
            return
        # RuntimeError: the loop closed during shutdown; nothing is waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback, *args)

    def _handle_connected(
        self, client: mqtt.Client, receive_maximum: int | None
    ) -> None:
        self._client = client
        self._window.clear()
        window = self._config.max_inflight
        if receive_maximum is not None:
            # MQTT 5 section 3.2.2.3.3: never exceed the broker's Receive Maximum.
            window = min(window, max(1, receive_maximum - _STATUS_MESSAGES))
        self._window.size = window
        self._counters.connects += 1
        self._wake.set()

    def _handle_disconnected(self, client: mqtt.Client) -> None:
        if client is not self._client:
            return
        self._client = None
        # Unacknowledged rows are still in the outbox: they are fetched again.
        self._window.clear()
        self._wake.set()

    def _handle_published(
        self, client: mqtt.Client, mid: int, reason: ReasonCode
    ) -> None:
        if client is not self._client:
            return
        if mid == self._offline_mid:
            self._offline_acked.set()
            return
        row_id = self._window.pop(mid)
        if row_id is None:
            return  # the birth status
        if reason.is_failure:
            # The broker refused this message for good (MQTT 5 PUBACK reason,
            # e.g. not authorized): sending it again would be refused again.
            log.error("mqtt_publish_refused", row=row_id, reason=str(reason))
            self._counters.refused += 1
        else:
            self._counters.acked += 1
        self._ack_batch.append(row_id)
        self._wake.set()

    # -------------------------------------------------- network thread

    def _new_client(self, session: _Session) -> mqtt.Client:
        config = self._config
        protocol = mqtt.MQTTv5 if config.protocol == "5" else mqtt.MQTTv311
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            userdata=session,
        )
        client.connect_timeout = _CONNECT_TIMEOUT_S
        client.max_inflight_messages_set(config.max_inflight + _STATUS_MESSAGES)
        if config.username is not None:
            password = config.password.get_secret_value() if config.password else None
            client.username_pw_set(config.username, password)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        client.will_set(
            self.status_topic,
            status_payload("offline", self._identity),
            qos=1,
            retain=True,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        # Without a loop_start() thread, paho's publish() writes to the socket
        # from the calling thread (here the event loop) while the network thread
        # may be writing too: packets could go out of order or interleave. With a
        # write-registration callback set, publish() only queues the packet and
        # wakes the network thread, whose loop() does all the writing.
        client.on_socket_register_write = _network_thread_writes
        return client

    def _network_main(self) -> None:
        backoff = Backoff(self._config.backoff)
        while not self._halt.is_set():
            session = _Session()
            client = self._new_client(session)
            try:
                client.connect(
                    self._config.host, self._config.port, self._config.keepalive_s
                )
            except (OSError, ValueError) as exc:
                if not self._halt.is_set():
                    self._retry_later(backoff, str(exc) or type(exc).__name__)
                continue
            self._serve(client)
            if self._halt.is_set():
                return  # closed on request: not a failure to report
            if session.established_at is not None:
                if time.monotonic() - session.established_at >= _STABLE_SESSION_S:
                    backoff.reset()
                self._halt.wait(backoff.next_delay())
            else:
                refusal = session.refusal or "connection closed before CONNACK"
                self._retry_later(backoff, refusal)

    def _retry_later(self, backoff: Backoff, error: str) -> None:
        delay = backoff.next_delay()
        self._last_error = error
        log.warning(
            "mqtt_connect_failed",
            host=self._config.host,
            port=self._config.port,
            error=error,
            retry_in=round(delay, 3),
        )
        self._halt.wait(delay)

    def _serve(self, client: mqtt.Client) -> None:
        """Run paho's loop until the connection ends or a halt is requested."""
        while not self._halt.is_set():
            if client.loop(timeout=_LOOP_TIMEOUT_S) != mqtt.MQTT_ERR_SUCCESS:
                return
        if self._halt_mode == "clean":
            client.disconnect()
        else:
            self._drop_session(client)
        deadline = time.monotonic() + _DISCONNECT_FLUSH_S
        while time.monotonic() < deadline:
            if client.loop(timeout=_LOOP_TIMEOUT_S) != mqtt.MQTT_ERR_SUCCESS:
                return

    def _drop_session(self, client: mqtt.Client) -> None:
        """End the session so that the broker publishes the last will."""
        if self._config.protocol == "5":
            client.disconnect(
                reasoncode=ReasonCode(PacketTypes.DISCONNECT, _DISCONNECT_WITH_WILL)
            )
            return
        # MQTT 3.1.1 has no such DISCONNECT: closing the TCP stream without
        # one is what makes the broker send the will (section 3.1.2.5).
        sock = client.socket()
        if isinstance(sock, socket.socket):  # an SSLSocket is one too
            with contextlib.suppress(OSError):  # already closed by the peer
                sock.shutdown(socket.SHUT_RDWR)

    def _on_connect(
        self,
        client: mqtt.Client,
        session: _Session,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            session.refusal = f"connection refused: {reason}"
            return
        session.established_at = time.monotonic()
        self._last_error = None
        client.publish(
            self.status_topic,
            status_payload("online", self._identity, self._birth),
            qos=1,
            retain=True,
        )
        log.info(
            "mqtt_connected",
            host=self._config.host,
            port=self._config.port,
            client_id=self.client_id,
            protocol=self._config.protocol,
        )
        receive_maximum = getattr(properties, "ReceiveMaximum", None)
        self._post(self._handle_connected, client, receive_maximum)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        session: _Session,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if session.established_at is None:
            return
        if self._halt.is_set():
            log.info("mqtt_closed", host=self._config.host, port=self._config.port)
        else:
            self._last_error = f"disconnected: {reason}"
            log.warning(
                "mqtt_disconnected",
                host=self._config.host,
                port=self._config.port,
                reason=str(reason),
            )
        self._post(self._handle_disconnected, client)

    def _on_publish(
        self,
        client: mqtt.Client,
        session: _Session,
        mid: int,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        self._post(self._handle_published, client, mid, reason)
