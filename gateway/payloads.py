"""JSON payloads published on the tool topics, each carrying a ``schema`` version.

The JSON Schemas in ``gateway/publish/schemas/`` describe them for subscribers;
the tests validate every payload the gateway sends against them.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from drivers.base import EquipmentEvent
from gateway.alerts import AlertEvent
from gateway.summaries import WindowSummary

__all__ = [
    "ALERT_SCHEMA",
    "EQUIPMENT_ALARM_MODEL",
    "EVENT_SCHEMA",
    "SUMMARY_SCHEMA",
    "TELEMETRY_SCHEMA",
    "alarm_alert_payload",
    "alert_payload",
    "event_payload",
    "iso_utc",
    "summary_payload",
    "telemetry_payload",
]

ALERT_SCHEMA = "edge-gateway/alert/1"
SUMMARY_SCHEMA = "edge-gateway/summary/1"
TELEMETRY_SCHEMA = "edge-gateway/telemetry/1"
EVENT_SCHEMA = "edge-gateway/event/1"
EQUIPMENT_ALARM_MODEL = "equipment_alarm"
# Poll groups whose tags' JSON prefixes are kept between windows.
_PREFIX_CACHE_GROUPS = 64

_NS_PER_S = 1_000_000_000


def iso_utc(ts_ns: int) -> str:
    """Format nanoseconds since the epoch as ISO 8601 UTC with milliseconds."""
    moment = datetime.fromtimestamp(ts_ns / _NS_PER_S, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(value: float) -> float | None:
    """JSON has no NaN or infinity: such values are sent as null."""
    return float(value) if math.isfinite(value) else None


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def alert_payload(site: str, gateway: str, event: AlertEvent, unit: str) -> bytes:
    """Return the JSON of one alert raise or clear."""
    return _encode(
        {
            "schema": ALERT_SCHEMA,
            "site": site,
            "gateway": gateway,
            "tool": event.tool,
            "tag": event.tag,
            "unit": unit,
            "model": event.model,
            "state": event.state,
            "severity": event.severity,
            "ts": iso_utc(event.ts_ns),
            "started": iso_utc(event.started_ns),
            "value": _number(event.value),
            "score": _number(event.score),
            "peak_score": _number(event.peak_score),
            "raise_level": event.raise_level,
            "clear_level": event.clear_level,
            "window": {key: _number(value) for key, value in event.window.items()},
        }
    )


def alarm_alert_payload(
    site: str, gateway: str, event: EquipmentEvent, started_ns: int
) -> bytes:
    """Return the JSON of the alert an equipment alarm raises or clears.

    The tag is ``ALID <n>``, the model ``equipment_alarm``; there is no score or
    level, and the ``alarm`` object carries the tool's own id and text.
    """
    return _encode(
        {
            "schema": ALERT_SCHEMA,
            "site": site,
            "gateway": gateway,
            "tool": event.tool,
            "tag": f"ALID {event.code}",
            "unit": "",
            "model": EQUIPMENT_ALARM_MODEL,
            "state": "raised" if event.state == "set" else "cleared",
            "severity": event.severity or "warning",
            "ts": iso_utc(event.ts_ns),
            "started": iso_utc(started_ns),
            "value": None,
            "score": None,
            "peak_score": None,
            "raise_level": None,
            "clear_level": None,
            "window": {"n": None, "mean": None, "std": None, "min": None, "max": None},
            "alarm": {"alid": event.code, "text": event.name, **event.data},
        }
    )


def event_payload(site: str, gateway: str, event: EquipmentEvent) -> bytes:
    """Return the JSON of one equipment event or alarm report."""
    return _encode(
        {
            "schema": EVENT_SCHEMA,
            "site": site,
            "gateway": gateway,
            "tool": event.tool,
            "kind": event.kind,
            "ts": iso_utc(event.ts_ns),
            "code": event.code,
            "name": event.name,
            "state": event.state or None,
            "severity": event.severity or None,
            "data": event.data,
        }
    )


def summary_payload(
    site: str,
    gateway: str,
    tool: str,
    group: str,
    tag_names: Sequence[str],
    units: Sequence[str],
    summary: WindowSummary,
) -> bytes:
    """Return the JSON of one window's summaries of a poll group's tags.

    The text is what ``json.dumps`` makes of the document (compact separators,
    non-finite numbers as null), written column by column: a group of 100,000
    tags closes its window in a fraction of the time a dict per tag takes.
    """
    head = _encode(
        {
            "schema": SUMMARY_SCHEMA,
            "site": site,
            "gateway": gateway,
            "tool": tool,
            "group": group,
            "window_start": iso_utc(summary.start_ns),
            "window_end": iso_utc(summary.end_ns),
        }
    )
    prefixes = _tag_prefixes(tuple(tag_names), tuple(units))
    entries = ",".join(
        f'{prefix}{count},"min":{low},"max":{high},"mean":{mean},"std":{std},'
        f'"last":{last},"bad":{bad},"max_score":{score}}}'
        for prefix, count, low, high, mean, std, last, bad, score in zip(
            prefixes,
            summary.count.tolist(),
            _json_numbers(summary.minimum),
            _json_numbers(summary.maximum),
            _json_numbers(summary.mean),
            _json_numbers(summary.std),
            _json_numbers(summary.last),
            summary.bad.tolist(),
            _json_numbers(summary.max_score),
            strict=True,
        )
    )
    return head[:-1] + b',"tags":{' + entries.encode() + b"}}"


@functools.lru_cache(maxsize=_PREFIX_CACHE_GROUPS)
def _tag_prefixes(tag_names: tuple[str, ...], units: tuple[str, ...]) -> list[str]:
    """Each tag's entry up to its count: ``"name":{"unit":"u","count":``."""
    return [
        f'{json.dumps(name)}:{{"unit":{json.dumps(unit)},"count":'
        for name, unit in zip(tag_names, units, strict=True)
    ]


def _json_numbers(values: npt.NDArray[np.float64]) -> list[str]:
    """Return each value as JSON writes it: ``repr`` of the float, else null."""
    texts = list(map(float.__repr__, values.tolist()))
    for i in np.flatnonzero(~np.isfinite(values)).tolist():
        texts[i] = "null"
    return texts


def telemetry_payload(
    site: str,
    gateway: str,
    tool: str,
    group: str,
    tag_names: Sequence[str],
    timestamps_ns: np.ndarray,
    values: np.ndarray,
    quality: np.ndarray,
) -> bytes:
    """Return the JSON of a batch's raw readings of the selected tags (columns)."""
    finite = np.isfinite(values)
    cleaned = np.where(finite, values, 0.0).tolist()
    rows = finite.tolist()
    return _encode(
        {
            "schema": TELEMETRY_SCHEMA,
            "site": site,
            "gateway": gateway,
            "tool": tool,
            "group": group,
            "tags": list(tag_names),
            "ts": [iso_utc(int(ts)) for ts in timestamps_ns],
            "values": [
                [v if ok else None for v, ok in zip(row, oks, strict=True)]
                for row, oks in zip(cleaned, rows, strict=True)
            ],
            "quality": quality.tolist(),
        }
    )
