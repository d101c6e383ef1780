"""Modbus data types, byte/word orders, bits, strings and addressing, on the wire."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from modbus_support import LOOPBACK, RegisterServer, driver_of, load_tool, served
from modbus_support import simulation_of as levels
from pydantic import ValidationError
from pymodbus.client import AsyncModbusTcpClient

from drivers.batch import GOOD
from drivers.modbus.codec import ORDERS, byte_positions, from_canonical, to_canonical
from drivers.modbus.config import ModbusSource, modicon_reference

DATATYPE = AsyncModbusTcpClient.DATATYPE

# One value per numeric type, each exactly representable in float64.
VALUES = {
    "int16": (-12345, DATATYPE.INT16),
    "uint16": (54321, DATATYPE.UINT16),
    "int32": (-123456789, DATATYPE.INT32),
    "uint32": (3_000_000_000, DATATYPE.UINT32),
    "int64": (-(2**53) + 7, DATATYPE.INT64),
    "uint64": (2**60 + 2**12, DATATYPE.UINT64),
    "float32": (123.456, DATATYPE.FLOAT32),
    "float64": (-98.7654321, DATATYPE.FLOAT64),
}
STRUCT = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}


def oracle_registers(value: float, kind: str, order: str) -> list[int]:
    """Register words of ``value`` in ``order``, as pymodbus lays them out."""
    word_order = "little" if order in ("CDAB", "DCBA") else "big"
    number = value if kind.startswith("float") else int(value)
    words = AsyncModbusTcpClient.convert_to_registers(
        number, VALUES[kind][1], word_order=word_order
    )
    if order in ("BADC", "DCBA"):
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return words


def tool_text(tags: list[tuple[str, str]], driver: str = "") -> str:
    """A modbus tool file with one group holding ``tags`` (name, source)."""
    names = ", ".join(f'"{name}"' for name, _ in tags)
    body = "".join(f'[[tags]]\nname = "{n}"\nsource = {{ {s} }}\n\n' for n, s in tags)
    return (
        f'[driver]\nkind = "modbus"\nhost = "{LOOPBACK}"\n{driver}\n'
        f'[[poll_groups]]\nname = "all"\ninterval_s = 1.0\ntags = [{names}]\n\n{body}'
    )


async def test_every_type_and_order_matches_pymodbus_register_contents(
    tmp_path: Path,
) -> None:
    """Each numeric type in each order decodes to the value pymodbus encoded."""
    words: list[int] = []
    tags: list[tuple[str, str]] = []
    expected: list[float] = []
    for kind, (value, _) in VALUES.items():
        for order in ORDERS:
            tags.append(
                (
                    f"{kind}_{order}",
                    f'address = {len(words)}, type = "{kind}", order = "{order}"',
                )
            )
            words += oracle_registers(value, kind, order)
            expected.append(
                float(np.float32(value)) if kind == "float32" else float(value)
            )
    tool = load_tool(tmp_path, tool_text(tags))

    async with RegisterServer(words) as server:
        settings = tool.driver.model_copy(update={"port": server.port})
        driver = driver_of(tool, settings)
        await driver.connect()
        try:
            batch = await driver.read_group(driver.groups[0])
        finally:
            await driver.close()

    assert batch.values[0].tolist() == expected
    assert (batch.quality == GOOD).all()


async def test_tool_order_applies_unless_a_tag_overrides_it(tmp_path: Path) -> None:
    """The tool's ``order`` is every tag's default; a tag's own ``order`` wins."""
    words = oracle_registers(1.5, "float32", "CDAB") + oracle_registers(
        2.5, "float32", "ABCD"
    )
    tool = load_tool(
        tmp_path,
        tool_text(
            [
                ("a", 'address = 0, type = "float32"'),
                ("b", 'address = 2, type = "float32", order = "ABCD"'),
            ],
            driver='order = "CDAB"',
        ),
    )
    async with RegisterServer(words) as server:
        driver = driver_of(tool, tool.driver.model_copy(update={"port": server.port}))
        await driver.connect()
        batch = await driver.read_group(driver.groups[0])
        await driver.close()

    assert batch.values[0].tolist() == [1.5, 2.5]


async def test_coils_discrete_inputs_and_register_bits(tmp_path: Path) -> None:
    """Coils, discrete inputs and single bits of a register read as 0 or 1."""
    bits = [False] * 32
    for on in (3, 17, 30):
        bits[on] = True
    register = (1 << 0) | (1 << 9) | (1 << 15)
    tags = [(f"coil{n}", f'table = "coil", address = {n}') for n in (3, 4, 17, 30)]
    tags += [("di17", 'table = "discrete_input", address = 17')]
    tags += [
        (f"bit{n}", f'address = 0, type = "bit", bit = {n}') for n in (0, 1, 9, 15)
    ]
    tags += [("swapped9", 'address = 1, type = "bit", bit = 9, order = "BADC"')]
    swapped = ((register & 0xFF) << 8) | (register >> 8)
    tool = load_tool(tmp_path, tool_text(tags))

    async with RegisterServer([register, swapped], bits) as server:
        driver = driver_of(tool, tool.driver.model_copy(update={"port": server.port}))
        await driver.connect()
        batch = await driver.read_group(driver.groups[0])
        await driver.close()

    assert batch.values[0].tolist() == [1, 0, 1, 1, 1, 1, 0, 1, 1, 1]


async def test_strings_of_registers_read_as_the_number_they_spell(
    tmp_path: Path,
) -> None:
    """A string tag spells a number in ASCII (NUL-padded); other text is bad."""
    text = AsyncModbusTcpClient.convert_to_registers(
        "12.75\x00\x00\x00", DATATYPE.STRING
    )
    swapped = [((w & 0xFF) << 8) | (w >> 8) for w in text]
    name = AsyncModbusTcpClient.convert_to_registers("PUMP-A", DATATYPE.STRING)
    tool = load_tool(
        tmp_path,
        tool_text(
            [
                ("plain", 'address = 0, type = "string", length = 4'),
                ("swapped", 'address = 4, type = "string", length = 4, order = "BADC"'),
                ("label", 'address = 8, type = "string", length = 3'),
            ]
        ),
    )
    async with RegisterServer(text + swapped + name) as server:
        driver = driver_of(tool, tool.driver.model_copy(update={"port": server.port}))
        await driver.connect()
        batch = await driver.read_group(driver.groups[0])
        await driver.close()

    assert batch.values[0, :2].tolist() == [12.75, 12.75]
    assert np.isnan(batch.values[0, 2])
    assert batch.quality[0].tolist() == [GOOD, GOOD, 0x82]


async def test_modicon_references_address_the_same_registers(tmp_path: Path) -> None:
    """40001/400001 are holding 0, 30011 input 10, 10003 discrete input 2, 5 coil 4."""
    tool = load_tool(
        tmp_path,
        tool_text(
            [
                ("h5", 'modicon = 40001, type = "float32"'),
                ("h6", 'modicon = 400003, type = "int16"'),
                ("i", 'modicon = 30011, type = "uint16"'),
                ("d", "modicon = 10003"),
                ("c", "modicon = 5"),
                ("h0", 'address = 0, type = "float32"'),
            ]
        ),
    )
    sources = [tag.source for tag in tool.tags]
    assert [(s.table, s.address) for s in sources] == [
        ("holding", 0),
        ("holding", 2),
        ("input", 10),
        ("discrete_input", 2),
        ("coil", 4),
        ("holding", 0),
    ]
    simulation = levels({"h5": 7.25, "h6": -3, "i": 4000, "d": 1, "c": 1, "h0": 7.25})
    async with served(tool, simulation) as (_, driver):
        batch = await driver.read_group(driver.groups[0])

    assert batch.values[0].tolist() == [7.25, -3, 4000, 1, 1, 7.25]


async def test_simulator_serves_every_type_as_pymodbus_reads_it(tmp_path: Path) -> None:
    """The simulator's registers decode with pymodbus's own converter to the signal."""
    tags = [
        (
            f"{kind}_{order}",
            f'address = {8 * i + 2 * j}, type = "{kind}", order = "{order}"',
        )
        for i, kind in enumerate(VALUES)
        for j, order in enumerate(("ABCD", "CDAB"))
        if kind not in ("int64", "uint64", "float64")
    ]
    tool = load_tool(tmp_path, tool_text(tags))
    wanted = {name: float(VALUES[name.split("_")[0]][0]) for name, _ in tags}
    async with served(tool, levels(wanted)) as (simulator, _):
        client = AsyncModbusTcpClient(LOOPBACK, port=simulator.port)
        await client.connect()
        try:
            for name, source in tags:
                kind, order = name.split("_")
                address = int(source.split(",")[0].split("=")[1])
                reply = await client.read_holding_registers(
                    address, count=2, device_id=1
                )
                words = reply.registers[: 1 if kind.endswith("16") else 2]
                value = AsyncModbusTcpClient.convert_from_registers(
                    words,
                    VALUES[kind][1],
                    word_order="little" if order == "CDAB" else "big",
                )
                assert value == pytest.approx(wanted[name], rel=1e-7), name
        finally:
            client.close()


@given(
    kind=st.sampled_from(sorted(STRUCT)),
    order=st.sampled_from(ORDERS),
    seed=st.integers(0, 2**32 - 1),
)
def test_codec_matches_a_struct_reference(kind: str, order: str, seed: int) -> None:
    """Gathering bytes by position equals a struct-based, word-by-word reference."""
    rng = np.random.default_rng(seed)
    width = struct.calcsize(STRUCT[kind])
    raw = rng.integers(0, 256, size=(5, width), dtype=np.uint8)
    canonical_values = [struct.unpack(">" + STRUCT[kind], bytes(row))[0] for row in raw]

    # The naive reference: words in big-endian order, then reversed and/or swapped.
    wire = bytearray()
    for row in raw:
        words = [bytes(row[i : i + 2]) for i in range(0, width, 2)]
        if order in ("CDAB", "DCBA"):
            words.reverse()
        if order in ("BADC", "DCBA"):
            words = [w[::-1] for w in words]
        wire += b"".join(words)
    buffer = np.frombuffer(bytes(wire), dtype=np.uint8)
    positions = byte_positions(np.arange(5) * width, width // 2, order)  # type: ignore[arg-type]

    decoded = from_canonical(buffer[positions], kind)
    np.testing.assert_array_equal(decoded, np.array(canonical_values, dtype=np.float64))
    if kind in ("int16", "uint16", "int32", "uint32"):  # exact in float64
        assert bytes(to_canonical(decoded, kind)) == bytes(raw)


def test_integer_encoding_rounds_and_saturates() -> None:
    """Integers round to nearest, saturate at the type's range, and NaN encodes as 0."""
    encoded = to_canonical([1.6, -40000.0, 70000.0, np.nan], "int16")
    assert from_canonical(encoded, "int16").tolist() == [2, -32768, 32767, 0]


@pytest.mark.parametrize(
    ("source", "rule"),
    [
        ({"address": 0, "type": "bool"}, "is not a bool"),
        ({"table": "coil", "address": 0, "type": "int16"}, "holds a bool"),
        ({"address": 0, "type": "bit"}, "bit is given exactly"),
        ({"address": 0, "type": "string"}, "length is given exactly"),
        ({"modicon": 40001, "address": 0}, "either modicon or address"),
        ({"modicon": 20001}, "is not a reference"),
        ({"address": 65535, "type": "float32"}, "runs past address"),
    ],
)
def test_inconsistent_sources_are_refused(source: dict[str, object], rule: str) -> None:
    """A tag map entry that cannot be read as written is refused with the rule."""
    with pytest.raises(ValidationError, match=rule):
        ModbusSource.model_validate(source)


def test_modicon_six_digit_form_reaches_the_top_register() -> None:
    """465536 is holding register 65535; 49999 is holding 9998."""
    assert modicon_reference(465536) == ("holding", 65535)
    assert modicon_reference(49999) == ("holding", 9998)


def test_any_float_bit_pattern_decodes_without_warnings() -> None:
    """Signalling NaNs and infinities from a device decode to NaN/inf, silently."""
    patterns = np.array(
        [[0x7F, 0x80, 0x00, 0x01], [0xFF, 0x80, 0x00, 0x00], [0x7F, 0xC0, 0x00, 0x00]],
        dtype=np.uint8,
    )
    values = from_canonical(patterns, "float32")
    assert np.isnan(values[0])
    assert np.isnan(values[2])
    assert values[1] == -np.inf
