"""Tests of the seeded signal generators behind the tool simulators."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError

from drivers.batch import BAD_NO_VALUE, GOOD, Float64Array, UInt8Array
from drivers.signals import FaultSpec, SignalGenerator, SignalSpec

STEP_S = 0.1
TIMES = np.arange(200) * STEP_S  # 20 s on the sampling grid
TAGS = ("pressure", "rf_power", "temperature")
SPECS = (
    SignalSpec(level=10.0, noise=0.3, drift_per_hour=36.0, amplitude=2.0, period_s=7.0),
    SignalSpec(
        level=-4.0, noise=0.5, amplitude=1.5, period_s=3.0, phase=1.0, drift_per_hour=-5
    ),
    SignalSpec(level=300.0, noise=1.0, amplitude=0.5, period_s=11.0, phase=4.0),
)
# Fault windows start between grid points, so no sample sits on a boundary.
AT_S = 5.05
DURATION_S = 2.0


def fault(**fields: Any) -> FaultSpec:
    """Return a validated fault, as the config loader would build it."""
    return FaultSpec.model_validate(fields)


def generator(faults: tuple[FaultSpec, ...] = (), seed: int = 7) -> SignalGenerator:
    """Return a generator of the three test tags."""
    return SignalGenerator(seed, TAGS, SPECS, faults, step_s=STEP_S)


def occurrence_start(spec: FaultSpec, t: float) -> float | None:
    """Return the start of the occurrence of ``spec`` that ``t`` is in, if any."""
    duration = STEP_S if spec.duration_s is None else spec.duration_s
    if t < spec.at_s:
        return None
    start = spec.at_s
    if spec.repeat_s is not None:
        start += math.floor((t - spec.at_s) / spec.repeat_s) * spec.repeat_s
    return start if t - start < duration else None


def reference(
    faults: tuple[FaultSpec, ...], seed: int = 7
) -> tuple[Float64Array, UInt8Array]:
    """Compute the test tags sample by sample, the obvious slow way."""
    unit_noise = SignalGenerator(
        seed, TAGS, [SignalSpec(level=0.0, noise=1.0)] * len(TAGS), step_s=STEP_S
    )

    def z(t: float, column: int) -> float:
        return float(unit_noise.sample([t])[0][0, column])

    def unquantised(t: float, column: int) -> float:
        spec = SPECS[column]
        value = spec.level + spec.drift_per_hour * t / 3600.0
        value += spec.amplitude * math.sin(2 * math.pi * t / spec.period_s + spec.phase)
        burst = 1.0
        for f in faults:
            bursting = f.kind == "noise_burst" and f.tag == TAGS[column]
            if bursting and occurrence_start(f, t) is not None:
                burst *= f.magnitude or 0.0
        value += spec.noise * burst * z(t, column)
        for f in faults:
            start = occurrence_start(f, t)
            if f.tag != TAGS[column] or start is None or f.magnitude is None:
                continue
            if f.kind in ("spike", "step"):
                value += f.magnitude
            elif f.kind == "drift":
                value += f.magnitude * (t - start) / (f.duration_s or STEP_S)
        return value

    values = np.empty((len(TIMES), len(TAGS)))
    quality = np.zeros(values.shape, dtype=np.uint8)
    for i, t in enumerate(TIMES.tolist()):
        for column, spec in enumerate(SPECS):
            value = unquantised(t, column)
            for f in faults:
                start = occurrence_start(f, t)
                if f.kind == "stuck" and f.tag == TAGS[column] and start is not None:
                    value = unquantised(start, column)
            if spec.resolution:
                value = round(value / spec.resolution) * spec.resolution
            for f in faults:
                start = occurrence_start(f, t)
                if f.kind == "dropout" and f.tag == TAGS[column] and start is not None:
                    value = math.nan
                    quality[i, column] = BAD_NO_VALUE
            values[i, column] = value
    return values, quality


def changed(a: Float64Array, b: Float64Array) -> npt.NDArray[np.bool_]:
    """Return where two value arrays differ, NaN counting as a value."""
    same: npt.NDArray[np.bool_] = (a == b) | (np.isnan(a) & np.isnan(b))
    return ~same


EVERY_KIND = (
    fault(kind="spike", tag="pressure", at_s=AT_S, magnitude=25.0),
    fault(kind="step", tag="pressure", at_s=AT_S, duration_s=DURATION_S, magnitude=-3),
    fault(kind="drift", tag="pressure", at_s=AT_S, duration_s=DURATION_S, magnitude=8),
    fault(kind="stuck", tag="pressure", at_s=AT_S, duration_s=DURATION_S),
    fault(
        kind="noise_burst",
        tag="pressure",
        at_s=AT_S,
        duration_s=DURATION_S,
        magnitude=6.0,
    ),
    fault(kind="dropout", tag="pressure", at_s=AT_S, duration_s=DURATION_S),
)


def test_shapes_and_dtypes() -> None:
    """sample returns float64 values and uint8 quality, steps x tags."""
    values, quality = generator().sample(TIMES)

    assert values.shape == quality.shape == (len(TIMES), len(TAGS))
    assert values.dtype == np.float64
    assert quality.dtype == np.uint8
    assert (quality == GOOD).all()


def test_no_times_gives_empty_arrays() -> None:
    """An empty array of times gives zero rows, not an error."""
    values, quality = generator(EVERY_KIND[:1]).sample(np.array([]))

    assert values.shape == quality.shape == (0, len(TAGS))


def test_clean_signal_matches_reference() -> None:
    """Without faults every sample is level + drift + sine + noise."""
    values, _ = generator().sample(TIMES)
    expected, _ = reference(())

    # The sine is taken in float32; its error is ~1e-7 of the amplitude.
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("spec", EVERY_KIND, ids=lambda spec: spec.kind)
def test_fault_matches_reference(spec: FaultSpec) -> None:
    """Each fault kind gives what the per-sample reference computes."""
    values, quality = generator((spec,)).sample(TIMES)
    expected, expected_quality = reference((spec,))

    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(quality, expected_quality)


@pytest.mark.parametrize("spec", EVERY_KIND, ids=lambda spec: spec.kind)
def test_fault_changes_only_its_tag_and_window(spec: FaultSpec) -> None:
    """A fault changes its own tag in its window and nothing else."""
    clean, _ = generator().sample(TIMES)
    faulty, _ = generator((spec,)).sample(TIMES)

    duration = STEP_S if spec.duration_s is None else spec.duration_s
    in_window = (spec.at_s <= TIMES) & (spec.at_s + duration > TIMES)
    expected = np.zeros(clean.shape, dtype=bool)
    expected[:, TAGS.index("pressure")] = in_window
    np.testing.assert_array_equal(changed(clean, faulty), expected)


def test_spike_lasts_one_sample_by_default() -> None:
    """A spike without duration_s hits exactly one sample of the grid."""
    spike = fault(kind="spike", tag="rf_power", at_s=AT_S, magnitude=40.0)
    clean, _ = generator().sample(TIMES)
    faulty, _ = generator((spike,)).sample(TIMES)

    rows, columns = np.nonzero(changed(clean, faulty))
    assert rows.tolist() == [51]
    assert columns.tolist() == [1]
    assert faulty[51, 1] - clean[51, 1] == pytest.approx(40.0)


def test_repeat_s_repeats_the_fault() -> None:
    """With repeat_s the fault recurs every repeat_s seconds after at_s."""
    spike = fault(kind="spike", tag="rf_power", at_s=1.05, magnitude=9.0, repeat_s=3)
    clean, _ = generator().sample(TIMES)
    faulty, _ = generator((spike,)).sample(TIMES)

    rows = np.flatnonzero(changed(clean, faulty)[:, 1])
    assert rows.tolist() == [11, 41, 71, 101, 131, 161, 191]


def test_repeated_stuck_holds_each_occurrence_start() -> None:
    """Each occurrence of a repeated stuck fault holds its own start's value."""
    stuck = fault(
        kind="stuck", tag="temperature", at_s=2.05, duration_s=1.0, repeat_s=5.0
    )
    values, _ = generator((stuck,)).sample(TIMES)
    expected, _ = reference((stuck,))

    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-5)
    held = values[21:31, 2]
    assert (held == held[0]).all()
    assert values[71, 2] != held[0]


def test_overlapping_faults_match_reference() -> None:
    """Faults on one tag combine as the reference says, in the documented order."""
    faults = (
        fault(kind="step", tag="pressure", at_s=3.05, duration_s=6.0, magnitude=5.0),
        fault(kind="drift", tag="pressure", at_s=4.05, duration_s=4.0, magnitude=2.0),
        fault(kind="stuck", tag="pressure", at_s=6.05, duration_s=1.0),
        fault(kind="noise_burst", tag="pressure", at_s=5.05, duration_s=3, magnitude=4),
        fault(kind="dropout", tag="pressure", at_s=7.55, duration_s=0.3),
    )
    values, quality = generator(faults).sample(TIMES)
    expected, expected_quality = reference(faults)

    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(quality, expected_quality)


def test_dropout_quality_is_bad_no_value() -> None:
    """A dropout gives NaN with BAD_NO_VALUE in its window and GOOD elsewhere."""
    dropout = fault(kind="dropout", tag="temperature", at_s=AT_S, duration_s=1.0)
    values, quality = generator((dropout,)).sample(TIMES)

    window = (TIMES >= AT_S) & (TIMES < AT_S + 1.0)
    assert window.sum() == 10
    assert np.isnan(values[window, 2]).all()
    assert (quality[window, 2] == BAD_NO_VALUE).all()
    assert not np.isnan(values[~window]).any()
    assert (quality[~window] == GOOD).all()
    assert (quality[:, :2] == GOOD).all()


def test_resolution_quantises_values() -> None:
    """With a resolution every value is the nearest multiple of it."""
    fine = SignalSpec(level=3.0, noise=1.0, amplitude=2.0)
    coarse = fine.model_copy(update={"resolution": 0.25})
    exact, _ = SignalGenerator(1, ["a"], [fine], step_s=STEP_S).sample(TIMES)
    quantised, _ = SignalGenerator(1, ["a"], [coarse], step_s=STEP_S).sample(TIMES)

    steps = quantised / 0.25
    np.testing.assert_array_equal(steps, np.round(steps))
    assert np.abs(quantised - exact).max() <= 0.125
    assert len(np.unique(quantised)) < len(np.unique(exact))


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 199])
def test_chunking_does_not_change_values(chunk: int) -> None:
    """Sampling the times in chunks gives the same bits as one call."""
    faults = (*EVERY_KIND[1:3], *EVERY_KIND[4:])
    resolved = tuple(f.model_copy(update={"repeat_s": 4.0}) for f in faults)
    sim = SignalGenerator(
        3,
        TAGS,
        [s.model_copy(update={"resolution": 0.01}) for s in SPECS],
        resolved,
        step_s=STEP_S,
    )
    times = np.sort(np.random.default_rng(5).uniform(0.0, 40.0, 400))
    whole_values, whole_quality = sim.sample(times)

    parts = [sim.sample(times[i : i + chunk]) for i in range(0, len(times), chunk)]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole_values)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole_quality)


def test_same_seed_same_values_other_seed_other_values() -> None:
    """Two generators with one seed agree; another seed gives other noise."""
    first, _ = generator(EVERY_KIND[:1]).sample(TIMES)
    again, _ = generator(EVERY_KIND[:1]).sample(TIMES)
    other, _ = generator(EVERY_KIND[:1], seed=8).sample(TIMES)

    np.testing.assert_array_equal(first, again)
    assert changed(first, other).all()


def test_values_are_the_same_in_another_process() -> None:
    """A fresh interpreter computes the very same values from the same seed."""
    script = (
        "import numpy as np;"
        "from drivers.signals import SignalGenerator, SignalSpec;"
        "g = SignalGenerator(11, ['a', 'b'], [SignalSpec(level=1.0, noise=2.0,"
        " amplitude=1.0)] * 2, step_s=0.5);"
        "print(g.sample(np.arange(50) * 0.5)[0].tobytes().hex())"
    )
    here = SignalGenerator(
        11,
        ["a", "b"],
        [SignalSpec(level=1.0, noise=2.0, amplitude=1.0)] * 2,
        step_s=0.5,
    )
    expected = here.sample(np.arange(50) * 0.5)[0].tobytes().hex()

    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == expected


def test_subset_of_tags_equals_columns_of_all() -> None:
    """Sampling some tags gives exactly their columns of sampling every tag."""
    sim = generator(EVERY_KIND[1:2] + EVERY_KIND[5:])
    every, every_quality = sim.sample(TIMES)

    for tags in ([2, 0], [1, 2], [0], [2, 2]):
        values, quality = sim.sample(TIMES, tags=tags)
        np.testing.assert_array_equal(values, every[:, tags])
        np.testing.assert_array_equal(quality, every_quality[:, tags])


def test_explicit_index_keys_the_noise() -> None:
    """An explicit sample index replaces round(t / step_s) as the noise key."""
    sim = generator()
    on_grid, _ = sim.sample(TIMES)
    off_grid, _ = sim.sample(TIMES, index=np.arange(len(TIMES)))
    shifted, _ = sim.sample(TIMES, index=np.arange(len(TIMES)) + 1)

    np.testing.assert_array_equal(on_grid, off_grid)
    assert changed(on_grid, shifted).all()


def test_noise_is_standard_normal_and_independent() -> None:
    """Noise has the configured spread, no bias, and no correlation to speak of."""
    times = np.arange(40_000) * STEP_S
    noise_only = [SignalSpec(level=0.0, noise=2.0)] * 3
    values, _ = SignalGenerator(2, TAGS, noise_only, step_s=STEP_S).sample(times)

    assert np.abs(values.mean(axis=0)).max() < 0.05
    np.testing.assert_allclose(values.std(axis=0), 2.0, rtol=0.02)
    between_tags = np.asarray(np.corrcoef(values.T))[np.triu_indices(3, 1)]
    assert np.abs(between_tags).max() < 0.03
    lag_one = np.corrcoef(values[1:, 0], values[:-1, 0])[0, 1]
    assert abs(lag_one) < 0.03


def test_noise_burst_multiplies_the_spread() -> None:
    """Inside a noise burst the tag's noise is magnitude times larger."""
    burst = fault(
        kind="noise_burst", tag="a", at_s=0.0, duration_s=2000.0, magnitude=5.0
    )
    times = np.arange(40_000) * STEP_S
    sim = SignalGenerator(
        4, ["a"], [SignalSpec(level=0.0, noise=1.0)], [burst], step_s=0.1
    )
    values, _ = sim.sample(times)

    inside, outside = values[times < 2000.0, 0], values[times >= 2000.0, 0]
    assert inside.std() / outside.std() == pytest.approx(5.0, rel=0.05)


def test_disconnect_windows_leave_values_alone() -> None:
    """A disconnect fault only reports its window; the values do not change."""
    disconnect = fault(kind="disconnect", at_s=10.0, duration_s=2.0, repeat_s=30.0)
    sim = generator((disconnect,))

    assert sim.disconnect_end(9.99) is None
    assert sim.disconnect_end(10.0) == pytest.approx(12.0)
    assert sim.disconnect_end(41.5) == pytest.approx(42.0)
    assert sim.disconnect_end(42.0) is None
    np.testing.assert_array_equal(sim.sample(TIMES)[0], generator().sample(TIMES)[0])


def test_signal_spec_accepts_integers_from_toml() -> None:
    """TOML integers are accepted for float fields of a signal."""
    spec = SignalSpec.model_validate({"level": 5, "noise": 1, "period_s": 30})

    assert spec.level == 5.0
    assert spec.period_s == 30.0


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"level": 1.0, "noise": -0.1}, ("noise",)),
        ({"level": 1.0, "period_s": 0.0}, ("period_s",)),
        ({"level": 1.0, "resolution": -1.0}, ("resolution",)),
        ({"level": float("nan")}, ("level",)),
        ({"level": "1.0"}, ("level",)),
        ({"level": 1.0, "gain": 2.0}, ("gain",)),
        ({}, ("level",)),
    ],
)
def test_signal_spec_rejects_bad_fields(
    fields: dict[str, Any], loc: tuple[str]
) -> None:
    """A bad signal field is a validation error located at that field."""
    with pytest.raises(ValidationError) as info:
        SignalSpec.model_validate(fields)

    assert [error["loc"] for error in info.value.errors()] == [loc]


@pytest.mark.parametrize(
    ("fields", "loc", "message"),
    [
        (
            {"kind": "spike", "at_s": 1.0, "magnitude": 1.0},
            ("tag",),
            "tag is required for a spike fault",
        ),
        (
            {"kind": "disconnect", "tag": "a", "at_s": 1.0, "duration_s": 1.0},
            ("tag",),
            "tag must not be given for a disconnect fault",
        ),
        (
            {"kind": "step", "tag": "a", "at_s": 1.0, "magnitude": 1.0},
            ("duration_s",),
            "duration_s is required for a step fault",
        ),
        (
            {"kind": "drift", "tag": "a", "at_s": 1.0, "duration_s": 1.0},
            ("magnitude",),
            "magnitude is required for a drift fault",
        ),
        (
            {"kind": "stuck", "tag": "a", "at_s": 1, "duration_s": 1, "magnitude": 2},
            ("magnitude",),
            "magnitude has no meaning for a stuck fault",
        ),
        (
            {
                "kind": "noise_burst",
                "tag": "a",
                "at_s": 1.0,
                "duration_s": 1.0,
                "magnitude": -2.0,
            },
            ("magnitude",),
            "must be >= 0",
        ),
        (
            {
                "kind": "dropout",
                "tag": "a",
                "at_s": 1.0,
                "duration_s": 2.0,
                "repeat_s": 2.0,
            },
            ("repeat_s",),
            "repeat_s must exceed duration_s",
        ),
        ({"kind": "glitch", "tag": "a", "at_s": 1.0}, ("kind",), "Input should be"),
        (
            {"kind": "spike", "tag": "a", "at_s": -1.0, "magnitude": 1.0},
            ("at_s",),
            "greater than or equal to 0",
        ),
        (
            {"kind": "spike", "tag": "a", "at_s": "5", "magnitude": 1.0},
            ("at_s",),
            "valid number",
        ),
        (
            {"kind": "spike", "tag": "a", "at_s": 1.0, "magnitude": float("inf")},
            ("magnitude",),
            "finite number",
        ),
        (
            {"kind": "spike", "tag": "a", "at_s": 1.0, "magnitude": 1.0, "when": 3},
            ("when",),
            "Extra inputs are not permitted",
        ),
    ],
)
def test_fault_spec_rejects_bad_faults(
    fields: dict[str, Any], loc: tuple[str], message: str
) -> None:
    """A bad fault is a validation error at the offending key, with a clear rule."""
    with pytest.raises(ValidationError) as info:
        FaultSpec.model_validate(fields)

    errors = info.value.errors()
    assert [error["loc"] for error in errors] == [loc]
    assert message in errors[0]["msg"]


def test_fault_spec_defaults() -> None:
    """A spike needs no duration and a disconnect no tag or magnitude."""
    spike = fault(kind="spike", tag="a", at_s=1, magnitude=2)
    disconnect = fault(kind="disconnect", at_s=1, duration_s=3)

    assert spike.duration_s is None
    assert spike.repeat_s is None
    assert disconnect.tag is None
    assert disconnect.magnitude is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"tag_names": ["a"], "specs": []}, "tag_names has 1 entries but specs has 0"),
        ({"tag_names": ["a", "a"]}, "tag_names must be unique"),
        ({"step_s": 0.0}, "step_s must be a positive number"),
        ({"step_s": float("nan")}, "step_s must be a positive number"),
        (
            {"faults": [FaultSpec(kind="spike", tag="b", at_s=1.0, magnitude=1.0)]},
            "faults[0].tag: no tag named 'b'",
        ),
    ],
)
def test_generator_rejects_bad_arguments(
    arguments: dict[str, Any], message: str
) -> None:
    """Inconsistent generator arguments raise ValueError saying which."""
    defaults: dict[str, Any] = {
        "seed": 0,
        "tag_names": ["a"],
        "specs": [SignalSpec(level=1.0)],
        "faults": [],
        "step_s": 1.0,
    }
    tag_names = arguments.get("tag_names", defaults["tag_names"])
    defaults["specs"] = [SignalSpec(level=1.0)] * len(tag_names)

    with pytest.raises(ValueError, match=re.escape(message)):
        SignalGenerator(**{**defaults, **arguments})


@pytest.mark.parametrize(
    ("t_s", "tags", "message"),
    [
        (np.zeros((2, 2)), None, "t_s must be one-dimensional"),
        (np.array([0.0, np.inf]), None, "t_s must be finite"),
        (np.zeros(2), [3], "tags must be column indices"),
        (np.zeros(2), [-1], "tags must be column indices"),
    ],
)
def test_sample_rejects_bad_arguments(
    t_s: Float64Array, tags: list[int] | None, message: str
) -> None:
    """Malformed times or column indices raise ValueError."""
    with pytest.raises(ValueError, match=message):
        generator().sample(t_s, tags=tags)
