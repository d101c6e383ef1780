"""Shared fixtures: private Mosquitto brokers, subscribers, unique topic prefixes.

- ``broker``: one broker for the whole session (anonymous, MQTT 3.1.1 and 5).
  Tests must not stop it; they isolate themselves with ``topic_prefix``.
- ``make_broker(options=..., listener_options=..., persistence=...)``: a fresh,
  started broker owned by one test (outages, passwords, TLS); every broker it
  made is stopped and deleted after the test.
- ``make_subscriber(broker, topic_filter, **options)``: a started
  :class:`mosquitto.Subscriber`, stopped after the test.
- ``topic_prefix``: a prefix no other test uses, such as ``t/3f9c0a1b2d4e``.

Every broker test is skipped, with the reason, when ``mosquitto`` is not on PATH.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from mosquitto import MOSQUITTO, Broker, MakeBroker, MakeSubscriber, Subscriber


def _require_mosquitto() -> None:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed: MQTT tests need a real broker")


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """A broker shared by the session; never stop it from a test."""
    _require_mosquitto()
    shared = Broker.create()
    shared.start()
    yield shared
    shared.close()


@pytest.fixture
def make_broker() -> Iterator[MakeBroker]:
    """Build started brokers owned by this test (stop/start them freely)."""
    _require_mosquitto()
    made: list[Broker] = []

    def make(
        options: Iterable[str] = ("allow_anonymous true",),
        listener_options: Iterable[str] = (),
        *,
        persistence: bool = False,
        start: bool = True,
    ) -> Broker:
        created = Broker.create(options, listener_options, persistence=persistence)
        made.append(created)
        if start:
            created.start()
        return created

    yield make
    for created in made:
        created.close()


@pytest.fixture
def make_subscriber() -> Iterator[MakeSubscriber]:
    """Start subscribers that record (topic, payload) in arrival order."""
    started: list[Subscriber] = []

    def make(broker: Broker, topic_filter: str, **options: Any) -> Subscriber:
        options.setdefault("client_id", f"test-sub-{uuid.uuid4().hex[:12]}")
        subscriber = Subscriber(broker, topic_filter, **options)
        subscriber.start()
        started.append(subscriber)
        return subscriber

    yield make
    for subscriber in started:
        subscriber.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix unique to this test."""
    return f"t/{uuid.uuid4().hex[:12]}"
