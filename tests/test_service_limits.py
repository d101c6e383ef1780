"""Self-limits: the daemon warns, with the figures, when it nears a limit."""

from __future__ import annotations

import structlog

from gateway.limits import REPEAT_S, LimitWatch


def test_a_figure_near_its_limit_warns_once_then_repeats_then_clears() -> None:
    """One WARNING on crossing, one per REPEAT_S while near, INFO when back."""
    watch = LimitWatch(warn_fraction=0.8)
    with structlog.testing.capture_logs() as logs:
        assert watch.check({"rss_bytes": (700.0, 1000.0)}, now=0.0) == []
        assert watch.check({"rss_bytes": (850.0, 1000.0)}, now=1.0) == ["rss_bytes"]
        assert watch.check({"rss_bytes": (900.0, 1000.0)}, now=2.0) == ["rss_bytes"]
        watch.check({"rss_bytes": (900.0, 1000.0)}, now=1.0 + REPEAT_S)
        assert watch.check({"rss_bytes": (100.0, 1000.0)}, now=2.0 + REPEAT_S) == []

    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("self_limit_near", "warning"),
        ("self_limit_near", "warning"),
        ("self_limit_cleared", "info"),
    ]
    first = logs[0]
    assert (first["figure"], first["value"], first["limit"]) == (
        "rss_bytes",
        850.0,
        1000.0,
    )
    assert first["share"] == 0.85


def test_figures_are_watched_apart_and_a_zero_limit_never_warns() -> None:
    """Each figure has its own state; a limit of 0 means none."""
    watch = LimitWatch(warn_fraction=0.5)
    near = watch.check(
        {
            "outbox_messages": (60.0, 100.0),
            "pipeline_queue": (1.0, 256.0),
            "unlimited": (1e9, 0.0),
        },
        now=0.0,
    )
    assert near == ["outbox_messages"]
    assert watch.near == ["outbox_messages"]
