"""Seeded, vectorised signal generators for the tool simulators and benchmarks.

The raw value of a tag ``t`` seconds after the simulation's start is::

    level + drift_per_hour * t / 3600 + amplitude * sin(2π t / period_s + phase)
          + noise * z

where ``z`` is a standard normal deviate fixed by the seed, the sample index and the
tag's column. Faults (:class:`FaultSpec`) then act on it in this order: noise bursts
scale the noise term; spikes, steps and drifts add to the value; a stuck tag holds
the value it had when the fault started; the result is quantised to the tag's
``resolution``; a dropout replaces it with NaN and quality ``BAD_NO_VALUE``. A
``disconnect`` fault leaves the values alone: it is a window in which a simulated
tool refuses connections (see :meth:`SignalGenerator.disconnect_end`).

Everything is a pure function of (seed, times, sample indices), so the same inputs
give the same output however the times are split into calls (with one numpy
version: the pool of deviates comes from numpy's normal sampler). The value a stuck
fault holds is computed at the occurrence's start time, with the sample index
``round(start / step_s)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from drivers.base import TagSource
from drivers.batch import BAD_NO_VALUE, Float64Array, Int64Array, UInt8Array

__all__ = [
    "FaultKind",
    "FaultSpec",
    "SignalGenerator",
    "SignalSpec",
]

FaultKind = Literal[
    "spike", "step", "drift", "stuck", "noise_burst", "dropout", "disconnect"
]

SECONDS_PER_HOUR = 3600.0
TWO_PI = 2.0 * math.pi

# Noise is drawn from one shared pool of standard normal deviates: each sample
# index picks a pseudo-random offset into the pool (a counter-based hash of seed
# and index) and the tag columns read consecutive entries from there. A row is
# then one contiguous copy: the noise of 10k tags x 100 steps costs well under a
# millisecond, where drawing fresh deviates costs about 10 ms. 2**18 deviates
# (2 MiB, doubled to 4 MiB so a row never wraps) keep spurious correlation between
# tags near 1/sqrt(2**18) = 0.002.
NOISE_POOL_SIZE = 1 << 18
_NOISE_POOL_KEY = 0x5EED0FE06E  # fixed: the pool is part of the signal's definition

# Row views of the pool are cached per width (the tag counts of tools and groups).
_POOL_ROW_VIEWS = 64

# splitmix64 (Steele, Lea, Flood 2014): a bijective 64-bit mixer, so distinct
# sample indices give independent-looking offsets.
_SPLITMIX_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_SPLITMIX_M1 = np.uint64(0xBF58476D1CE4E5B9)
_SPLITMIX_M2 = np.uint64(0x94D049BB133111EB)
_UINT64_MASK = (1 << 64) - 1

_MAGNITUDE_KINDS = frozenset({"spike", "step", "drift", "noise_burst"})
_ADDITIVE_KINDS = frozenset({"spike", "step", "drift"})

# Elements per row block of the vectorised evaluation (512 KiB of float64), sized
# by measurement: smaller blocks pay per-call overhead, larger ones fall out of cache.
BLOCK_ELEMENTS = 65_536

IndexArray = npt.NDArray[np.intp]
Float32Array = npt.NDArray[np.float32]


class SignalSpec(TagSource):
    """The per-tag ``source`` table of a simulated tool: how its raw value moves.

    Attributes:
        level: value at the start, raw units.
        noise: standard deviation of the Gaussian noise, raw units.
        drift_per_hour: linear drift, raw units per hour.
        amplitude: amplitude of the sine component, raw units.
        period_s: period of the sine component, seconds.
        resolution: quantisation step of the simulated ADC, raw units; 0 = none.
        phase: phase of the sine component at the start, radians.
    """

    model_config = ConfigDict(allow_inf_nan=False)

    level: float
    noise: float = Field(default=0.0, ge=0)
    drift_per_hour: float = 0.0
    amplitude: float = 0.0
    period_s: float = Field(default=60.0, gt=0)
    resolution: float = Field(default=0.0, ge=0)
    phase: float = 0.0


class FaultSpec(BaseModel):
    """One injected fault (an entry of a simulated tool's ``faults`` array).

    Attributes:
        kind: ``spike`` adds ``magnitude``; ``step`` adds ``magnitude`` for the
            duration; ``drift`` adds a ramp from 0 to ``magnitude`` over the
            duration; ``stuck`` holds the value of the fault's start;
            ``noise_burst`` multiplies the tag's noise by ``magnitude``;
            ``dropout`` delivers no value (NaN, ``BAD_NO_VALUE``); ``disconnect``
            takes the whole tool offline.
        tag: the tag affected; required for every kind but ``disconnect``, which
            must not name one.
        at_s: start, seconds after the simulation's start.
        duration_s: length of each occurrence, seconds; a spike defaults to one
            sampling step of the generator, every other kind requires it.
        magnitude: raw units (spike height, step size, drift total) or, for
            ``noise_burst``, the noise multiplier; required by those four kinds,
            meaningless (and refused) for the others.
        repeat_s: if set, the fault recurs every ``repeat_s`` seconds after
            ``at_s``; it must exceed ``duration_s``.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False
    )

    kind: FaultKind
    tag: str | None = Field(default=None, validate_default=True)
    at_s: float = Field(ge=0)
    duration_s: float | None = Field(default=None, gt=0, validate_default=True)
    magnitude: float | None = Field(default=None, validate_default=True)
    repeat_s: float | None = Field(default=None, gt=0)

    # Each rule is a field validator, not a model validator, so the error's
    # location names the offending key (``faults[1].tag``) for the config loader.

    @field_validator("tag")
    @classmethod
    def _tag_matches_kind(cls, tag: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if kind == "disconnect" and tag is not None:
            raise ValueError(
                "tag must not be given for a disconnect fault: it takes the whole "
                "tool offline"
            )
        if kind is not None and kind != "disconnect" and tag is None:
            raise ValueError(f"tag is required for a {kind} fault")
        return tag

    @field_validator("duration_s")
    @classmethod
    def _duration_given(
        cls, duration_s: float | None, info: ValidationInfo
    ) -> float | None:
        kind = info.data.get("kind")
        if duration_s is None and kind is not None and kind != "spike":
            raise ValueError(f"duration_s is required for a {kind} fault")
        return duration_s

    @field_validator("magnitude")
    @classmethod
    def _magnitude_matches_kind(
        cls, magnitude: float | None, info: ValidationInfo
    ) -> float | None:
        kind = info.data.get("kind")
        if kind is None:
            return magnitude
        if kind in _MAGNITUDE_KINDS and magnitude is None:
            raise ValueError(f"magnitude is required for a {kind} fault")
        if kind not in _MAGNITUDE_KINDS and magnitude is not None:
            raise ValueError(f"magnitude has no meaning for a {kind} fault")
        if kind == "noise_burst" and magnitude is not None and magnitude < 0:
            raise ValueError(
                "magnitude of a noise_burst fault multiplies the noise and must be >= 0"
            )
        return magnitude

    @field_validator("repeat_s")
    @classmethod
    def _repeat_after_duration(
        cls, repeat_s: float | None, info: ValidationInfo
    ) -> float | None:
        duration_s = info.data.get("duration_s")
        if repeat_s is not None and duration_s is not None and repeat_s <= duration_s:
            raise ValueError(
                "repeat_s must exceed duration_s so that occurrences do not overlap"
            )
        return repeat_s


@dataclass(frozen=True, slots=True)
class _Fault:
    """A fault resolved against the generator: its column and actual duration."""

    spec: FaultSpec
    column: int  # -1 for a disconnect, which has no column
    duration_s: float
    magnitude: float  # 0 for the kinds that take none

    def window(self, t_s: Float64Array) -> tuple[npt.NDArray[np.bool_], Float64Array]:
        """Return which of ``t_s`` fall in an occurrence, and each one's start (s)."""
        spec = self.spec
        elapsed = t_s - spec.at_s
        if spec.repeat_s is None:
            start = np.full_like(t_s, spec.at_s)
        else:
            start = spec.at_s + np.floor(elapsed / spec.repeat_s) * spec.repeat_s
        active = (elapsed >= 0) & (t_s - start < self.duration_s)
        return active, start


@dataclass(frozen=True, slots=True)
class _Terms:
    """Signal parameters of the columns one call samples, selected once per call.

    ``sine`` and ``noisy`` select the columns that have a sine or noise term; the
    arrays after each hold the parameters of exactly those columns.
    """

    level: Float64Array
    drift_per_s: Float64Array
    sine: slice | IndexArray
    cycles_per_s: Float64Array
    phase: Float32Array
    amplitude: Float64Array
    noisy: slice | IndexArray
    noise_columns: IndexArray
    noise_first: int | None
    noise: Float64Array


class SignalGenerator:
    """Values and quality of ``k`` simulated tags at any array of times.

    Args:
        seed: selects the noise; the same seed gives the same values.
        tag_names: the tags' names, in column order; faults refer to them.
        specs: one :class:`SignalSpec` per tag.
        faults: faults to inject (``disconnect`` ones only answer
            :meth:`disconnect_end`).
        step_s: the sampling step, seconds: times are keyed to sample indices
            ``round(t_s / step_s)`` for the noise, and a spike lasts one step
            unless its ``duration_s`` says otherwise.

    Raises:
        ValueError: the lengths of ``tag_names`` and ``specs`` differ, a tag name
            repeats, ``step_s`` is not a positive finite number, or a fault names
            an unknown tag.
    """

    def __init__(
        self,
        seed: int,
        tag_names: Sequence[str],
        specs: Sequence[SignalSpec],
        faults: Sequence[FaultSpec] = (),
        *,
        step_s: float = 1.0,
    ) -> None:
        if len(tag_names) != len(specs):
            raise ValueError(
                f"tag_names has {len(tag_names)} entries but specs has {len(specs)}"
            )
        if len(set(tag_names)) != len(tag_names):
            raise ValueError("tag_names must be unique")
        if not (math.isfinite(step_s) and step_s > 0):
            raise ValueError(f"step_s must be a positive number of seconds: {step_s}")
        self.seed = seed
        self.tag_names = tuple(tag_names)
        self.specs = tuple(specs)
        self.step_s = step_s

        self._level = np.array([s.level for s in specs], dtype=np.float64)
        self._noise = np.array([s.noise for s in specs], dtype=np.float64)
        self._drift_per_s = (
            np.array([s.drift_per_hour for s in specs], dtype=np.float64)
            / SECONDS_PER_HOUR
        )
        self._amplitude = np.array([s.amplitude for s in specs], dtype=np.float64)
        self._cycles_per_s = 1.0 / np.array(
            [s.period_s for s in specs], dtype=np.float64
        )
        self._phase = np.array([s.phase for s in specs], dtype=np.float64) % TWO_PI
        self._resolution = np.array([s.resolution for s in specs], dtype=np.float64)
        self._key = int(_splitmix64(np.array([seed & _UINT64_MASK], np.uint64))[0])

        self._faults = self._resolve(faults)
        self._additive = [f for f in self._faults if f.spec.kind in _ADDITIVE_KINDS]
        self._bursts = [f for f in self._faults if f.spec.kind == "noise_burst"]
        self._stuck = [f for f in self._faults if f.spec.kind == "stuck"]
        self._dropouts = [f for f in self._faults if f.spec.kind == "dropout"]
        self._disconnects = [f for f in self._faults if f.spec.kind == "disconnect"]

    @property
    def size(self) -> int:
        """Number of tags (columns)."""
        return len(self.tag_names)

    def sample(
        self,
        t_s: npt.ArrayLike,
        tags: npt.ArrayLike | None = None,
        index: npt.ArrayLike | None = None,
    ) -> tuple[Float64Array, UInt8Array]:
        """Return values (float64) and quality (uint8), both ``(steps, k)``.

        Args:
            t_s: ``(steps,)`` times, seconds since the simulation's start.
            tags: column indices to sample (``k`` of them); default every tag.
            index: ``(steps,)`` sample indices keying the noise, for callers whose
                times are not on the ``step_s`` grid (a driver polling on the wall
                clock); default ``round(t_s / step_s)``.

        Raises:
            ValueError: ``t_s`` is not one-dimensional and finite, ``index`` is
                not of its shape, or a column index is out of range.
        """
        t = np.asarray(t_s, dtype=np.float64)
        if t.ndim != 1:
            raise ValueError(f"t_s must be one-dimensional, not of shape {t.shape}")
        if not np.isfinite(t).all():
            raise ValueError("t_s must be finite")
        n = self._sample_index(t) if index is None else np.asarray(index, np.int64)
        if n.shape != t.shape:
            raise ValueError(f"index has shape {n.shape}, t_s has shape {t.shape}")
        columns = self._columns(tags)

        values = self._signal(t, n, columns)
        quality = np.zeros(values.shape, dtype=np.uint8)
        self._hold_stuck(values, t, columns)
        self._quantise(values, columns)
        self._drop_out(values, quality, t, columns)
        return values, quality

    def disconnect_end(self, t_s: float) -> float | None:
        """Return the end (s) of the disconnect window ``t_s`` is in, else ``None``.

        Overlapping windows count as one that ends with the last of them.
        """
        t = np.array([t_s], dtype=np.float64)
        end: float | None = None
        for fault in self._disconnects:
            active, start = fault.window(t)
            if active[0]:
                fault_end = float(start[0]) + fault.duration_s
                end = fault_end if end is None else max(end, fault_end)
        return end

    def _resolve(self, faults: Sequence[FaultSpec]) -> list[_Fault]:
        column_of = {name: i for i, name in enumerate(self.tag_names)}
        resolved = []
        for i, spec in enumerate(faults):
            if spec.tag is not None and spec.tag not in column_of:
                raise ValueError(f"faults[{i}].tag: no tag named {spec.tag!r}")
            column = -1 if spec.tag is None else column_of[spec.tag]
            duration = self.step_s if spec.duration_s is None else spec.duration_s
            magnitude = 0.0 if spec.magnitude is None else spec.magnitude
            resolved.append(_Fault(spec, column, duration, magnitude))
        return resolved

    def _sample_index(self, t: Float64Array) -> Int64Array:
        return np.rint(t / self.step_s).astype(np.int64)

    def _columns(self, tags: npt.ArrayLike | None) -> IndexArray:
        if tags is None:
            return np.arange(self.size, dtype=np.intp)
        columns = np.asarray(tags, dtype=np.intp)
        if columns.ndim != 1:
            raise ValueError(f"tags must be one-dimensional, not {columns.shape}")
        if columns.size and (columns.min() < 0 or columns.max() >= self.size):
            raise ValueError(f"tags must be column indices in [0, {self.size})")
        return columns

    def _signal(
        self, t: Float64Array, n: Int64Array, columns: IndexArray
    ) -> Float64Array:
        """Level, drift, sine, noise (with bursts) and additive faults."""
        values = np.empty((len(t), len(columns)), dtype=np.float64)
        terms = self._terms(columns)
        offsets = self._noise_offsets(n)

        # Row blocks of about BLOCK_ELEMENTS keep every temporary small: they stay
        # in cache and are recycled by the allocator instead of being fresh pages.
        rows_per_block = max(1, BLOCK_ELEMENTS // max(1, len(columns)))
        for first in range(0, len(t), rows_per_block):
            block = slice(first, first + rows_per_block)
            self._fill_block(values[block], t[block], offsets[block], terms)

        self._add_bursts(values, t, n, columns)
        for fault in self._additive:
            self._add_fault(values, t, columns, fault)
        return values

    def _terms(self, columns: IndexArray) -> _Terms:
        amplitude = self._amplitude[columns]
        noise = self._noise[columns]
        sine = _nonzero_columns(amplitude)
        noisy = _nonzero_columns(noise)
        return _Terms(
            level=self._level[columns],
            drift_per_s=self._drift_per_s[columns],
            sine=sine,
            cycles_per_s=self._cycles_per_s[columns][sine],
            phase=self._phase[columns][sine].astype(np.float32),
            amplitude=amplitude[sine],
            noisy=noisy,
            noise_columns=columns[noisy],
            noise_first=_first_of_run(columns[noisy]),
            noise=noise[noisy],
        )

    def _fill_block(
        self,
        out: Float64Array,
        t: Float64Array,
        offsets: IndexArray,
        terms: _Terms,
    ) -> None:
        np.multiply.outer(t, terms.drift_per_s, out=out)
        out += terms.level
        if terms.amplitude.size:
            out[:, terms.sine] += _sine(
                t, terms.cycles_per_s, terms.phase, terms.amplitude
            )
        if terms.noise.size:
            deviates = _deviates(offsets, terms.noise_columns, terms.noise_first)
            deviates *= terms.noise
            out[:, terms.noisy] += deviates

    def _noise_offsets(self, n: Int64Array) -> IndexArray:
        """Return each sample index's offset into the noise pool."""
        keys = n.view(np.uint64) ^ np.uint64(self._key)
        return (_splitmix64(keys) % np.uint64(NOISE_POOL_SIZE)).astype(np.intp)

    def _add_bursts(
        self,
        values: Float64Array,
        t: Float64Array,
        n: Int64Array,
        columns: IndexArray,
    ) -> None:
        # Overlapping bursts multiply; the extra noise is (product - 1) times the
        # tag's own noise term, so outside every burst nothing changes.
        factors: dict[int, Float64Array] = {}
        for fault in self._bursts:
            active, _ = fault.window(t)
            factor = factors.setdefault(fault.column, np.ones_like(t))
            factor[active] *= fault.magnitude
        for column, factor in factors.items():
            local = np.flatnonzero(columns == column)
            noise = self._noise[column]
            if local.size == 0 or noise == 0:
                continue
            z = _deviates(self._noise_offsets(n), np.array([column]), column)
            values[:, local] += z * (noise * (factor - 1.0))[:, None]

    def _add_fault(
        self,
        values: Float64Array,
        t: Float64Array,
        columns: IndexArray,
        fault: _Fault,
    ) -> None:
        local = np.flatnonzero(columns == fault.column)
        active, start = fault.window(t)
        rows = np.flatnonzero(active)
        if local.size == 0 or rows.size == 0:
            return
        if fault.spec.kind == "drift":
            elapsed = np.maximum(t[rows] - start[rows], 0.0)
            shift = fault.magnitude * elapsed / fault.duration_s
            values[np.ix_(rows, local)] += shift[:, None]
        else:
            values[np.ix_(rows, local)] += fault.magnitude

    def _hold_stuck(
        self, values: Float64Array, t: Float64Array, columns: IndexArray
    ) -> None:
        for fault in self._stuck:
            local = np.flatnonzero(columns == fault.column)
            active, start = fault.window(t)
            rows = np.flatnonzero(active)
            if local.size == 0 or rows.size == 0:
                continue
            # The held value is the signal at the occurrence's start, computed
            # afresh, so it does not depend on which samples a call happened to see.
            starts, which = np.unique(start[rows], return_inverse=True)
            column = np.array([fault.column], dtype=np.intp)
            held = self._signal(starts, self._sample_index(starts), column)[:, 0]
            values[np.ix_(rows, local)] = held[which][:, None]

    def _quantise(self, values: Float64Array, columns: IndexArray) -> None:
        resolution = self._resolution[columns]
        quantised = _nonzero_columns(resolution)
        step = resolution[quantised]
        if not step.size:
            return
        # In place where possible: temporaries the size of the batch cost more in
        # fresh memory pages than the arithmetic itself.
        selected = values if isinstance(quantised, slice) else values[:, quantised]
        selected /= step
        np.round(selected, out=selected)
        selected *= step
        if not isinstance(quantised, slice):
            values[:, quantised] = selected

    def _drop_out(
        self,
        values: Float64Array,
        quality: UInt8Array,
        t: Float64Array,
        columns: IndexArray,
    ) -> None:
        for fault in self._dropouts:
            local = np.flatnonzero(columns == fault.column)
            rows = np.flatnonzero(fault.window(t)[0])
            if local.size == 0 or rows.size == 0:
                continue
            values[np.ix_(rows, local)] = np.nan
            quality[np.ix_(rows, local)] = BAD_NO_VALUE


def _nonzero_columns(parameter: Float64Array) -> slice | IndexArray:
    """Return a selector of the columns whose ``parameter`` is non-zero.

    A slice when it is all of them, so that selecting copies nothing; an index
    array (possibly empty) otherwise.
    """
    nonzero = parameter != 0
    if nonzero.all():
        return slice(None)
    return np.flatnonzero(nonzero)


def _deviates(
    offsets: IndexArray, columns: IndexArray, first: int | None
) -> Float64Array:
    """Return standard normal deviates ``(steps, k)`` for noise-pool ``offsets``.

    The deviate of a row with offset ``o`` and column ``c`` is
    ``pool[(o + c) mod NOISE_POOL_SIZE]``. ``first`` is the first column when the
    columns are consecutive (see :func:`_first_of_run`), else ``None``.
    """
    if first is not None:
        # Consecutive columns read consecutive pool entries: one slice per row.
        return _pool_rows(len(columns))[(offsets + first) % NOISE_POOL_SIZE]
    deviates: Float64Array = _noise_pool()[
        offsets[:, None] + (columns % NOISE_POOL_SIZE)[None, :]
    ]
    return deviates


def _first_of_run(columns: IndexArray) -> int | None:
    """Return the first column if ``columns`` are consecutive and fit the pool."""
    k = len(columns)
    if k == 0 or k > NOISE_POOL_SIZE:
        return None
    first = int(columns[0])
    if int(columns[-1]) - first != k - 1 or not np.all(np.diff(columns) == 1):
        return None
    return first


def _sine(
    t: Float64Array,
    cycles_per_s: Float64Array,
    phase: Float32Array,
    amplitude: Float64Array,
) -> Float64Array:
    """Return ``amplitude * sin(2π t cycles_per_s + phase)``, shape ``(steps, k)``.

    ``t`` in seconds, ``cycles_per_s`` in Hz, ``phase`` in radians within [0, 2π).
    """
    # Whole cycles are removed in float64 so the angle stays small at any t; the
    # sine itself is taken in float32, several times faster than float64, with an
    # error near 1e-7 of the amplitude, far below any simulated ADC's resolution.
    cycles = np.multiply.outer(t, cycles_per_s)
    cycles -= np.floor(cycles)
    angle = cycles.astype(np.float32)
    angle *= np.float32(TWO_PI)
    angle += phase
    np.sin(angle, out=angle)
    result: Float64Array = angle * amplitude
    return result


def _splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Return the splitmix64 finaliser of each element (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _SPLITMIX_GAMMA
        z = (z ^ (z >> np.uint64(30))) * _SPLITMIX_M1
        z = (z ^ (z >> np.uint64(27))) * _SPLITMIX_M2
        return z ^ (z >> np.uint64(31))


@functools.lru_cache(maxsize=_POOL_ROW_VIEWS)
def _pool_rows(k: int) -> Float64Array:
    """Return a view of the pool whose row ``o`` is ``pool[o : o + k]``."""
    return np.lib.stride_tricks.sliding_window_view(_noise_pool(), k)


@functools.cache
def _noise_pool() -> Float64Array:
    """Return the shared pool of deviates, twice over so a row never wraps."""
    rng = np.random.Generator(np.random.Philox(key=_NOISE_POOL_KEY))
    pool = rng.standard_normal(NOISE_POOL_SIZE)
    # Standardised exactly, so the pool adds no bias to a tag's mean or spread.
    pool -= pool.mean()
    pool /= pool.std()
    doubled = np.concatenate([pool, pool])
    doubled.flags.writeable = False
    return doubled
