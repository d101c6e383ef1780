"""The request planner: merged ranges, gap rule, limits, requests on the wire."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from modbus_support import LOOPBACK, load_tool, served
from modbus_support import simulation_of as levels

from drivers.base import PollGroup
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.plan import PlanLimits, Request, TagSpan, plan_requests


def spans_at(
    *ranges: tuple[int, int], unit: int = 1, table: str = "holding"
) -> list[TagSpan]:
    """Spans of ``(address, count)`` on one unit and table, columns in order."""
    return [
        TagSpan(i, unit, table, address, count)  # type: ignore[arg-type]
        for i, (address, count) in enumerate(ranges)
    ]


def test_adjacent_and_near_tags_merge_within_the_gap() -> None:
    """Tags at most ``max_gap`` registers apart share one request; others do not."""
    spans = spans_at((0, 2), (2, 2), (6, 1), (20, 2))
    requests, request_of, start_in = plan_requests(spans, PlanLimits(max_gap=3))

    assert [(r.address, r.count) for r in requests] == [(0, 7), (20, 2)]
    assert request_of.tolist() == [0, 0, 0, 1]
    assert start_in.tolist() == [0, 2, 6, 0]


def test_zero_gap_merges_only_touching_tags() -> None:
    """With ``max_gap = 0`` only contiguous (or overlapping) tags merge."""
    spans = spans_at((0, 2), (2, 1), (4, 1), (4, 2))
    requests, _, _ = plan_requests(spans, PlanLimits(max_gap=0))

    assert [(r.address, r.count) for r in requests] == [(0, 3), (4, 2)]


def test_requests_stay_within_the_register_and_bit_limits() -> None:
    """No request exceeds 125 registers, 2000 bits, or the device's lower limit."""
    registers = spans_at(*[(2 * i, 2) for i in range(200)])
    requests, _, _ = plan_requests(registers, PlanLimits())
    assert [r.count for r in requests] == [124, 124, 124, 28]

    lowered, _, _ = plan_requests(registers, PlanLimits(max_registers=40))
    assert max(r.count for r in lowered) == 40
    assert sum(r.count for r in lowered) == 400

    bits = spans_at(*[(i, 1) for i in range(4500)], table="coil")
    bit_requests, _, _ = plan_requests(bits, PlanLimits())
    assert [r.count for r in bit_requests] == [2000, 2000, 500]


def test_units_and_tables_never_share_a_request() -> None:
    """Different unit ids or tables never share a request; buffers lie end to end."""
    spans = [
        TagSpan(0, 1, "holding", 0, 1),
        TagSpan(1, 2, "holding", 1, 1),
        TagSpan(2, 1, "input", 1, 1),
        TagSpan(3, 1, "coil", 0, 9),
    ]
    requests, request_of, _ = plan_requests(spans, PlanLimits())

    assert {(r.unit_id, r.table) for r in requests} == {
        (1, "holding"),
        (2, "holding"),
        (1, "input"),
        (1, "coil"),
    }
    assert len(set(request_of.tolist())) == 4
    offsets = [r.offset for r in requests]
    sizes = [r.byte_count for r in requests]
    assert offsets == list(np.cumsum([0, *sizes[:-1]]))
    coil = next(r for r in requests if r.table == "coil")
    assert coil.byte_count == 2


def test_a_tag_wider_than_a_request_is_refused() -> None:
    """A string longer than the request limit cannot be planned."""
    with pytest.raises(ValueError, match="exceeds the 10"):
        plan_requests(spans_at((0, 11)), PlanLimits(max_registers=10))


@given(
    st.lists(
        st.tuples(st.integers(0, 600), st.sampled_from([1, 2, 4])),
        min_size=1,
        max_size=60,
    ),
    st.integers(0, 20),
    st.integers(4, 125),
)
def test_every_tag_lies_inside_its_request(
    ranges: list[tuple[int, int]], gap: int, limit: int
) -> None:
    """Any map: each tag lies inside its request, and no request is over the limit."""
    spans = spans_at(*ranges)
    requests, request_of, start_in = plan_requests(
        spans, PlanLimits(max_registers=limit, max_gap=gap)
    )
    for span, r, start in zip(spans, request_of, start_in, strict=True):
        request: Request = requests[r]
        assert request.address + start == span.address
        assert start + span.count <= request.count
    assert all(r.count <= limit for r in requests)
    # Greedy merging leaves no two consecutive requests that could have merged.
    for a, b in itertools.pairwise(requests):
        assert b.address - (a.address + a.count) > gap or (
            b.address + b.count - a.address > limit
        )


def tool_with_tags(addresses: list[int], driver: str = "") -> str:
    """A tool file of float32 holding registers at ``addresses`` plus two coils."""
    names = [f"t{a}" for a in addresses] + ["c0", "c700"]
    tags = "".join(
        f'[[tags]]\nname = "t{a}"\nsource = {{ address = {a}, type = "float32" }}\n'
        for a in addresses
    )
    tags += '[[tags]]\nname = "c0"\nsource = { table = "coil", address = 0 }\n'
    tags += '[[tags]]\nname = "c700"\nsource = { table = "coil", address = 700 }\n'
    quoted = ", ".join(f'"{n}"' for n in names)
    return (
        f'[driver]\nkind = "modbus"\nhost = "{LOOPBACK}"\n{driver}\n'
        f'[[poll_groups]]\nname = "g"\ninterval_s = 1.0\ntags = [{quoted}]\n{tags}'
    )


async def test_requests_on_the_wire_equal_the_plan(tmp_path: Path) -> None:
    """The server receives exactly the planned requests per poll, no more."""
    addresses = [0, 2, 4, 10, 100, 102, 300, 302, 304]
    tool = load_tool(
        tmp_path, tool_with_tags(addresses, "max_gap = 8\nmax_gap_bits = 500")
    )
    polls = 5
    simulation = levels({tag.name: 1.0 for tag in tool.tags})

    async with served(tool, simulation) as (simulator, driver):
        plan = driver.plan("g")
        for _ in range(polls):
            batch = await driver.read_group(driver.groups[0])

    planned = [(1, r.function_code, r.address, r.count) for r in plan.requests]
    assert planned == [
        (1, 1, 0, 1),
        (1, 1, 700, 1),
        (1, 3, 0, 12),
        (1, 3, 100, 4),
        (1, 3, 300, 6),
    ]
    assert list(simulator.request_log) == planned * polls
    assert sum(simulator.requests.values()) == len(planned) * polls
    assert batch.values[0].tolist() == [1.0] * len(tool.tags)


async def test_plan_is_made_once_not_per_poll(tmp_path: Path) -> None:
    """Polling reuses the plan made when the driver was built."""
    tool = load_tool(tmp_path, tool_with_tags([0, 2]))
    async with served(tool, levels({t.name: 2.0 for t in tool.tags})) as (_, driver):
        plan = driver.plan("g")
        await driver.read_group(driver.groups[0])
        await driver.read_group(driver.groups[0])
        assert driver.plan("g") is plan


@pytest.mark.parametrize("concurrency", [4, 16])
async def test_concurrent_requests_are_pipelined_and_all_answered(
    tmp_path: Path, concurrency: int
) -> None:
    """With several requests in flight each is answered once and values are right."""
    addresses = list(range(0, 4000, 50))
    driver = f"max_gap = 0\nconcurrency = {concurrency}\nmax_gap_bits = 0"
    tool = load_tool(tmp_path, tool_with_tags(addresses, driver))
    levels_ = {tag.name: float(i) for i, tag in enumerate(tool.tags)}
    levels_["c0"] = levels_["c700"] = 1.0
    async with served(tool, levels(levels_)) as (simulator, driver):
        batch = await driver.read_group(driver.groups[0])

    assert len(driver.plan("g").requests) == len(addresses) + 2
    assert sum(simulator.requests.values()) == len(addresses) + 2
    assert batch.values[0].tolist() == list(levels_.values())


def test_check_refuses_a_string_wider_than_the_device_reads(tmp_path: Path) -> None:
    """check-config names the tag whose string exceeds ``max_registers``."""
    tool_text = (
        f'[driver]\nkind = "modbus"\nhost = "{LOOPBACK}"\nmax_registers = 8\n'
        '[[poll_groups]]\nname = "g"\ninterval_s = 1.0\ntags = ["s"]\n'
        '[[tags]]\nname = "s"\nsource = { address = 0, type = "string", length = 10 }\n'
    )
    from drivers.modbus.config import ModbusSettings, ModbusSource

    settings = ModbusSettings.model_validate(
        {"kind": "modbus", "host": LOOPBACK, "max_registers": 8}
    )
    source = ModbusSource.model_validate({"address": 0, "type": "string", "length": 10})
    issues = ModbusDriver.check(settings, ["s"], [source], [PollGroup("g", 1.0, (0,))])
    assert issues == [
        (
            "tags[0].source.length",
            "10 registers exceed the 8 one request may read (driver.max_registers)",
        )
    ]
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match=r"tags\[0\]\.source\.length"):
        load_tool(tmp_path, tool_text)
