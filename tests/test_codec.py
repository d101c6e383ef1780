"""The reading block codec: exact round trips, robustness and compression ratio."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.store.codec import BlockCodec, CodecError, decode_block

SEED = 20_240_611
T0_NS = 1_700_000_000_000_000_000
SECOND_NS = 1_000_000_000
MAX_BYTES_PER_READING = 4.0
SENSOR_LEVEL = 100.0
NOISE_FRACTION = 0.003
SINE_AMPLITUDE = 2.0
SINE_PERIOD_STEPS = 3_600


def _same_bits(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> bool:
    """Return whether two float64 arrays hold the same bit patterns."""
    return bool(np.array_equal(a.view(np.uint64), b.view(np.uint64)))


def _block(
    steps: int, k: int, rng: np.random.Generator
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.int32],
    npt.NDArray[np.float64],
    npt.NDArray[np.uint8],
]:
    """Return a block of random values with NaN, infinities and -0.0 mixed in."""
    timestamps = T0_NS + np.arange(steps, dtype=np.int64) * SECOND_NS
    tags = np.arange(k, dtype=np.int32) * 3
    values = rng.normal(0.0, 1e3, (steps, k))
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-320, 3.5e38])
    mask = rng.random((steps, k)) < 0.05
    values[mask] = rng.choice(specials, int(mask.sum()))
    quality = rng.integers(0, 256, (steps, k), dtype=np.uint8)
    return timestamps, tags, values, quality


def _sensor_signal(
    steps: int, k: int, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """Return smooth noisy readings: level 100, 0.3 % Gaussian noise, a slow sine."""
    t = np.arange(steps)[:, None]
    phase = rng.uniform(0.0, 2 * np.pi, k)
    base = SENSOR_LEVEL + SINE_AMPLITUDE * np.sin(
        2 * np.pi * t / SINE_PERIOD_STEPS + phase
    )
    return base * (1.0 + NOISE_FRACTION * rng.standard_normal((steps, k)))


def test_float64_round_trip_is_bit_exact() -> None:
    """A float64 block decodes to the same bits, NaN, infinities and -0.0 included."""
    ts, tags, values, quality = _block(50, 40, np.random.default_rng(SEED))
    block = decode_block(BlockCodec("float64").encode(ts, tags, values, quality))

    assert np.array_equal(block.timestamps, ts)
    assert np.array_equal(block.tags, tags)
    assert _same_bits(block.values, values)
    assert np.array_equal(block.quality, quality)


def test_float32_round_trip_is_exact_to_float32() -> None:
    """A float32 block decodes to the values rounded to float32, NaN and inf kept."""
    ts, tags, values, quality = _block(50, 40, np.random.default_rng(SEED))
    block = decode_block(BlockCodec("float32").encode(ts, tags, values, quality))

    with np.errstate(over="ignore"):
        expected = values.astype(np.float32).astype(np.float64)
    assert np.array_equal(block.values, expected, equal_nan=True)
    assert np.array_equal(np.isnan(block.values), np.isnan(values))
    assert np.array_equal(block.values[np.isinf(values)], values[np.isinf(values)])
    assert np.array_equal(block.quality, quality)
    assert block.values.dtype == np.float64


@pytest.mark.parametrize("value_format", ["float32", "float64"])
def test_single_reading_round_trips(value_format: str) -> None:
    """A block of one step by one tag round-trips."""
    codec = BlockCodec("float32" if value_format == "float32" else "float64")
    block = decode_block(
        codec.encode(
            np.array([T0_NS], np.int64),
            np.array([7], np.int32),
            np.array([[1.5]]),
            np.array([[0x40]], np.uint8),
        )
    )

    assert block.timestamps.tolist() == [T0_NS]
    assert block.tags.tolist() == [7]
    assert block.values.tolist() == [[1.5]]
    assert block.quality.tolist() == [[0x40]]


def test_block_without_steps_round_trips() -> None:
    """A block with tags but no steps decodes to empty arrays of the right shape."""
    block = decode_block(
        BlockCodec().encode(
            np.empty(0, np.int64),
            np.arange(3, dtype=np.int32),
            np.empty((0, 3)),
            np.empty((0, 3), np.uint8),
        )
    )

    assert block.values.shape == (0, 3)
    assert block.tags.tolist() == [0, 1, 2]


def test_big_block_round_trips() -> None:
    """A block of 100 steps by 10 000 tags round-trips in both formats."""
    rng = np.random.default_rng(SEED)
    steps, k = 100, 10_000
    ts = T0_NS + np.arange(steps, dtype=np.int64) * SECOND_NS
    tags = np.arange(k, dtype=np.int32)
    values = _sensor_signal(steps, k, rng)
    quality = np.zeros((steps, k), np.uint8)
    quality[::7, ::13] = 0x81

    exact = decode_block(BlockCodec("float64").encode(ts, tags, values, quality))
    rounded = decode_block(BlockCodec("float32").encode(ts, tags, values, quality))

    assert _same_bits(exact.values, values)
    assert np.array_equal(rounded.values, values.astype(np.float32).astype(np.float64))
    assert np.array_equal(rounded.quality, quality)


def test_sensor_signal_compresses_to_at_most_four_bytes_per_reading() -> None:
    """Smooth noisy sensor readings take at most 4 bytes each as float32, all in."""
    rng = np.random.default_rng(SEED)
    steps, k = 100, 1_000
    ts = T0_NS + np.arange(steps, dtype=np.int64) * SECOND_NS
    values = _sensor_signal(steps, k, rng)
    quality = np.zeros((steps, k), np.uint8)

    data = BlockCodec("float32").encode(
        ts, np.arange(k, dtype=np.int32), values, quality
    )

    assert len(data) / values.size <= MAX_BYTES_PER_READING


def test_shape_mismatch_is_rejected() -> None:
    """Values whose shape is not timestamps x tags are refused with ValueError."""
    with pytest.raises(ValueError, match="must both be"):
        BlockCodec().encode(
            np.zeros(2, np.int64),
            np.zeros(3, np.int32),
            np.zeros((3, 2)),
            np.zeros((2, 3), np.uint8),
        )


def test_unknown_value_format_is_rejected() -> None:
    """A value format other than float32 or float64 raises ValueError."""
    with pytest.raises(ValueError, match="value_format"):
        BlockCodec("float16")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:5], id="shorter-than-header"),
        pytest.param(lambda b: b"XXXX" + b[4:], id="wrong-magic"),
        pytest.param(lambda b: b[:-10], id="truncated-payload"),
        pytest.param(lambda b: b[:20] + bytes(len(b) - 20), id="zeroed-payload"),
    ],
)
def test_damaged_block_raises_codec_error(damage: object) -> None:
    """Decoding damaged bytes raises CodecError rather than returning wrong arrays."""
    ts, tags, values, quality = _block(20, 10, np.random.default_rng(SEED))
    data = BlockCodec().encode(ts, tags, values, quality)

    with pytest.raises(CodecError):
        decode_block(damage(data))  # type: ignore[operator]


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda steps: st.integers(1, 12).flatmap(
            lambda k: st.tuples(
                hnp.arrays(np.int64, steps),
                hnp.arrays(np.int32, k),
                hnp.arrays(np.float64, (steps, k)),
                hnp.arrays(np.uint8, (steps, k)),
            )
        )
    )
)
def test_any_block_round_trips_exactly_as_float64(
    arrays: tuple[
        npt.NDArray[np.int64],
        npt.NDArray[np.int32],
        npt.NDArray[np.float64],
        npt.NDArray[np.uint8],
    ],
) -> None:
    """Any timestamps, tags, floats and quality codes survive a float64 round trip."""
    ts, tags, values, quality = arrays

    block = decode_block(BlockCodec("float64").encode(ts, tags, values, quality))

    assert np.array_equal(block.timestamps, ts)
    assert np.array_equal(block.tags, tags)
    assert _same_bits(block.values, values)
    assert np.array_equal(block.quality, quality)
