"""The local store: one SQLite database holding readings, outbox and history.

See :class:`Store`. Reading blocks are encoded by :mod:`gateway.store.codec`.
"""

from gateway.store.codec import BlockCodec, CodecError, decode_block
from gateway.store.errors import StoreClosedError, StoreError
from gateway.store.records import (
    PRIORITY_ALERT,
    PRIORITY_EVENT,
    PRIORITY_SUMMARY,
    PRIORITY_TELEMETRY,
    AlertRecord,
    EventRecord,
    OutboxMessage,
    OutboxRow,
    Rollup,
    RollupColumns,
    StoreStats,
    ToolStoreStats,
    merge_rollups,
)
from gateway.store.store import Readings, Store, StoreReader

__all__ = [
    "PRIORITY_ALERT",
    "PRIORITY_EVENT",
    "PRIORITY_SUMMARY",
    "PRIORITY_TELEMETRY",
    "AlertRecord",
    "BlockCodec",
    "CodecError",
    "EventRecord",
    "OutboxMessage",
    "OutboxRow",
    "Readings",
    "Rollup",
    "RollupColumns",
    "Store",
    "StoreClosedError",
    "StoreError",
    "StoreReader",
    "StoreStats",
    "ToolStoreStats",
    "decode_block",
    "merge_rollups",
]
