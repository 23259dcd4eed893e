"""Key and KeyLayout: decoding, constructors, bad input, value-type behaviour."""

from __future__ import annotations

import datetime as dt
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvcore import InvalidKey, Key, KeyLayout, LayoutExhausted

HV = KeyLayout.HYPERVAULT.key_type
MAX = 2**63 - 1


def test_old_library_readme_example() -> None:
    key = HV(307821103844175873)
    assert key.created == dt.datetime(2014, 11, 15, 14, 11, 6, 450000, tzinfo=dt.UTC)
    assert key.shard_id == 12
    assert key.added_id == 1
    assert key.timestamp_ms == 1416060666450


def test_old_server_formula_cross_check() -> None:
    # next_id() in PL/pgSQL: (now_ms - epoch) << 23 | shard << 10 | seq % 1024
    now_ms, shard, seq = 1416060666450, 12, 1025
    value = ((now_ms - 1379365531352) << 23) | (shard << 10) | (seq % 1024)
    assert value == 307821103844175873
    assert HV(value).added_id == 1


def test_key_is_an_int_value_type() -> None:
    key = Key(12345678901234)
    assert key == 12345678901234
    assert hash(key) == hash(12345678901234)
    assert key != "12345678901234"  # type: ignore[comparison-overlap]
    assert repr(key) == "Key(12345678901234)"
    assert str(key) == "12345678901234"
    assert key.to_json() == "12345678901234"
    assert f"{key:,}" == "12,345,678,901,234"
    assert type(key + 1) is int
    assert sorted([Key(3), Key(1), Key(2)]) == [1, 2, 3]
    with pytest.raises(AttributeError):
        key.foo = 1  # type: ignore[attr-defined]


def test_pickle_keeps_layout() -> None:
    key = HV(307821103844175873)
    again = pickle.loads(pickle.dumps(key))
    assert again == key and type(again) is type(key) and again.shard_id == 12


def test_layout_key_types_are_cached() -> None:
    assert KeyLayout.DEFAULT.key_type is Key
    assert KeyLayout.HYPERVAULT.key_type is HV
    assert KeyLayout(epoch_ms=1379365531352).key_type is HV
    assert isinstance(HV(1), Key)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (-1, "out of range"),
        (2**63, "out of range"),
        (True, "bool"),
        (1.0, "float"),
        ("123", "Key.parse"),
        (None, "NoneType"),
        (b"1", "bytes"),
    ],
)
def test_bad_keys(value: object, match: str) -> None:
    with pytest.raises(InvalidKey, match=match):
        Key(value)
    with pytest.raises(ValueError):  # InvalidKey is a ValueError too
        Key(value)


@pytest.mark.parametrize("text", ["", "abc", "-5", "1.5", "1e5", "٣", "9223372036854775808", "0x10"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidKey):
        Key.parse(text)


def test_parse_accepts_padded_decimal() -> None:
    assert Key.parse(" 307821103844175873 ") == 307821103844175873
    assert type(HV.parse("307821103844175873")) is HV


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        ({"shard_id": 8192, "added_id": 0, "timestamp_ms": 1_800_000_000_000}, "0..8191"),
        ({"shard_id": -1, "added_id": 0, "timestamp_ms": 1_800_000_000_000}, "0..8191"),
        ({"shard_id": 1, "added_id": 1024, "timestamp_ms": 1_800_000_000_000}, "0..1023"),
        ({"shard_id": 1, "added_id": -1, "timestamp_ms": 1_800_000_000_000}, "0..1023"),
        ({"shard_id": 1, "added_id": 0, "timestamp_ms": 1_000}, "outside this layout"),
        ({"shard_id": 1, "added_id": 0, "timestamp_ms": 1_800_000_000_000.0}, "int"),
        ({"shard_id": 1, "added_id": 0}, "exactly one"),
        ({"shard_id": 1, "added_id": 0, "created": dt.datetime(2030, 1, 1)}, "aware"),
        ({"shard_id": True, "added_id": 0, "timestamp_ms": 1_800_000_000_000}, "bool"),
    ],
)
def test_bad_parts(parts: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidKey, match=match):
        Key.from_parts(**parts)  # type: ignore[arg-type]


def test_from_parts_with_datetime() -> None:
    when = dt.datetime(2030, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC)
    key = Key.from_parts(created=when, shard_id=8191, added_id=1023)
    assert (key.created, key.shard_id, key.added_id) == (when, 8191, 1023)


def test_layout_never_goes_negative() -> None:
    layout = KeyLayout.DEFAULT
    last = layout.key_type.from_parts(timestamp_ms=layout.last_timestamp_ms, shard_id=8191, added_id=1023)
    assert last == MAX
    with pytest.raises(LayoutExhausted, match="negative"):
        layout.compose(layout.max_time_part + 1, 0, 0)
    assert layout.exhausted_at == dt.datetime(2058, 11, 3, 19, 53, 47, 776000, tzinfo=dt.UTC)


def test_bounds_of_a_millisecond() -> None:
    low, high = Key.bounds(timestamp_ms=1_800_000_000_000, shard_id=7)
    assert (low.shard_id, low.added_id, high.shard_id, high.added_id) == (7, 0, 7, 1023)
    low, high = Key.bounds(timestamp_ms=1_800_000_000_000)
    assert (low.shard_id, high.shard_id, high.added_id) == (0, 8191, 1023)
    assert high - low == 2**23 - 1


@pytest.mark.parametrize(
    "kwargs", [{"epoch_ms": -1}, {"epoch_ms": 0, "time_bits": 40}, {"epoch_ms": 0, "time_bits": 1, "shard_bits": 53}]
)
def test_bad_layouts(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        KeyLayout(**kwargs)


def test_as_dict_is_json_ready() -> None:
    assert HV(307821103844175873).as_dict() == {
        "id": "307821103844175873",
        "created": "2014-11-15T14:11:06.450Z",
        "shard_id": 12,
        "added_id": 1,
        "timestamp_ms": 1416060666450,
    }


layouts = st.sampled_from([KeyLayout.DEFAULT, KeyLayout.HYPERVAULT])


@given(layouts, st.integers(0, 2**40 - 1), st.integers(0, 8191), st.integers(0, 1023))
def test_parts_round_trip(layout: KeyLayout, time_part: int, shard: int, seq: int) -> None:
    key_type = layout.key_type
    key = key_type.from_parts(timestamp_ms=layout.epoch_ms + time_part, shard_id=shard, added_id=seq)
    assert (key.time_part, key.shard_id, key.added_id) == (time_part, shard, seq)
    assert 0 <= key <= MAX
    assert key_type.parse(str(key)) == key
    assert key_type(int(key)) == key
    assert key_type.from_parts(created=key.created, shard_id=shard, added_id=seq) == key


@given(st.integers(0, MAX))
def test_every_valid_int_decodes(value: int) -> None:
    key = Key(value)
    assert Key.from_parts(timestamp_ms=key.timestamp_ms, shard_id=key.shard_id, added_id=key.added_id) == value


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63)))
def test_every_out_of_range_int_is_rejected(value: int) -> None:
    with pytest.raises(InvalidKey):
        Key(value)


@given(st.text())
def test_parse_accepts_only_ascii_decimal(text: str) -> None:
    stripped = text.strip()
    valid = stripped.isascii() and stripped.isdigit() and int(stripped) <= MAX
    if valid:
        assert Key.parse(text) == int(stripped)
    else:
        with pytest.raises(InvalidKey):
            Key.parse(text)
