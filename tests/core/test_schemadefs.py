"""Index definitions, typed filters and migration files: checked before any I/O (no servers)."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvcore import IndexSpec, InvalidKind, InvalidQuery, MigrationError
from hvcore._schemadefs import (
    INDEX_TYPES,
    FieldFilter,
    bind_filters,
    load_migrations,
    split_ranges,
    typed_value,
)

# -- IndexSpec ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", INDEX_TYPES)
def test_index_names_are_deterministic_and_short(type_name: str) -> None:
    a = IndexSpec(kind=32767, field="f" * 200, type=type_name)
    b = IndexSpec(kind=32767, field="f" * 200, type=type_name)
    assert a.name == b.name
    assert re.fullmatch(r"hv_k32767_[0-9a-f]{12}", a.name)
    assert len(a.name) < 63  # PostgreSQL's identifier limit


def test_index_names_differ_by_field_type_and_uniqueness() -> None:
    names = {
        IndexSpec(kind=1, field="age", type="bigint").name,
        IndexSpec(kind=1, field="age", type="numeric").name,
        IndexSpec(kind=1, field="age", type="bigint", unique=True).name,
        IndexSpec(kind=1, field="agE", type="bigint").name,
        IndexSpec(kind=2, field="age", type="bigint").name,
    }
    assert len(names) == 5


@pytest.mark.parametrize("kind", [-1, 32768, True, "3", 3.0, None])
def test_index_kind_out_of_range_is_invalid_kind(kind: Any) -> None:
    with pytest.raises(InvalidKind, match=r"0\.\.32767"):
        IndexSpec(kind=kind, field="age")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"field": "age", "type": "integer"}, "unknown index type 'integer': expected one of text, bigint, numeric"),
        ({"field": "age", "type": "TEXT"}, "unknown index type"),
        ({"field": ""}, "non-empty string"),
        ({"field": 3}, "non-empty string"),
        ({"field": "a\x00b"}, "NUL"),
        ({"field": "x" * 201}, "at most 200"),
        ({"field": "\ud800"}, "not valid Unicode"),
        ({"field": "age", "unique": 1}, "unique must be True or False"),
    ],
)
def test_bad_index_definitions_are_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidQuery, match=match):
        IndexSpec(kind=1, **options)


# -- where: equality and ranges ----------------------------------------------------------------------------------------


def test_the_body_index_spec() -> None:
    spec = IndexSpec.body()
    assert (spec.kind, spec.field, spec.type, spec.unique, spec.name) == (
        None,
        None,
        "body",
        False,
        "entities_body_idx",
    )
    assert spec.is_body and not IndexSpec(kind=1, field="a").is_body
    assert IndexSpec.body(state="dropping").state == "dropping"
    assert spec.as_dict() == {
        "name": "entities_body_idx",
        "kind": None,
        "field": None,
        "type": "body",
        "unique": False,
        "state": "active",
    }


@given(
    st.one_of(st.none(), st.integers(-5, 40000)),
    st.one_of(st.none(), st.text(max_size=5)),
    st.sampled_from([*INDEX_TYPES, "body"]),
    st.booleans(),
)
def test_body_and_field_indexes_do_not_mix(kind: Any, field: Any, type_name: str, unique: bool) -> None:
    """``type="body"`` goes with no kind, no field and not unique, and only it: every other mix is refused."""
    body_form = type_name == "body" and kind is None and field is None and not unique
    field_form = (
        type_name != "body" and isinstance(kind, int) and 0 <= kind <= 32767 and bool(field) and "\x00" not in field
    )
    try:
        spec = IndexSpec(kind=kind, field=field, type=type_name, unique=unique)
    except (InvalidQuery, InvalidKind):
        assert not body_form and not field_form
    else:
        assert body_form or field_form
        assert spec.is_body == body_form


def test_split_ranges_separates_ranges_from_equality() -> None:
    equal, ranges = split_ranges({"city": "Oslo", "age": {">=": 18, "<": 65}, "tags": {"a": 1}, "empty": {}}, 3)
    assert equal == {"city": "Oslo", "tags": {"a": 1}, "empty": {}}
    assert ranges == (FieldFilter("age", ((">=", 18), ("<", 65))),)


@pytest.mark.parametrize(
    ("where", "match"),
    [
        ({"age": {">=": 1, "<": "9"}}, "mixes bounds"),
        ({"age": {">=": None}}, "is None"),
        ({"at": {">=": dt.datetime(2024, 1, 1)}}, "aware datetime"),
        ({"age": {">=": float("nan")}}, "finite"),
        ({"age": {">=": [1]}}, "list"),
        ({"name": {">": "a\x00"}}, "NUL"),
    ],
)
def test_bad_range_bounds_are_refused(where: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidQuery, match=match):
        split_ranges(where, 3)


def test_a_range_needs_a_kind() -> None:
    with pytest.raises(InvalidQuery, match="needs kind=K"):
        split_ranges({"age": {">": 1}}, None)


def test_ints_and_floats_mix_in_one_range() -> None:
    assert split_ranges({"x": {">": 1, "<": 2.5}}, 1)[1][0].ops == ((">", 1), ("<", 2.5))


INDEXES = {
    (3, "age"): IndexSpec(kind=3, field="age", type="bigint"),
    (3, "score"): IndexSpec(kind=3, field="score", type="numeric"),
    (3, "at"): IndexSpec(kind=3, field="at", type="timestamptz"),
}


def test_bind_filters_needs_an_index_of_that_kind() -> None:
    _, ranges = split_ranges({"age": {">": 1}}, 4)
    with pytest.raises(InvalidQuery, match="no index on field 'age' of kind 4"):
        bind_filters(4, None, ranges, INDEXES)


@pytest.mark.parametrize(
    ("where", "match"),
    [
        ({"age": {">": 1.5}}, "index on 'age' of kind 3 is bigint: compare it with an int"),
        ({"age": {">": "1"}}, "is bigint"),
        ({"score": {">": "1"}}, "int, float or Decimal"),
        ({"at": {">": "2024-01-01"}}, "aware datetime"),
        ({"age": {">": 2**63}}, "outside the bigint range"),
    ],
)
def test_bounds_must_fit_the_index_type(where: dict[str, Any], match: str) -> None:
    equal, ranges = split_ranges(where, 3)
    with pytest.raises(InvalidQuery, match=match):
        bind_filters(3, equal, ranges, INDEXES)


def test_numeric_bounds_become_exact_decimals_and_equality_adds_hints() -> None:
    equal, ranges = split_ranges({"score": {">": 0.1}, "age": 30, "other": 1}, 3)
    filters = bind_filters(3, equal, ranges, INDEXES)
    assert filters[0] == FieldFilter("score", ((">", Decimal("0.1")),), kind=3, type="numeric")
    assert filters[1] == FieldFilter("age", (("=", 30),), kind=3, type="bigint", hint=True)
    assert len(filters) == 2
    assert filters[1].matches({}) is True  # a hint never filters: the equality does


# -- typed values ------------------------------------------------------------------------------------------------------

UTC = dt.UTC


@pytest.mark.parametrize(
    ("raw", "type_name", "text_values", "expected"),
    [
        (42, "bigint", False, 42),
        (42.0, "bigint", False, 42),
        (42.5, "bigint", False, None),
        (2**63, "bigint", False, None),
        (-(2**63), "bigint", False, -(2**63)),
        (True, "bigint", False, None),
        ("42", "bigint", False, None),
        ("42", "bigint", True, 42),
        ("042", "bigint", True, 42),
        ("+42", "bigint", True, None),
        ("9223372036854775808", "bigint", True, None),
        ("4.2", "bigint", True, None),
        (0.1, "numeric", False, Decimal("0.1")),
        (10, "numeric", False, Decimal(10)),
        ("1e5", "numeric", True, Decimal("1e5")),
        ("1.", "numeric", True, None),
        ("1e5", "numeric", False, None),
        ("ada", "text", False, "ada"),
        (1, "text", False, None),
        ("1", "text", True, "1"),
        (True, "boolean", False, True),
        (1, "boolean", False, None),
        ("true", "boolean", True, True),
        ("True", "boolean", True, None),
        ("true", "boolean", False, None),
        ("2024-02-29T12:00:00+01:00", "timestamptz", False, dt.datetime(2024, 2, 29, 11, tzinfo=UTC)),
        ("2024-02-29 12:00:00.5Z", "timestamptz", True, dt.datetime(2024, 2, 29, 12, 0, 0, 500000, tzinfo=UTC)),
        ("2023-02-29T12:00:00Z", "timestamptz", False, None),
        ("2024-01-01T12:00:00", "timestamptz", False, None),
        ("2024-01-01T24:00:00Z", "timestamptz", False, None),
        ("2024-01-01T12:00:00.1234567Z", "timestamptz", False, None),
        (None, "text", False, None),
        ([1], "bigint", False, None),
        ({"a": 1}, "text", False, None),
    ],
)
def test_typed_value(raw: Any, type_name: str, text_values: bool, expected: Any) -> None:
    value = typed_value(raw, type_name, text_values=text_values)
    assert value == expected
    assert type(value) is type(expected)


@given(st.text(), st.sampled_from(INDEX_TYPES), st.booleans())
def test_typed_value_never_raises_on_text(raw: str, type_name: str, text_values: bool) -> None:
    typed_value(raw, type_name, text_values=text_values)


@given(st.integers(-(2**70), 2**70))
def test_bigint_text_and_json_agree(number: int) -> None:
    as_json = typed_value(number, "bigint", text_values=False)
    assert typed_value(str(number), "bigint", text_values=True) == as_json
    assert as_json == (number if -(2**63) <= number < 2**63 else None)


def test_range_filters_compare_as_the_type() -> None:
    flt = FieldFilter("at", ((">=", dt.datetime(2024, 1, 1, tzinfo=UTC)),), kind=1, type="timestamptz")
    assert flt.matches({"at": "2024-01-01T01:00:00+02:00"}) is False  # 2023-12-31 23:00 UTC
    assert flt.matches({"at": "2024-01-01T01:00:00+01:00"}) is True
    assert flt.matches({"at": 5}) is False
    assert flt.matches({}) is False
    text = FieldFilter("name", ((">=", "a"),), kind=1, type="text")
    assert text.matches({"name": "b"}) and not text.matches({"name": "B"})  # code-point order (COLLATE "C")


# -- migration files ---------------------------------------------------------------------------------------------------


def write(folder: Path, **files: str) -> Path:
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_migrations_load_in_version_order(tmp_path: Path) -> None:
    write(tmp_path, **{"0010_ten.sql": "SELECT 10", "0002_two.sql": "SELECT 2", "README.md": "not a migration"})
    found = load_migrations(tmp_path)
    assert [(m.version, m.name, m.filename) for m in found] == [(2, "two", "0002_two.sql"), (10, "ten", "0010_ten.sql")]
    assert len(found[0].checksum) == 64


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({}, "no migration files"),
        ({"1_a.sql": "SELECT 1"}, "not named NNNN_name.sql"),
        ({"0000_zero.sql": "SELECT 1"}, "not named NNNN_name.sql"),
        ({"0001 a.sql": "SELECT 1"}, "not named"),
        ({"0001_a.sql": "SELECT 1", "00001_b.sql": "SELECT 2"}, "version 1 is used twice"),
        ({"0001_a.sql": "SELECT '\x00'"}, "NUL"),
    ],
)
def test_bad_migration_directories_are_refused(tmp_path: Path, files: dict[str, str], match: str) -> None:
    write(tmp_path, **files)
    with pytest.raises(MigrationError, match=match):
        load_migrations(tmp_path)


def test_non_utf8_and_missing_directories(tmp_path: Path) -> None:
    (tmp_path / "0001_latin.sql").write_bytes(b"SELECT '\xe9'")
    with pytest.raises(MigrationError, match="not UTF-8"):
        load_migrations(tmp_path)
    with pytest.raises(MigrationError, match="does not exist"):
        load_migrations(tmp_path / "nope")
