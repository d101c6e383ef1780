"""MQTT publishing: the topic tree and the publisher that drains the outbox."""

from gateway.publish.publisher import (
    STATUS_SCHEMA,
    Outbox,
    PendingMessage,
    Publisher,
    PublisherStats,
    default_client_id,
    status_payload,
)
from gateway.publish.topics import TOOL_KINDS, status_topic, tool_topic

__all__ = [
    "STATUS_SCHEMA",
    "TOOL_KINDS",
    "Outbox",
    "PendingMessage",
    "Publisher",
    "PublisherStats",
    "default_client_id",
    "status_payload",
    "status_topic",
    "tool_topic",
]
