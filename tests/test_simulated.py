"""Tests of the simulated tool driver, on the real clock with short intervals."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from drivers import driver_class
from drivers.base import ConnectFailed, ConnectionLost, PollGroup
from drivers.batch import BAD_NO_VALUE, GOOD, ReadingBatch
from drivers.signals import SignalSpec
from drivers.simulated import SimulatedDriver, SimulatedSettings

TAG_NAMES = ("chamber_pressure", "rf_power", "wafer_temp")
SOURCES = (
    SignalSpec(level=1.0),
    SignalSpec(level=500.0, noise=2.0, amplitude=5.0, period_s=10.0),
    SignalSpec(level=60.0, noise=0.1, resolution=0.1),
)
FAST = PollGroup(name="fast", interval_s=0.05, tags=(0, 1))
SLOW = PollGroup(name="slow", interval_s=0.2, tags=(2,))
# Scheduling slack allowed when comparing the loop's clock with poll times.
CLOCK_SLACK_S = 0.005


def simulated(
    *faults: dict[str, Any],
    groups: tuple[PollGroup, ...] = (FAST, SLOW),
    **settings: Any,
) -> SimulatedDriver:
    """Return a simulated tool with the test tags, built as the loader would."""
    config = SimulatedSettings.model_validate(
        {"kind": "simulated", "seed": 3, "faults": faults, **settings}
    )
    return SimulatedDriver("etch-01", config, TAG_NAMES, SOURCES, groups)


async def sleep_until(driver: SimulatedDriver, sim_s: float) -> None:
    """Sleep until the driver's simulation time reaches ``sim_s``."""
    now = driver.sim_time()
    assert now is not None
    await asyncio.sleep(max(0.0, sim_s - now))


def test_registry_names_the_simulated_driver() -> None:
    """The registry maps "simulated" to this driver and its schemas."""
    cls = driver_class("simulated")

    assert cls is SimulatedDriver
    assert cls.kind == "simulated"
    assert cls.Settings is SimulatedSettings
    assert cls.Source is SignalSpec


async def test_read_group_returns_one_poll_of_the_group() -> None:
    """A read gives the group's tags at the current time, good quality."""
    driver = simulated()
    await driver.connect()
    before = time.time_ns()
    batch = await driver.read_group(FAST)
    after = time.time_ns()
    await driver.close()

    assert (batch.tool, batch.group) == ("etch-01", "fast")
    np.testing.assert_array_equal(batch.tags, np.array([0, 1], dtype=np.int32))
    assert batch.tags.dtype == np.int32
    assert batch.values.shape == batch.quality.shape == (1, 2)
    assert before <= batch.timestamps[0] <= after
    assert batch.values[0, 0] == 1.0
    assert abs(batch.values[0, 1] - 500.0) < 20.0
    assert (batch.quality == GOOD).all()


async def test_steps_per_poll_spreads_samples_over_the_interval() -> None:
    """With steps_per_poll the batch holds evenly spaced samples ending now."""
    driver = simulated(steps_per_poll=5)
    await driver.connect()
    before = time.time_ns()
    batch = await driver.read_group(SLOW)
    after = time.time_ns()

    assert batch.values.shape == (5, 1)
    spacing_ns = SLOW.interval_s / 5 * 1e9
    np.testing.assert_allclose(np.diff(batch.timestamps), spacing_ns, atol=1)
    assert before <= batch.timestamps[-1] <= after
    assert len(np.unique(batch.values)) > 1


async def test_successive_polls_draw_fresh_noise() -> None:
    """Polls close together in time still draw different noise."""
    driver = simulated()
    await driver.connect()
    first = await driver.read_group(FAST)
    second = await driver.read_group(FAST)

    assert first.values[0, 1] != second.values[0, 1]


async def test_acquire_polls_each_group_on_its_interval() -> None:
    """acquire polls two groups at their own rates and never faster."""
    driver = simulated()
    received: dict[str, list[float]] = {"fast": [], "slow": []}

    async def sink(batch: ReadingBatch) -> None:
        received[batch.group].append(time.monotonic())

    await driver.connect()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.5):
            await driver.acquire(sink)
    await driver.close()

    # Ticks at 0, 0.05, ... 0.45 s and 0, 0.2, 0.4 s fall inside 0.5 s.
    assert 8 <= len(received["fast"]) <= 11
    assert 2 <= len(received["slow"]) <= 3
    for group in (FAST, SLOW):
        times = np.array(received[group.name])
        ticks = np.arange(len(times)) * group.interval_s
        assert (times - times[0] >= ticks - CLOCK_SLACK_S).all()
    assert driver.stats.polls == len(received["fast"]) + len(received["slow"])
    assert driver.stats.readings == 2 * len(received["fast"]) + len(received["slow"])


async def test_disconnect_fault_drops_then_refuses_then_recovers() -> None:
    """In a disconnect window reads raise ConnectionLost and connects fail."""
    driver = simulated({"kind": "disconnect", "at_s": 0.2, "duration_s": 0.3})
    await driver.connect()
    await driver.read_group(FAST)

    await sleep_until(driver, 0.25)
    with pytest.raises(ConnectionLost, match=r"simulated disconnect until t = 0\.500"):
        await driver.read_group(FAST)
    await driver.close()
    with pytest.raises(ConnectFailed, match="etch-01: simulated disconnect"):
        await driver.connect()

    await sleep_until(driver, 0.55)
    await driver.connect()
    batch = await driver.read_group(SLOW)
    assert batch.values.shape == (1, 1)


async def test_acquire_ends_with_connection_lost_on_disconnect() -> None:
    """acquire stops with ConnectionLost when a disconnect window begins."""
    driver = simulated(
        {"kind": "disconnect", "at_s": 0.1, "duration_s": 5.0}, groups=(FAST,)
    )
    batches: list[ReadingBatch] = []

    async def sink(batch: ReadingBatch) -> None:
        batches.append(batch)

    await driver.connect()
    with pytest.raises(ConnectionLost):
        async with asyncio.timeout(2.0):
            await driver.acquire(sink)
    assert 1 <= len(batches) <= 3


async def test_fail_connects_fails_the_first_attempts() -> None:
    """The first fail_connects attempts raise ConnectFailed, then connect works."""
    driver = simulated(fail_connects=2)

    with pytest.raises(ConnectFailed, match="simulated connect failure 1 of 2"):
        await driver.connect()
    with pytest.raises(ConnectFailed, match="simulated connect failure 2 of 2"):
        await driver.connect()
    assert driver.sim_time() is None
    await driver.connect()

    assert driver.sim_time() is not None
    await driver.read_group(FAST)


async def test_simulation_clock_survives_reconnects() -> None:
    """Fault times count from the first connect, not from a reconnect."""
    driver = simulated(
        {
            "kind": "step",
            "tag": "chamber_pressure",
            "at_s": 0.15,
            "duration_s": 60.0,
            "magnitude": 100.0,
        }
    )
    await driver.connect()
    assert (await driver.read_group(FAST)).values[0, 0] == 1.0
    await driver.close()

    await sleep_until(driver, 0.2)
    await driver.connect()
    assert (await driver.read_group(FAST)).values[0, 0] == 101.0


async def test_dropout_fault_reaches_the_batch() -> None:
    """A dropout shows in the batch as NaN with quality BAD_NO_VALUE."""
    driver = simulated(
        {"kind": "dropout", "tag": "rf_power", "at_s": 0.0, "duration_s": 60.0}
    )
    await driver.connect()
    batch = await driver.read_group(FAST)

    assert np.isnan(batch.values[0, 1])
    assert batch.quality[0].tolist() == [GOOD, BAD_NO_VALUE]


async def test_connect_takes_connect_delay_s() -> None:
    """Each connect attempt lasts connect_delay_s."""
    driver = simulated(connect_delay_s=0.1)
    started = time.monotonic()
    await driver.connect()

    assert time.monotonic() - started >= 0.1 - CLOCK_SLACK_S


async def test_read_without_session_raises_and_close_never_does() -> None:
    """Reading before connect or after close raises; close is always safe."""
    driver = simulated()
    await driver.close()
    with pytest.raises(ConnectionLost, match="read without an open session"):
        await driver.read_group(FAST)

    await driver.connect()
    await driver.close()
    await driver.close()
    with pytest.raises(ConnectionLost):
        await driver.read_group(FAST)


def test_fault_on_unknown_tag_is_refused() -> None:
    """A fault naming a tag the tool lacks fails construction, naming the key."""
    with pytest.raises(ValueError, match=r"faults\[0\]\.tag: no tag named 'rf'"):
        simulated({"kind": "spike", "tag": "rf", "at_s": 1.0, "magnitude": 1.0})


def test_check_names_faults_on_unknown_tags() -> None:
    """check reports each fault naming an unknown tag by its key path."""
    config = SimulatedSettings.model_validate(
        {
            "kind": "simulated",
            "faults": (
                {"kind": "spike", "tag": "rf_power", "at_s": 1.0, "magnitude": 1.0},
                {"kind": "disconnect", "at_s": 1.0, "duration_s": 1.0},
                {"kind": "dropout", "tag": "rf", "at_s": 1.0, "duration_s": 1.0},
            ),
        }
    )

    assert SimulatedDriver.check(config, TAG_NAMES, [], []) == [
        ("driver.faults[2].tag", "'rf' is not a tag of this tool")
    ]
    assert SimulatedDriver.check(config, ("rf", "rf_power"), [], []) == []


def test_sources_must_be_signal_specs() -> None:
    """A source of another schema is a TypeError."""
    config = SimulatedSettings(kind="simulated")

    with pytest.raises(TypeError, match="SignalSpec"):
        SimulatedDriver("etch-01", config, ("a",), ({"level": 1.0},), ())


def test_settings_defaults() -> None:
    """The simulated [driver] table needs only its kind."""
    config = SimulatedSettings.model_validate({"kind": "simulated"})

    assert config.seed == 0
    assert config.faults == ()
    assert config.connect_delay_s == 0.0
    assert config.fail_connects == 0
    assert config.steps_per_poll == 1


@pytest.mark.parametrize(
    ("table", "loc"),
    [
        (
            {
                "faults": (
                    {"kind": "spike", "tag": "a", "at_s": 1.0, "magnitude": 1.0},
                    {"kind": "spike", "at_s": 2.0, "magnitude": 1.0},
                )
            },
            ("faults", 1, "tag"),
        ),
        (
            {"faults": ({"kind": "step", "tag": "a", "at_s": 1.0, "magnitude": 2},)},
            ("faults", 0, "duration_s"),
        ),
        ({"faults": ({"kind": "surge", "at_s": 1.0},)}, ("faults", 0, "kind")),
        ({"steps_per_poll": 0}, ("steps_per_poll",)),
        ({"fail_connects": -1}, ("fail_connects",)),
        ({"connect_delay_s": -0.5}, ("connect_delay_s",)),
        ({"seed": "7"}, ("seed",)),
        ({"kind": "modbus"}, ("kind",)),
        ({"retries": 3}, ("retries",)),
    ],
)
def test_settings_errors_name_the_key(table: dict[str, Any], loc: tuple[Any]) -> None:
    """A bad [driver] table is a ValidationError located at the bad key."""
    with pytest.raises(ValidationError) as info:
        SimulatedSettings.model_validate({"kind": "simulated", **table})

    assert [error["loc"] for error in info.value.errors()] == [loc]
