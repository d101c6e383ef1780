"""SECS-II items: every format round-trips, malformed bytes raise only FrameError."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.secs.codec import (
    MAX_DEPTH,
    Format,
    FrameError,
    Item,
    decode,
    decode_scalar_list,
    encode,
    id_of,
    numeric_value,
    to_json,
)

# Byte-exact vectors of SECS-II items (E5; as secsgem encodes them too).
VECTORS = [
    (Item.U4(10), "B1 04 00 00 00 0A"),
    (Item.U1(10), "A5 01 0A"),
    (Item.A("OK"), "41 02 4F 4B"),
    (Item.BOOLEAN(True), "25 01 01"),
    (Item.F8(1.5), "81 08 3F F8 00 00 00 00 00 00"),
    (Item.F4(1.5), "91 04 3F C0 00 00"),
    (Item.I2(-2), "69 02 FF FE"),
    (Item.B(0x80), "21 01 80"),
    (Item.L(Item.U4(10), Item.U4(11)), "01 02 B1 04 00 00 00 0A B1 04 00 00 00 0B"),
    (Item.L(), "01 00"),
    (Item.A(""), "41 00"),
]

NUMERIC_EXTREMES = {
    Format.I1: (-128, 127),
    Format.I2: (-(2**15), 2**15 - 1),
    Format.I4: (-(2**31), 2**31 - 1),
    Format.I8: (-(2**63), 2**63 - 1),
    Format.U1: (0, 255),
    Format.U2: (0, 2**16 - 1),
    Format.U4: (0, 2**32 - 1),
    Format.U8: (0, 2**64 - 1),
    Format.F4: (-3.4e38, 3.4e38),
    Format.F8: (-1.7e308, 1.7e308),
    Format.BOOLEAN: (False, True),
}


@pytest.mark.parametrize(("item", "wire"), VECTORS, ids=lambda v: repr(v))
def test_known_vectors_encode_and_decode(item: Item, wire: str) -> None:
    """Each reference item encodes to its published bytes and decodes back."""
    assert encode(item).hex(" ").upper() == wire
    assert decode(bytes.fromhex(wire)) == item


@pytest.mark.parametrize("fmt", list(NUMERIC_EXTREMES), ids=lambda f: f.name)
def test_numeric_formats_round_trip_their_extremes(fmt: Format) -> None:
    """Every numeric and Boolean format keeps its extreme values and arrays."""
    low, high = NUMERIC_EXTREMES[fmt]
    item = Item.array(fmt, [low, high, low])
    decoded = decode(encode(item))
    assert decoded == item
    assert decoded is not None
    assert isinstance(decoded.value, np.ndarray)
    assert decoded.value.dtype.byteorder in ("=", "|")


def test_text_binary_and_nesting_round_trip() -> None:
    """ASCII, JIS-8 (with half-width katakana), Binary and nested lists survive."""
    item = Item.L(
        Item.A("chamber_pressure"),
        Item.J("ｱｲｳ ok"),
        Item.B(0, 1, 255),
        Item.L(Item.L(Item.U4()), Item.L()),
        Item.F4(),
    )
    assert decode(encode(item)) == item


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, "41 00"),
        (255, "41 FF"),
        (256, "42 01 00"),
        (65535, "42 FF FF"),
        (65536, "43 01 00 00"),
        ((1 << 24) - 1, "43 FF FF FF"),
    ],
)
def test_length_field_grows_from_one_to_three_bytes(length: int, header: str) -> None:
    """An item takes 1, 2 or 3 length bytes by its size, up to 2**24 - 1."""
    item = Item.A("x" * length)
    wire = encode(item)
    assert wire[: len(header.split())].hex(" ").upper() == header
    assert decode(wire) == item


def test_list_length_counts_items_not_bytes() -> None:
    """A list of 300 items has a 2-byte length of 300, its items following."""
    item = Item.L(*(Item.U1(i % 256) for i in range(300)))
    wire = encode(item)
    assert wire[:3] == bytes([0x02, 0x01, 0x2C])
    assert decode(wire) == item


def test_oversized_item_is_refused_on_encode() -> None:
    """Encoding a body of 2**24 bytes raises ValueError, not a wrong length."""
    with pytest.raises(ValueError, match="exceeds"):
        encode(Item(Format.B, bytes(1 << 24)))


def test_a_longer_length_field_than_needed_is_accepted() -> None:
    """A 3-byte length of a short item is legal E5 and decodes."""
    assert decode(bytes.fromhex("43 00 00 02 4F 4B")) == Item.A("OK")


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        ("40 02 4F", "format byte"),  # no length bytes
        ("FD 01 00", "unknown format"),
        ("41 05 4F 4B", "truncated"),
        ("B1 03 00 00 01", "multiple of 4"),
        ("01 02 A5 01 01", "truncated"),
        ("A5 01 01 00", "after the item"),
        ("42 01", "truncated"),
        ("45 01 80", "not JIS-8"),
    ],
)
def test_malformed_items_raise_frame_error(wire: str, reason: str) -> None:
    """Each malformation raises FrameError naming what is wrong."""
    with pytest.raises(FrameError, match=reason):
        decode(bytes.fromhex(wire))


def test_nesting_beyond_the_limit_is_a_frame_error() -> None:
    """Lists nested deeper than MAX_DEPTH raise FrameError, not RecursionError."""
    wire = bytes.fromhex("01 01") * (MAX_DEPTH + 1) + bytes.fromhex("01 00")
    with pytest.raises(FrameError, match="nested"):
        decode(wire)


def test_ids_of_any_integer_format_or_ascii_are_normalised() -> None:
    """U1, U2, I4 and ASCII digits all give the same int ID; text stays text."""
    for item in (Item.U1(100), Item.U2(100), Item.I4(100), Item.A("100")):
        assert id_of(item) == 100
    assert id_of(Item.A("LOT_START")) == "LOT_START"
    with pytest.raises(FrameError):
        id_of(Item.F4(1.0))


def test_to_json_gives_plain_values() -> None:
    """JSON output: scalars unwrapped, arrays as lists, Binary as hex, NaN as null."""
    item = Item.L(Item.U4(7), Item.F8(1.0, float("nan")), Item.B(1, 2), Item.A("x"))
    assert to_json(item) == [7, [1.0, None], "0102", "x"]


def _naive_scalar_list(item: Item) -> tuple[list[float], list[bool]]:
    """The slow, obvious reading of a list of values."""
    values, valid = [], []
    for element in item.items:
        number = numeric_value(element)
        values.append(float("nan") if number is None else number)
        valid.append(number is not None)
    return values, valid


SCALAR_ITEMS = st.one_of(
    st.floats(allow_nan=False, width=64).map(Item.F8),
    st.floats(allow_nan=False, width=32).map(Item.F4),
    st.integers(0, 2**32 - 1).map(Item.U4),
    st.integers(-(2**15), 2**15 - 1).map(Item.I2),
    st.booleans().map(Item.BOOLEAN),
    st.just(Item.L()),
    st.text(alphabet="abc", max_size=3).map(Item.A),
)


@given(st.lists(SCALAR_ITEMS, max_size=40))
@settings(max_examples=200, deadline=None)
def test_scalar_list_matches_the_naive_reading(elements: list[Item]) -> None:
    """The columnar S1F4 reader agrees with a per-item reference on mixed lists."""
    item = Item.L(*elements)
    values, valid = decode_scalar_list(encode(item))
    expected_values, expected_valid = _naive_scalar_list(item)
    assert valid.tolist() == expected_valid
    np.testing.assert_array_equal(values, np.array(expected_values, dtype=float))


@given(st.lists(st.floats(allow_nan=False, width=64), min_size=1, max_size=50))
@settings(max_examples=100, deadline=None)
def test_uniform_scalar_list_takes_the_fast_path(numbers: list[float]) -> None:
    """A list of F8 values is read whole and equals the values sent."""
    values, valid = decode_scalar_list(encode(Item.L(*map(Item.F8, numbers))))
    assert valid.all()
    np.testing.assert_array_equal(values, numbers)


def _items(depth: int = 3) -> st.SearchStrategy[Item]:
    leaves = st.one_of(
        st.binary(max_size=8).map(lambda b: Item(Format.B, b)),
        st.text(alphabet=st.characters(max_codepoint=127), max_size=8).map(Item.A),
        st.lists(st.booleans(), max_size=3).map(lambda v: Item.BOOLEAN(*v)),
        st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3).map(
            lambda v: Item.I8(*v)
        ),
        st.lists(st.integers(0, 2**64 - 1), max_size=3).map(lambda v: Item.U8(*v)),
        st.lists(st.floats(width=32), max_size=3).map(lambda v: Item.F4(*v)),
    )
    if depth == 0:
        return leaves
    return st.one_of(
        leaves, st.lists(_items(depth - 1), max_size=4).map(lambda v: Item.L(*v))
    )


@given(_items())
@settings(max_examples=300, deadline=None)
def test_random_items_round_trip(item: Item) -> None:
    """Any nesting of any formats decodes to an equal item."""
    assert decode(encode(item)) == item


@given(st.binary(max_size=64))
@settings(max_examples=1000, deadline=None)
def test_random_bytes_raise_nothing_but_frame_error(data: bytes) -> None:
    """Decoding arbitrary bytes either succeeds or raises FrameError."""
    with contextlib.suppress(FrameError):
        decode(data)
    with contextlib.suppress(FrameError):
        decode_scalar_list(data)


@given(_items(), st.data())
@settings(max_examples=300, deadline=None)
def test_truncated_items_raise_frame_error(item: Item, data: st.DataObject) -> None:
    """Every proper prefix of an encoded item raises FrameError."""
    wire = encode(item)
    cut = data.draw(st.integers(1, len(wire) - 1)) if len(wire) > 1 else 0
    if cut:
        with pytest.raises(FrameError):
            decode(wire[:cut])
