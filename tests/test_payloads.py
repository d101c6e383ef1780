"""Summary payloads: the column-wise JSON against a plain ``json.dumps`` reference."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import numpy.typing as npt
import pytest

from gateway.payloads import SUMMARY_SCHEMA, iso_utc, summary_payload
from gateway.summaries import WindowSummary

SEED = 7
T0_NS = 1_764_000_000_000_000_000
SCHEMAS = Path(__file__).resolve().parents[1] / "gateway" / "publish" / "schemas"
ODD_NAMES = ["plain", 'quo"te', "back\\slash", "µ-flow", "tab\there", "ünï"]


def naive_summary_payload(
    site: str,
    gateway: str,
    tool: str,
    group: str,
    tag_names: list[str],
    units: list[str],
    summary: WindowSummary,
) -> bytes:
    """The obvious way: one dict per tag, non-finite numbers as None, json.dumps."""

    def number(value: float) -> float | None:
        return float(value) if math.isfinite(value) else None

    tags: dict[str, Any] = {}
    for i, name in enumerate(tag_names):
        tags[name] = {
            "unit": units[i],
            "count": int(summary.count[i]),
            "min": number(summary.minimum[i]),
            "max": number(summary.maximum[i]),
            "mean": number(summary.mean[i]),
            "std": number(summary.std[i]),
            "last": number(summary.last[i]),
            "bad": int(summary.bad[i]),
            "max_score": number(summary.max_score[i]),
        }
    document = {
        "schema": SUMMARY_SCHEMA,
        "site": site,
        "gateway": gateway,
        "tool": tool,
        "group": group,
        "window_start": iso_utc(summary.start_ns),
        "window_end": iso_utc(summary.end_ns),
        "tags": tags,
    }
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def random_summary(k: int, rng: np.random.Generator) -> WindowSummary:
    """A window of ``k`` tags with NaN, infinities, zeros and extreme values."""

    def floats() -> npt.NDArray[np.float64]:
        values = rng.normal(0.0, 1e3, k) * 10.0 ** rng.integers(-12, 12, k)
        specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e308, 5e-324])
        chosen = rng.random(k) < 0.2
        values[chosen] = rng.choice(specials, int(chosen.sum()))
        return values

    return WindowSummary(
        start_ns=T0_NS,
        end_ns=T0_NS + 60 * 1_000_000_000,
        count=rng.integers(0, 10_000, k).astype(np.int64),
        minimum=floats(),
        maximum=floats(),
        mean=floats(),
        std=np.abs(floats()),  # a deviation is never negative
        last=floats(),
        last_ns=np.full(k, T0_NS, np.int64),
        bad=rng.integers(0, 5, k).astype(np.int64),
        max_score=np.abs(floats()),  # scores are magnitudes
        m2=floats(),
    )


@pytest.mark.parametrize("k", [0, 1, 6, 2_000])
def test_summary_payload_is_byte_for_byte_the_reference(k: int) -> None:
    """The column-wise payload equals json.dumps of a dict per tag, byte for byte."""
    rng = np.random.default_rng(SEED + k)
    names = [ODD_NAMES[i % len(ODD_NAMES)] + f"-{i}" for i in range(k)]
    units = [["mTorr", "°C", "", 'in"'][i % 4] for i in range(k)]
    summary = random_summary(k, rng)

    fast = summary_payload("fab-1", "gw-01", "etch-07", "fast", names, units, summary)
    slow = naive_summary_payload(
        "fab-1", "gw-01", "etch-07", "fast", names, units, summary
    )
    assert fast == slow


def test_summary_payload_follows_the_schema() -> None:
    """A payload with non-finite statistics still validates against summary.json."""
    rng = np.random.default_rng(SEED)
    summary = random_summary(50, rng)
    names = [f"t{i}" for i in range(50)]
    payload = summary_payload("s", "g", "t", "grp", names, ["u"] * 50, summary)

    document = json.loads(payload)
    jsonschema.validate(document, json.loads((SCHEMAS / "summary.json").read_text()))
    assert list(document["tags"]) == names
