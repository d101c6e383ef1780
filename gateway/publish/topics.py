"""The MQTT topic tree central systems subscribe to.

```
<prefix>/<site>/<gateway>/status            retained; online / offline (last will)
<prefix>/<site>/<gateway>/<tool>/<kind>     kind: alert, event, summary, telemetry
```

Site and gateway ids are already restricted by the configuration schema; tool ids
are checked here too, because a ``+``, ``#`` or ``/`` inside one level would make
subscribers' filters match the wrong tool or none at all.
"""

from __future__ import annotations

__all__ = [
    "STATUS_LEVEL",
    "TOOL_KINDS",
    "check_level",
    "status_topic",
    "tool_topic",
]

STATUS_LEVEL = "status"
TOOL_KINDS = ("alert", "event", "summary", "telemetry")

# MQTT wildcards and the level separator (MQTT 3.1.1 section 4.7, MQTT 5 section
# 4.7); U+0000 is forbidden in any UTF-8 string of the protocol (section 1.5.3).
_FORBIDDEN_IN_LEVEL = frozenset("+#/\x00")


def check_level(name: str, value: str) -> str:
    """Return ``value`` if it is usable as one topic level, else raise.

    Raises :class:`ValueError` naming ``name`` when ``value`` is empty or holds
    ``+``, ``#``, ``/`` or NUL.
    """
    if not value:
        raise ValueError(f"{name} must not be empty in an MQTT topic")
    bad = sorted(_FORBIDDEN_IN_LEVEL.intersection(value))
    if bad:
        raise ValueError(
            f"{name} {value!r} must not contain {' '.join(map(repr, bad))}"
        )
    return value


def _check_prefix(prefix: str) -> str:
    # The prefix may span several levels, so "/" is allowed inside it but not at
    # either end, where it would create an empty level.
    if not prefix or prefix.startswith("/") or prefix.endswith("/"):
        raise ValueError(f"topic prefix {prefix!r} must not be empty or end in '/'")
    for level in prefix.split("/"):
        check_level("topic prefix level", level)
    return prefix


def status_topic(prefix: str, site: str, gateway: str) -> str:
    """Return ``<prefix>/<site>/<gateway>/status``, the retained status topic.

    Raises :class:`ValueError` when a level is empty or holds a wildcard.
    """
    return "/".join(
        (
            _check_prefix(prefix),
            check_level("site", site),
            check_level("gateway", gateway),
            STATUS_LEVEL,
        )
    )


def tool_topic(prefix: str, site: str, gateway: str, tool: str, kind: str) -> str:
    """Return ``<prefix>/<site>/<gateway>/<tool>/<kind>`` for one tool's messages.

    ``kind`` is one of :data:`TOOL_KINDS`. Raises :class:`ValueError` when the
    kind is unknown or the tool id contains ``+``, ``#``, ``/`` or NUL.
    """
    if kind not in TOOL_KINDS:
        raise ValueError(f"kind {kind!r} must be one of {', '.join(TOOL_KINDS)}")
    return "/".join(
        (
            _check_prefix(prefix),
            check_level("site", site),
            check_level("gateway", gateway),
            check_level("tool", tool),
            kind,
        )
    )
