"""The MQTT publisher against a real Mosquitto broker and the real store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import structlog
from mosquitto import (
    Broker,
    MakeBroker,
    MakeSubscriber,
    Subscriber,
    eventually,
    share_with_broker,
)
from pydantic import SecretStr

import gateway.publish
from gateway.config.models import (
    BackoffConfig,
    GatewayIdentity,
    MqttConfig,
    StoreConfig,
    TlsConfig,
)
from gateway.publish import (
    STATUS_SCHEMA,
    Publisher,
    default_client_id,
    status_topic,
    tool_topic,
)
from gateway.store import (
    PRIORITY_ALERT,
    PRIORITY_EVENT,
    PRIORITY_SUMMARY,
    OutboxMessage,
    Store,
)

PROTOCOLS = ["3.1.1", "5"]
SITE = "fab1"
TOOL = "etch-07"
BIRTH = {"version": "9.9.9-test", "tools": [TOOL, "cvd-02"]}

STORE_COMMIT_MS = 10
STORE_FLUSH_S = 5.0
DELIVERY_TIMEOUT_S = 15.0
STOP_DEADLINE_S = 5.0
TASK_EXIT_TIMEOUT_S = 10.0
# Long enough for a publisher that would misbehave to have done so.
SETTLE_S = 0.5
# stop() when the broker cannot be reached waits out its whole deadline.
SHORT_STOP_S = 0.5
FAST_BACKOFF = BackoffConfig(initial_s=0.05, max_s=0.3, multiplier=2.0, jitter=0.2)
OPENSSL_TIMEOUT_S = 30.0
CERT_DAYS = "2"
STATUS_SCHEMA_FILE = Path(gateway.publish.__file__).parent / "schemas" / "status.json"


# ----------------------------------------------------------------- helpers


def _identity() -> GatewayIdentity:
    return GatewayIdentity(site=SITE, id=f"gw-{uuid.uuid4().hex[:10]}")


def _config(broker: Broker, prefix: str, protocol: str, **fields: Any) -> MqttConfig:
    fields.setdefault("backoff", FAST_BACKOFF)
    return MqttConfig(
        host=broker.host,
        port=broker.port,
        protocol=protocol,
        topic_prefix=prefix,
        **fields,
    )


def _enqueue(
    store: Store, priority: int, topic: str, payloads: Sequence[bytes]
) -> None:
    for payload in payloads:
        store.put_message(OutboxMessage(priority, topic, payload))


def _commit(store: Store) -> None:
    assert store.flush(STORE_FLUSH_S), "store did not commit in time"


def _labels(name: str, count: int) -> list[bytes]:
    return [f"{name}-{i:03d}".encode() for i in range(count)]


def _first_seen(payloads: Sequence[bytes]) -> list[bytes]:
    """Payloads in arrival order with QoS 1 duplicates removed."""
    return list(dict.fromkeys(payloads))


def _status(subscriber: Subscriber, topic: str) -> list[dict[str, Any]]:
    """Status documents received on ``topic``, each checked against its schema."""
    schema = json.loads(STATUS_SCHEMA_FILE.read_text())
    documents = [json.loads(payload) for payload in subscriber.payloads(topic)]
    for document in documents:
        jsonschema.validate(document, schema)
    return documents


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A real store with a short commit interval."""
    opened = Store.open(
        tmp_path / "gateway.db", StoreConfig(commit_interval_ms=STORE_COMMIT_MS)
    )
    yield opened
    opened.close()


@contextlib.asynccontextmanager
async def _running(
    publisher: Publisher, stop_deadline_s: float = STOP_DEADLINE_S
) -> AsyncIterator[asyncio.Task[None]]:
    """Run the publisher as a task; stop it in order on the way out."""
    task = asyncio.create_task(publisher.run(), name="publisher")
    try:
        yield task
    finally:
        if not task.done():
            await publisher.stop(stop_deadline_s)
        async with asyncio.timeout(TASK_EXIT_TIMEOUT_S):
            await task


# ----------------------------------------------------------------- topics


def test_topics_follow_the_documented_tree() -> None:
    """Status and tool topics are <prefix>/<site>/<gateway>[/<tool>/<kind>]."""
    assert status_topic("edge", "fab1", "gw-a") == "edge/fab1/gw-a/status"
    assert tool_topic("a/b", "fab1", "gw-a", "etch-07", "alert") == (
        "a/b/fab1/gw-a/etch-07/alert"
    )
    for kind in ("event", "summary", "telemetry"):
        assert tool_topic("edge", "s", "g", "t", kind).endswith(f"/t/{kind}")


@pytest.mark.parametrize("tool", ["etch+07", "etch#07", "etch/07", "", "a\x00b"])
def test_tool_ids_that_would_break_the_topic_tree_are_rejected(tool: str) -> None:
    """A tool id with a wildcard, a separator, NUL, or nothing at all is refused."""
    with pytest.raises(ValueError, match="tool"):
        tool_topic("edge", "fab1", "gw-a", tool, "summary")


def test_unknown_kind_and_empty_prefix_levels_are_rejected() -> None:
    """Only the four documented kinds exist, and the prefix has no empty level."""
    with pytest.raises(ValueError, match="kind"):
        tool_topic("edge", "fab1", "gw-a", "etch-07", "alarm")
    with pytest.raises(ValueError, match="prefix"):
        status_topic("edge/", "fab1", "gw-a")


def test_client_id_is_stable_and_names_the_gateway() -> None:
    """Without a configured client id the id is built from site and gateway id."""
    identity = GatewayIdentity(site="fab1", id="gw-a")

    assert default_client_id(identity) == "edge-gateway-fab1-gw-a"


def test_birth_may_not_overwrite_status_fields(store: Store) -> None:
    """A birth dictionary that sets a status key such as state is refused."""
    with pytest.raises(ValueError, match="state"):
        Publisher(MqttConfig(), _identity(), store, {"state": "maybe"})


def test_unreadable_ca_file_names_the_key(store: Store, tmp_path: Path) -> None:
    """A CA file that cannot be loaded fails at construction, naming the key."""
    tls = TlsConfig(enabled=True, ca_file=tmp_path / "missing.pem")

    with pytest.raises(ValueError, match=r"mqtt\.tls\.ca_file"):
        Publisher(MqttConfig(tls=tls), _identity(), store, BIRTH)


# ----------------------------------------------------------------- delivery


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_messages_are_delivered_in_order_and_removed_from_the_outbox(
    broker: Broker,
    make_subscriber: MakeSubscriber,
    store: Store,
    topic_prefix: str,
    protocol: str,
) -> None:
    """Every outbox message reaches a subscriber in order and is then deleted."""
    identity = _identity()
    topic = tool_topic(topic_prefix, SITE, identity.id, TOOL, "summary")
    subscriber = make_subscriber(broker, topic)
    sent = _labels("summary", 120)
    _enqueue(store, PRIORITY_SUMMARY, topic, sent)
    _commit(store)
    publisher = Publisher(
        _config(broker, topic_prefix, protocol), identity, store, BIRTH
    )

    async with _running(publisher):
        await eventually(
            lambda: len(subscriber.payloads()) >= len(sent), DELIVERY_TIMEOUT_S
        )
        await eventually(
            lambda: store.pending_messages(limit=10) == [], DELIVERY_TIMEOUT_S
        )

    assert _first_seen(subscriber.payloads()) == sent
    assert publisher.stats.acked == len(sent)
    assert publisher.stats.in_flight == 0


async def test_rows_stay_in_the_outbox_until_puback_and_the_window_is_bounded(
    make_broker: MakeBroker,
    make_subscriber: MakeSubscriber,
    store: Store,
    topic_prefix: str,
) -> None:
    """With the broker frozen, only max_inflight rows go out and none is deleted."""
    broker = make_broker()
    identity = _identity()
    topic = tool_topic(topic_prefix, SITE, identity.id, TOOL, "summary")
    subscriber = make_subscriber(broker, topic)
    window = 5
    sent = _labels("summary", 30)
    config = _config(broker, topic_prefix, "5", max_inflight=window)
    publisher = Publisher(config, identity, store, BIRTH)

    async with _running(publisher):
        await eventually(lambda: publisher.connected, DELIVERY_TIMEOUT_S)
        broker.pause()
        try:
            _enqueue(store, PRIORITY_SUMMARY, topic, sent)
            _commit(store)
            await eventually(
                lambda: publisher.stats.published == window, DELIVERY_TIMEOUT_S
            )
            await asyncio.sleep(SETTLE_S)

            assert publisher.stats.published == window
            assert publisher.stats.in_flight == window
            assert len(store.pending_messages(limit=100)) == len(sent)
        finally:
            broker.resume()
        await eventually(
            lambda: store.pending_messages(limit=10) == [], DELIVERY_TIMEOUT_S
        )

    assert _first_seen(subscriber.payloads()) == sent


async def test_window_follows_the_brokers_receive_maximum(
    make_broker: MakeBroker,
    store: Store,
    topic_prefix: str,
) -> None:
    """Under MQTT 5 the window shrinks to the broker's Receive Maximum less one."""
    receive_maximum = 4
    broker = make_broker(
        ("allow_anonymous true", f"max_inflight_messages {receive_maximum}")
    )
    identity = _identity()
    topic = tool_topic(topic_prefix, SITE, identity.id, TOOL, "summary")
    config = _config(broker, topic_prefix, "5", max_inflight=50)
    publisher = Publisher(config, identity, store, BIRTH)

    async with _running(publisher):
        await eventually(lambda: publisher.connected, DELIVERY_TIMEOUT_S)
        broker.pause()
        try:
            _enqueue(store, PRIORITY_SUMMARY, topic, _labels("summary", 20))
            _commit(store)
            await eventually(lambda: publisher.stats.published > 0, DELIVERY_TIMEOUT_S)
            await asyncio.sleep(SETTLE_S)

            assert publisher.stats.in_flight == receive_maximum - 1
        finally:
            broker.resume()
        await eventually(
            lambda: store.pending_messages(limit=10) == [], DELIVERY_TIMEOUT_S
        )


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_alerts_queued_while_disconnected_go_out_before_summaries(
    make_broker: MakeBroker,
    make_subscriber: MakeSubscriber,
    store: Store,
    topic_prefix: str,
    protocol: str,
) -> None:
    """Summaries queued first and alerts queued later arrive alerts first."""
    broker = make_broker(persistence=True)
    identity = _identity()
    topics = {
        kind: tool_topic(topic_prefix, SITE, identity.id, TOOL, kind)
        for kind in ("alert", "event", "summary")
    }
    subscriber = make_subscriber(broker, f"{topic_prefix}/#")
    broker.stop()
    summaries, events, alerts = (
        _labels("summary", 40),
        _labels("event", 10),
        _labels("alert", 10),
    )
    publisher = Publisher(
        _config(broker, topic_prefix, protocol), identity, store, BIRTH
    )

    async with _running(publisher):
        _enqueue(store, PRIORITY_SUMMARY, topics["summary"], summaries)
        _enqueue(store, PRIORITY_EVENT, topics["event"], events)
        _enqueue(store, PRIORITY_ALERT, topics["alert"], alerts)
        _commit(store)
        await asyncio.sleep(SETTLE_S)
        assert not publisher.connected
        broker.start()
        expected = len(summaries) + len(events) + len(alerts) + 1  # and the birth
        await eventually(
            lambda: len(subscriber.payloads()) >= expected, DELIVERY_TIMEOUT_S
        )

    data = [p for p in _first_seen(subscriber.payloads()) if not p.startswith(b"{")]
    assert data == alerts + events + summaries


async def test_outage_loses_nothing_and_sends_the_backlog_alerts_first(
    make_broker: MakeBroker,
    make_subscriber: MakeSubscriber,
    store: Store,
    topic_prefix: str,
) -> None:
    """Messages produced while the broker is down all arrive, alerts first."""
    broker = make_broker(persistence=True)
    identity = _identity()
    alert_topic = tool_topic(topic_prefix, SITE, identity.id, TOOL, "alert")
    summary_topic = tool_topic(topic_prefix, SITE, identity.id, TOOL, "summary")
    subscriber = make_subscriber(broker, f"{topic_prefix}/{SITE}/{identity.id}/+/+")
    before = _labels("before", 50)
    during_summaries = _labels("during-summary", 50)
    during_alerts = _labels("during-alert", 10)
    publisher = Publisher(
        _config(broker, topic_prefix, "3.1.1"), identity, store, BIRTH
    )

    async with _running(publisher):
        await eventually(lambda: publisher.connected, DELIVERY_TIMEOUT_S)
        _enqueue(store, PRIORITY_SUMMARY, summary_topic, before)
        _commit(store)
        # Cut the broker while the first messages are still flowing.
        await eventually(lambda: publisher.stats.published > 0, DELIVERY_TIMEOUT_S)
        broker.stop()
        _enqueue(store, PRIORITY_SUMMARY, summary_topic, during_summaries)
        _enqueue(store, PRIORITY_ALERT, alert_topic, during_alerts)
        _commit(store)
        await eventually(lambda: not publisher.connected, DELIVERY_TIMEOUT_S)
        await asyncio.sleep(SETTLE_S)
        broker.start()
        await eventually(
            lambda: store.pending_messages(limit=10) == [], DELIVERY_TIMEOUT_S
        )
        expected = len(before) + len(during_summaries) + len(during_alerts)
        await eventually(
            lambda: len(set(subscriber.payloads())) >= expected, DELIVERY_TIMEOUT_S
        )

    received = _first_seen(subscriber.payloads())
    assert sorted(received) == sorted(before + during_summaries + during_alerts)
    alerts = [p for p in received if p.startswith(b"during-alert")]
    summaries = [p for p in received if p.startswith(b"during-summary")]
    assert alerts == during_alerts
    assert summaries == during_summaries
    assert [p for p in received if p.startswith(b"before")] == before
    assert received.index(during_alerts[-1]) < received.index(during_summaries[0])
    assert publisher.stats.reconnects >= 1


# ----------------------------------------------------------------- status


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_status_is_online_while_running_and_offline_after_stop(
    broker: Broker,
    make_subscriber: MakeSubscriber,
    store: Store,
    topic_prefix: str,
    protocol: str,
) -> None:
    """The retained status says online with the birth fields, then offline."""
    identity = _identity()
    status = status_topic(topic_prefix, SITE, identity.id)
    publisher = Publisher(
        _config(broker, topic_prefix, protocol), identity, store, BIRTH
    )

    async with _running(publisher):
        await eventually(lambda: publisher.connected, DELIVERY_TIMEOUT_S)
        late = make_subscriber(broker, status)
        await eventually(lambda: bool(late.messages), DELIVERY_TIMEOUT_S)
        online = late.messages[0]

    assert online.retain
    document = _status(late, status)[0]
    assert document["schema"] == STATUS_SCHEMA
    assert document["state"] == "online"
    assert (document["site"], document["gateway"]) == (SITE, identity.id)
    assert document["version"] == BIRTH["version"]
    assert document["tools"] == BIRTH["tools"]
    assert datetime.fromisoformat(document["ts"]).utcoffset() is not None

    await eventually(lambda: len(late.messages) >= 2, DELIVERY_TIMEOUT_S)
    assert _status(late, status)[-1]["state"] == "offline"
    after = make_subscriber(broker, status)
    await eventually(lambda: bool(after.messages), DELIVERY_TIMEOUT_S)
    assert after.messages[0].retain
    assert _status(after, status)[0]["state"] == "offline"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_cancelling_run_leaves_the_last_will_offline(
    broker: Broker,
    make_subscriber: MakeSubscriber,
    store: Store,
    topic_prefix: str,
    protocol: str,
) -> None:
    """Cancelled without stop(), the session is dropped and the will says offline."""
    identity = _identity()
    status = status_topic(topic_prefix, SITE, identity.id)
    subscriber = make_subscriber(broker, status)
    publisher = Publisher(
        _config(broker, topic_prefix, protocol), identity, store, BIRTH
    )
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: bool(subscriber.messages), DELIVERY_TIMEOUT_S)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(TASK_EXIT_TIMEOUT_S):
            await task

    await eventually(lambda: len(subscriber.messages) >= 2, DELIVERY_TIMEOUT_S)
    assert [d["state"] for d in _status(subscriber, status)] == ["online", "offline"]


_KILLABLE_PUBLISHER = """
import asyncio, sys
from pathlib import Path
from gateway.config.models import GatewayIdentity, MqttConfig, StoreConfig
from gateway.publish import Publisher
from gateway.store import Store

async def main() -> None:
    config = MqttConfig.model_validate_json(sys.argv[1])
    identity = GatewayIdentity.model_validate_json(sys.argv[2])
    store = Store.open(Path(sys.argv[3]), StoreConfig())
    await Publisher(config, identity, store, {"version": "killed"}).run()

asyncio.run(main())
"""


async def test_last_will_says_offline_when_the_gateway_dies(
    broker: Broker,
    make_subscriber: MakeSubscriber,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    """A gateway process killed with SIGKILL leaves a retained offline status."""
    identity = _identity()
    status = status_topic(topic_prefix, SITE, identity.id)
    subscriber = make_subscriber(broker, status)
    config = _config(broker, topic_prefix, "5")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _KILLABLE_PUBLISHER,
        config.model_dump_json(),
        identity.model_dump_json(),
        str(tmp_path / "killed.db"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await eventually(lambda: bool(subscriber.messages), DELIVERY_TIMEOUT_S)
        process.send_signal(signal.SIGKILL)
    finally:
        if process.returncode is None:
            process.kill()
        async with asyncio.timeout(TASK_EXIT_TIMEOUT_S):
            await process.wait()

    await eventually(lambda: len(subscriber.messages) >= 2, DELIVERY_TIMEOUT_S)
    assert [d["state"] for d in _status(subscriber, status)] == ["online", "offline"]
    after = make_subscriber(broker, status)
    await eventually(lambda: bool(after.messages), DELIVERY_TIMEOUT_S)
    assert after.messages[0].retain
    assert _status(after, status)[0]["state"] == "offline"


# ----------------------------------------------------------------- security

USER = "gateway"
PASSWORD = "s3cret-Pa55"


def _password_broker(make_broker: MakeBroker) -> Broker:
    broker = make_broker(start=False)
    password_file = broker.directory / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(password_file), USER, PASSWORD],
        check=True,
        capture_output=True,
        timeout=OPENSSL_TIMEOUT_S,
    )
    share_with_broker(password_file)
    broker.options = ("allow_anonymous false", f"password_file {password_file}")
    broker.start()
    return broker


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_username_and_password_are_sent_and_never_logged(
    make_broker: MakeBroker,
    make_subscriber: MakeSubscriber,
    store: Store,
    topic_prefix: str,
    protocol: str,
) -> None:
    """The right credentials connect and publish; the password appears in no log."""
    broker = _password_broker(make_broker)
    identity = _identity()
    topic = tool_topic(topic_prefix, SITE, identity.id, TOOL, "alert")
    subscriber = make_subscriber(broker, topic, username=USER, password=PASSWORD)
    _enqueue(store, PRIORITY_ALERT, topic, [b"authorised"])
    _commit(store)
    config = _config(
        broker, topic_prefix, protocol, username=USER, password=SecretStr(PASSWORD)
    )
    publisher = Publisher(config, identity, store, BIRTH)

    with structlog.testing.capture_logs() as logs:
        async with _running(publisher):
            await eventually(lambda: bool(subscriber.messages), DELIVERY_TIMEOUT_S)

    assert subscriber.payloads() == [b"authorised"]
    assert any(entry["event"] == "mqtt_connected" for entry in logs)
    assert PASSWORD not in repr(logs)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_wrong_password_is_refused_and_retried(
    make_broker: MakeBroker,
    store: Store,
    topic_prefix: str,
    protocol: str,
) -> None:
    """A refused login leaves the publisher disconnected, retrying, rows kept."""
    broker = _password_broker(make_broker)
    identity = _identity()
    topic = tool_topic(topic_prefix, SITE, identity.id, TOOL, "alert")
    _enqueue(store, PRIORITY_ALERT, topic, [b"kept"])
    _commit(store)
    wrong = "not-the-password"
    config = _config(
        broker, topic_prefix, protocol, username=USER, password=SecretStr(wrong)
    )
    publisher = Publisher(config, identity, store, BIRTH)

    with structlog.testing.capture_logs() as logs:
        async with _running(publisher, SHORT_STOP_S):
            await eventually(
                lambda: sum(e["event"] == "mqtt_connect_failed" for e in logs) >= 2,
                DELIVERY_TIMEOUT_S,
            )
            assert not publisher.connected

    assert "refused" in (publisher.stats.last_error or "")
    assert all("retry_in" in e for e in logs if e["event"] == "mqtt_connect_failed")
    assert wrong not in repr(logs)
    assert [row.payload for row in store.pending_messages(limit=10)] == [b"kept"]


def _openssl(*args: str) -> None:
    subprocess.run(
        ["openssl", *args], check=True, capture_output=True, timeout=OPENSSL_TIMEOUT_S
    )


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """Create a self-signed CA; return (certificate, key)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", CERT_DAYS,
        "-subj", f"/CN=edge-gateway test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _make_server_cert(directory: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """Create a server certificate for 127.0.0.1 signed by ``ca``."""
    cert, key, csr = (directory / f"server.{ext}" for ext in ("pem", "key", "csr"))
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", str(cert), "-days", CERT_DAYS,
        "-extfile", str(extensions),
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_broker(make_broker: MakeBroker) -> tuple[Broker, Path, Path]:
    """A broker serving TLS only; returns (broker, its CA, an unrelated CA)."""
    broker = make_broker(start=False)
    ca = _make_ca(broker.directory, "ca")
    other_ca = _make_ca(broker.directory, "other-ca")
    server = _make_server_cert(broker.directory, ca)
    for path in (ca[0], server[0], server[1]):
        share_with_broker(path)
    broker.listener_options = (
        f"cafile {ca[0]}",
        f"certfile {server[0]}",
        f"keyfile {server[1]}",
    )
    broker.start()
    return broker, ca[0], other_ca[0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_tls_with_the_right_ca_delivers(
    tls_broker: tuple[Broker, Path, Path],
    make_subscriber: MakeSubscriber,
    store: Store,
    topic_prefix: str,
    protocol: str,
) -> None:
    """With the broker's CA the certificate is verified and messages flow."""
    broker, ca_file, _ = tls_broker
    identity = _identity()
    topic = tool_topic(topic_prefix, SITE, identity.id, TOOL, "event")
    subscriber = make_subscriber(broker, topic, tls={"ca_certs": str(ca_file)})
    _enqueue(store, PRIORITY_EVENT, topic, [b"over-tls"])
    _commit(store)
    tls = TlsConfig(enabled=True, ca_file=ca_file)
    config = _config(broker, topic_prefix, protocol, tls=tls)
    publisher = Publisher(config, identity, store, BIRTH)

    async with _running(publisher):
        await eventually(lambda: bool(subscriber.messages), DELIVERY_TIMEOUT_S)

    assert subscriber.payloads() == [b"over-tls"]


async def test_tls_with_a_wrong_ca_is_refused(
    tls_broker: tuple[Broker, Path, Path],
    store: Store,
    topic_prefix: str,
) -> None:
    """A broker certificate from another CA fails verification; nothing is sent."""
    broker, _, other_ca = tls_broker
    identity = _identity()
    topic = tool_topic(topic_prefix, SITE, identity.id, TOOL, "event")
    _enqueue(store, PRIORITY_EVENT, topic, [b"must-not-leave"])
    _commit(store)
    tls = TlsConfig(enabled=True, ca_file=other_ca)
    publisher = Publisher(
        _config(broker, topic_prefix, "5", tls=tls), identity, store, BIRTH
    )

    with structlog.testing.capture_logs() as logs:
        async with _running(publisher, SHORT_STOP_S):
            await eventually(
                lambda: any(e["event"] == "mqtt_connect_failed" for e in logs),
                DELIVERY_TIMEOUT_S,
            )
            assert not publisher.connected

    assert "certificate verify failed" in (publisher.stats.last_error or "")
    assert publisher.stats.published == 0
    assert len(store.pending_messages(limit=10)) == 1


async def test_tls_without_verification_connects_and_warns(
    tls_broker: tuple[Broker, Path, Path],
    store: Store,
    topic_prefix: str,
) -> None:
    """verify = false accepts any certificate and says so at WARNING."""
    broker, _, other_ca = tls_broker
    tls = TlsConfig(enabled=True, ca_file=other_ca, verify=False)
    config = _config(broker, topic_prefix, "3.1.1", tls=tls)

    with structlog.testing.capture_logs() as logs:
        publisher = Publisher(config, _identity(), store, BIRTH)
        async with _running(publisher):
            await eventually(lambda: publisher.connected, DELIVERY_TIMEOUT_S)

    warnings = [e for e in logs if e["event"] == "mqtt_tls_unverified"]
    assert [e["log_level"] for e in warnings] == ["warning"]


# ----------------------------------------------------------------- shutdown


async def test_stop_publishes_the_backlog_within_the_deadline(
    broker: Broker,
    make_subscriber: MakeSubscriber,
    store: Store,
    topic_prefix: str,
) -> None:
    """Rows committed just before stop() are still sent before going offline."""
    identity = _identity()
    topic = tool_topic(topic_prefix, SITE, identity.id, TOOL, "summary")
    subscriber = make_subscriber(broker, f"{topic_prefix}/#")
    sent = _labels("last-words", 200)
    publisher = Publisher(_config(broker, topic_prefix, "5"), identity, store, BIRTH)
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: publisher.connected, DELIVERY_TIMEOUT_S)
    _enqueue(store, PRIORITY_SUMMARY, topic, sent)
    _commit(store)

    await publisher.stop(STOP_DEADLINE_S)
    async with asyncio.timeout(TASK_EXIT_TIMEOUT_S):
        await task

    assert store.pending_messages(limit=10) == []
    status = status_topic(topic_prefix, SITE, identity.id)

    def offline_at() -> int:
        """Where the offline status arrived among the messages, or -1."""
        for i, message in enumerate(subscriber.messages):
            if message.topic == status and json.loads(message.payload)["state"] == (
                "offline"
            ):
                return i
        return -1

    # The offline status follows the last words: wait for it, not just for them.
    await eventually(lambda: offline_at() >= 0, 5.0)
    received = subscriber.messages
    last_words = [i for i, m in enumerate(received) if m.topic == topic]
    assert max(last_words) < offline_at()
    assert _first_seen([m.payload for m in received if m.topic == topic]) == sent


async def test_stop_with_the_broker_down_keeps_rows_and_returns_in_time(
    make_broker: MakeBroker,
    store: Store,
    topic_prefix: str,
) -> None:
    """With no broker, stop() returns by its deadline and the rows stay queued."""
    broker = make_broker(start=False)
    identity = _identity()
    topic = tool_topic(topic_prefix, SITE, identity.id, TOOL, "alert")
    _enqueue(store, PRIORITY_ALERT, topic, [b"for-next-start"])
    _commit(store)
    publisher = Publisher(_config(broker, topic_prefix, "5"), identity, store, BIRTH)
    task = asyncio.create_task(publisher.run())
    await asyncio.sleep(SETTLE_S)
    deadline_s = 1.0

    loop = asyncio.get_running_loop()
    started = loop.time()
    await publisher.stop(deadline_s)
    async with asyncio.timeout(TASK_EXIT_TIMEOUT_S):
        await task

    assert loop.time() - started < deadline_s + 1.0
    assert [row.payload for row in store.pending_messages(limit=10)] == [
        b"for-next-start"
    ]


async def test_stop_before_run_makes_run_return_at_once(store: Store) -> None:
    """A publisher stopped before it ran never connects and run() just returns."""
    publisher = Publisher(MqttConfig(), _identity(), store, BIRTH)

    await publisher.stop(STOP_DEADLINE_S)
    async with asyncio.timeout(TASK_EXIT_TIMEOUT_S):
        await publisher.run()

    assert not publisher.connected
    assert publisher.stats.published == 0
