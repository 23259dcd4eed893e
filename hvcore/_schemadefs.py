"""Secondary-index definitions, typed field filters and migration files: what the façade checks before any I/O.

An index is on one body field of one kind, with a declared type. What a field's value is as that type (or None when
it is not one) is defined once here, by `typed_value`: the memory backend filters with it, and the PostgreSQL
expressions in ``hvbackend_postgres._indexes`` compute the same thing on the server, so a range filter finds the
same records on every backend, with or without the index built.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from hvcore._show import show_value
from hvcore.errors import InvalidKind, InvalidQuery, MigrationError

__all__ = [
    "BODY_INDEX_NAME",
    "BODY_INDEX_TYPE",
    "INDEX_TYPES",
    "RANGE_OPERATORS",
    "FieldFilter",
    "IndexInfo",
    "IndexReport",
    "IndexSpec",
    "Migration",
    "MigrationReport",
    "MigrationRun",
    "MigrationStatus",
    "SchemaProgress",
    "VersionStatus",
    "bind_filters",
    "load_migrations",
    "split_ranges",
    "typed_value",
]

INDEX_TYPES = ("text", "bigint", "numeric", "timestamptz", "boolean")
BODY_INDEX_TYPE = "body"  # the type of `IndexSpec.body()`: a GIN index on the whole body, not one typed field
BODY_INDEX_NAME = "entities_body_idx"  # its name in every shard (the name the layout gave it when every shard had it)
RANGE_OPERATORS = (">", ">=", "<", "<=")
MAX_FIELD_LENGTH = 200  # characters of an indexed field name (it is part of the index expression)
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1

# The text forms a typed index reads from a string; the PostgreSQL expressions use the same patterns.
INT_PATTERN = "-?[0-9]{1,19}"
NUMERIC_PATTERN = "-?[0-9]+([.][0-9]+)?([eE][-+]?[0-9]{1,3})?"
TIMESTAMP_PATTERN = (
    "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]([.][0-9]{1,6})?"
    "(Z|[+-](0[0-9]|1[0-5]):[0-5][0-9])"
)
_INT_RE = re.compile(INT_PATTERN)
_NUMERIC_RE = re.compile(NUMERIC_PATTERN)
_TIMESTAMP_RE = re.compile(TIMESTAMP_PATTERN)
_MIGRATION_FILE = re.compile(r"([0-9]{4,})_([A-Za-z0-9][A-Za-z0-9_.-]*)\.sql")

SchemaProgress = Callable[[str, int, int], None]
"""``progress(label, done, total)``: shards done of ``total`` for the step ``label`` (an index or a migration file)."""


KIND_MAX = 32767  # kind is stored as a PostgreSQL smallint


def check_kind(kind: object) -> int:
    """Return ``kind`` if it is an int in 0..32767, else raise `InvalidKind`."""
    if type(kind) is int and 0 <= kind <= KIND_MAX:
        return kind
    if isinstance(kind, int) and not isinstance(kind, bool) and 0 <= kind <= KIND_MAX:
        return int(kind)
    raise InvalidKind(
        f"kind must be an int in 0..{KIND_MAX} (stored as a smallint), got {type(kind).__name__} {show_value(kind)}"
    )


_check_kind = check_kind


def _check_field(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidQuery(f"an indexed field is a non-empty string (a top-level body field), got {name!r}")
    if len(name) > MAX_FIELD_LENGTH:
        raise InvalidQuery(f"field name of {len(name)} characters: an indexed field has at most {MAX_FIELD_LENGTH}")
    if "\x00" in name:
        raise InvalidQuery(f"field name {name!r} contains a NUL character")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidQuery(f"field name {name!r} is not valid Unicode text") from None
    return name


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexSpec:
    """A secondary index on one body ``field`` of one ``kind``, of a declared ``type``; ``unique`` within each shard.

    ``type`` is one of text, bigint, numeric, timestamptz, boolean. Raises `InvalidKind` for a kind outside
    0..32767 and `InvalidQuery` for a bad field name, type or ``unique`` flag.

    `IndexSpec.body()` is the other sort: the body index (``type`` "body", ``kind`` and ``field`` None), one per
    server over every kind and field, serving equality ``where`` filters (containment); see
    ``Datastore.create_body_index``.
    """

    kind: int | None
    field: str | None
    type: str = "text"
    unique: bool = False
    state: str = "active"  # "dropping" while drop_index has not finished

    def __post_init__(self) -> None:
        if self.type == BODY_INDEX_TYPE:
            if self.kind is not None or self.field is not None or self.unique:
                raise InvalidQuery(
                    "the body index covers every kind and field and is not unique: IndexSpec.body(), "
                    f"got kind={self.kind!r}, field={self.field!r}, unique={self.unique!r}"
                )
        else:
            _check_kind(self.kind)
            _check_field(self.field)
            if self.type not in INDEX_TYPES:
                raise InvalidQuery(
                    f"unknown index type {self.type!r}: expected one of {', '.join(INDEX_TYPES)} "
                    "(or IndexSpec.body() for the body index)"
                )
        if not isinstance(self.unique, bool):
            raise InvalidQuery(f"unique must be True or False, got {self.unique!r}")
        if self.state not in ("active", "dropping"):
            raise InvalidQuery(f"index state must be 'active' or 'dropping', got {self.state!r}")

    @classmethod
    def body(cls, *, state: str = "active") -> IndexSpec:
        """The body index: every shard's GIN index on the whole body, for equality ``where`` filters."""
        return cls(kind=None, field=None, type=BODY_INDEX_TYPE, state=state)

    @property
    def is_body(self) -> bool:
        """True for the body index (`body`), False for an index on one field of one kind."""
        return self.type == BODY_INDEX_TYPE

    @property
    def name(self) -> str:
        """The index's name in every shard: ``hv_k<kind>_<hash>``, the hash of field, type and uniqueness;
        ``entities_body_idx`` for the body index.

        Deterministic, so every process and every shard agree, and a definition with another type or uniqueness
        never mistakes an old index of the same field for its own.
        """
        if self.is_body:
            return BODY_INDEX_NAME
        digest = hashlib.sha256(f"{self.field}\x00{self.type}\x00{int(self.unique)}".encode()).hexdigest()
        return f"hv_k{self.kind}_{digest[:12]}"

    def as_dict(self) -> dict[str, Any]:
        """The definition as plain data (for ``--json``)."""
        return {"name": self.name, **dataclasses.asdict(self)}


IndexSpec.__module__ = "hvcore"


# -- typed values: one definition for every backend ----------------------------------------------------------------


def _timestamp(text: str) -> dt.datetime | None:
    if _TIMESTAMP_RE.fullmatch(text) is None:
        return None
    try:
        return dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:  # 2024-02-30 and the like: not a timestamp (NULL on the server too)
        return None


def typed_value(raw: object, type_name: str, *, text_values: bool) -> Any:
    """``raw`` (a stored body value) as ``type_name``, or None when it is not one: what an index of that type holds.

    ``text_values`` is True for text-only bodies (hstore, memory ``values="text"``): values are strings and are
    read as the type (``"42"`` is the bigint 42; booleans are ``"true"``/``"false"``). Otherwise (jsonb, memory
    json) a value counts only if its JSON type fits: bigint takes integral numbers within 64 bits, numeric any
    number, text strings, boolean booleans. timestamptz takes ISO 8601 strings with an explicit offset
    (``datetime.isoformat()`` of an aware datetime, or ``Z``), to the microsecond. Comparable results: int,
    Decimal (exact, from the number's shortest repr), str (code-point order: the server compares with
    ``COLLATE "C"``), aware datetime, bool. ``tests/backends/test_indexes_pg.py`` checks these rules against the
    server's expressions value by value.
    """
    if raw is None:
        return None
    if text_values or isinstance(raw, str):
        if not isinstance(raw, str):
            return None
        if type_name == "text":
            return raw
        if type_name == "timestamptz":
            return _timestamp(raw)
        if not text_values:
            return None  # a JSON string is not a number or a boolean
        if type_name == "bigint":
            if _INT_RE.fullmatch(raw) is None:
                return None
            number = int(raw)
            return number if BIGINT_MIN <= number <= BIGINT_MAX else None
        if type_name == "numeric":
            return Decimal(raw) if _NUMERIC_RE.fullmatch(raw) is not None else None
        if type_name == "boolean":
            return {"true": True, "false": False}.get(raw)
        return None
    if type_name == "boolean":
        return raw if isinstance(raw, bool) else None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    if type_name == "numeric":
        if isinstance(raw, int):
            return Decimal(raw)
        # as the jsonb backend stores a float: its shortest repr, or, when that has an exponent (1e+300), the
        # float's exact integer value (hvbackend_postgres._common.dump_json keeps such floats floats that way)
        text = repr(raw)
        return Decimal(int(raw)) if "e+" in text else Decimal(text)
    if type_name == "bigint":
        if isinstance(raw, float):
            if not math.isfinite(raw) or not raw.is_integer():
                return None
            raw = int(raw)
        return raw if BIGINT_MIN <= raw <= BIGINT_MAX else None
    return None


def _compare(value: Any, op: str, bound: Any) -> bool:
    if op == "=":
        return bool(value == bound)
    if op == ">":
        return bool(value > bound)
    if op == ">=":
        return bool(value >= bound)
    if op == "<":
        return bool(value < bound)
    return bool(value <= bound)


@dataclass(frozen=True, slots=True)
class FieldFilter:
    """A typed filter on one body field: ``ops`` are (operator, bound) pairs, all of which must hold.

    Made by the façade from ``where={field: {">=": a, "<": b}}`` and bound to the index of (``kind``, ``field``),
    whose ``type`` decides how stored values compare. A ``hint`` is an equality the plain ``where`` filter already
    implies (``where={field: v}`` on an indexed field): backends may use it to reach the index, and it never
    changes the result.
    """

    field: str
    ops: tuple[tuple[str, Any], ...]
    kind: int | None = None
    type: str | None = None
    hint: bool = False

    def matches(self, data: Mapping[str, Any], *, text_values: bool = False) -> bool:
        """True if the field's typed value satisfies every operator (the reference semantics)."""
        if self.hint:
            return True
        assert self.type is not None, "an unbound filter"
        value = typed_value(data.get(self.field), self.type, text_values=text_values)
        if value is None:
            return False
        return all(_compare(value, op, bound) for op, bound in self.ops)


FieldFilter.__module__ = "hvcore"


def _is_range(value: object) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(op in RANGE_OPERATORS for op in value)


_OPERATOR_LIKE = re.compile(r"[<>=!~]+|\$\w+|(?:eq|ne|neq|gt|gte|ge|lt|lte|le)", re.IGNORECASE)


def _refuse_operator_lookalikes(name: str, value: object) -> None:
    """`InvalidQuery` for a filter object that reads as a mistyped range (``{"=>": 5}``, ``{"gt": 5}``, ``{">": 1,
    "x": 2}``): taken as an equality filter on an object, it would match nothing, silently."""
    if not isinstance(value, Mapping):
        return
    ops = [k for k in value if k in RANGE_OPERATORS]
    odd = [k for k in value if k not in RANGE_OPERATORS and isinstance(k, str) and _OPERATOR_LIKE.fullmatch(k.strip())]
    if ops or odd:
        allowed = ", ".join(RANGE_OPERATORS)
        shown = ", ".join(repr(k) for k in (odd or [k for k in value if k not in RANGE_OPERATORS]))
        raise InvalidQuery(
            f"where[{name!r}] has the key(s) {shown}: a range filter takes only the operators {allowed} "
            f"(e.g. {{'>=': 18, '<': 65}}), and an object value without operator keys is an equality filter"
        )


def _bound_family(name: str, op: str, bound: object) -> str:
    if bound is None:
        raise InvalidQuery(f"where[{name!r}][{op!r}] is None: a range bound is a value (nothing is below None)")
    if isinstance(bound, bool):
        return "boolean"
    if isinstance(bound, int):
        return "integer"
    if isinstance(bound, float | Decimal):
        if not math.isfinite(bound):
            raise InvalidQuery(f"where[{name!r}][{op!r}] is {bound!r}: a range bound must be finite")
        return "number"
    if isinstance(bound, str):
        if "\x00" in bound:
            raise InvalidQuery(f"where[{name!r}][{op!r}] contains a NUL character")
        return "text"
    if isinstance(bound, dt.datetime):
        if bound.tzinfo is None:
            raise InvalidQuery(f"where[{name!r}][{op!r}] must be an aware datetime (tzinfo=datetime.UTC)")
        return "timestamp"
    raise InvalidQuery(
        f"where[{name!r}][{op!r}] is {type(bound).__name__} {bound!r}: a range bound is an int, float, Decimal, "
        "str, bool or aware datetime"
    )


def split_ranges(
    where: Mapping[str, Any] | None, kind: int | None
) -> tuple[dict[str, Any] | None, tuple[FieldFilter, ...]]:
    """Split ``where`` into equality filters and range filters (not yet bound to an index); raise `InvalidQuery`.

    A value that is a non-empty mapping whose keys are all among ``>``, ``>=``, ``<``, ``<=`` is a range filter;
    anything else is an equality filter as before. The bounds of one field must be of one family (numbers, text,
    booleans or aware datetimes), and a range filter needs ``kind`` (indexes are per kind).
    """
    if not where:
        return (dict(where) if where is not None else None), ()
    equal: dict[str, Any] = {}
    ranges: list[FieldFilter] = []
    for name, value in where.items():
        if not _is_range(value):
            _refuse_operator_lookalikes(name, value)
            equal[name] = value
            continue
        families = {_bound_family(name, op, bound) for op, bound in value.items()}
        if len(families - {"integer", "number"}) + (1 if families & {"integer", "number"} else 0) > 1:
            raise InvalidQuery(f"where[{name!r}] mixes bounds of different types: {dict(value)!r}")
        if kind is None:
            raise InvalidQuery(f"the range filter on {name!r} needs kind=K: indexes, and so field types, are per kind")
        ranges.append(FieldFilter(name, tuple((op, value[op]) for op in RANGE_OPERATORS if op in value)))
    return equal or None, tuple(ranges)


_BOUND_TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "bigint": (("integer",), "an int"),
    "numeric": (("integer", "number"), "an int, float or Decimal"),
    "text": (("text",), "a str"),
    "timestamptz": (("timestamp",), "an aware datetime"),
    "boolean": (("boolean",), "a bool"),
}


def _bound_as(type_name: str, bound: Any) -> Any:
    if type_name == "numeric":
        return (
            bound if isinstance(bound, Decimal) else Decimal(bound) if isinstance(bound, int) else Decimal(repr(bound))
        )
    if type_name == "bigint" and not BIGINT_MIN <= bound <= BIGINT_MAX:
        raise InvalidQuery(f"bound {bound} is outside the bigint range -2**63..2**63-1")
    return bound


def bind_filters(
    kind: int | None,
    where: Mapping[str, Any] | None,
    ranges: tuple[FieldFilter, ...],
    indexes: Mapping[tuple[int, str], IndexSpec],
) -> tuple[FieldFilter, ...]:
    """Bind range filters to the indexes of ``kind`` (their type decides comparisons), and add equality hints.

    Raises `InvalidQuery` for a range filter without ``kind``, on a field with no index of that kind, or with
    bounds that do not fit the index's type (an int for bigint; int/float/Decimal for numeric; str for text; an
    aware datetime for timestamptz; a bool for boolean).
    """
    bound: list[FieldFilter] = []
    for flt in ranges:
        if kind is None:
            raise InvalidQuery(
                f"the range filter on {flt.field!r} needs kind=K: indexes, and so field types, are per kind"
            )
        spec = indexes.get((kind, flt.field))
        if spec is None:
            raise InvalidQuery(
                f"no index on field {flt.field!r} of kind {kind}: a range filter compares values as the index's "
                f"type; create one first (Datastore.create_index({kind}, {flt.field!r}, type=...), or hv index "
                "create), or filter on equality"
            )
        wanted, described = _BOUND_TYPES[spec.type]
        for op, value in flt.ops:
            if _bound_family(flt.field, op, value) not in wanted:
                raise InvalidQuery(
                    f"where[{flt.field!r}][{op!r}] is {type(value).__name__} {value!r}, but the index on "
                    f"{flt.field!r} of kind {kind} is {spec.type}: compare it with {described}"
                )
        ops = tuple((op, _bound_as(spec.type, value)) for op, value in flt.ops)
        bound.append(FieldFilter(flt.field, ops, kind=kind, type=spec.type))
    if kind is not None and where:
        for name, value in where.items():
            spec = indexes.get((kind, name))
            if spec is not None and isinstance(value, str | int | float):  # bool is an int
                bound.append(FieldFilter(name, (("=", value),), kind=kind, type=spec.type, hint=True))
    return tuple(bound)


# -- reports -------------------------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class IndexReport:
    """What one ``create_index``/``drop_index`` did: shards built, rebuilt (INVALID leftovers), already there."""

    index: IndexSpec
    shards: int = 0  # shards of the datastore whose table lives on a server of it
    built: int = 0
    rebuilt: int = 0  # an interrupted CONCURRENTLY build had left an INVALID index: dropped and built again
    present: int = 0  # already valid: nothing to do
    dropped: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (for ``--json``)."""
        data = {name: getattr(self, name) for name in self.__slots__ if name != "index"}
        return {"index": self.index.as_dict(), **data}


@dataclass(slots=True, kw_only=True)
class IndexInfo:
    """One recorded index and where it is: shards with a valid index, with an INVALID one, without one."""

    index: IndexSpec
    servers: list[str] = field(default_factory=list)  # servers that record the definition
    valid: int = 0
    invalid: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The entry as plain data (for ``--json``)."""
        return {
            "index": self.index.as_dict(),
            "servers": self.servers,
            "valid": self.valid,
            "invalid": self.invalid,
            "missing": self.missing,
        }


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: ``NNNN_name.sql`` holds its version and name; ``checksum`` is the SHA-256 of its bytes."""

    version: int
    name: str
    filename: str
    sql: str
    checksum: str

    @property
    def label(self) -> str:
        """``0002_add_users.sql`` (the file's name)."""
        return self.filename


Migration.__module__ = "hvcore"


@dataclass(slots=True, kw_only=True)
class MigrationRun:
    """One migration file over every shard: shards it was applied to now, shards that already had it."""

    version: int
    name: str
    transactional: bool = True  # False: statements such as CREATE INDEX CONCURRENTLY, run outside a transaction
    applied: int = 0
    already: int = 0
    seconds: float = 0.0
    statements: list[str] = field(default_factory=list)  # filled by a dry run

    def as_dict(self) -> dict[str, Any]:
        """The run as plain data."""
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True, kw_only=True)
class MigrationReport:
    """What one ``migrate`` did (or, with ``dry_run``, would do): per file, shards applied and already current."""

    dry_run: bool = False
    shards: int = 0
    runs: list[MigrationRun] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def applied(self) -> int:
        """Shard transactions applied (or to apply, in a dry run) over every file."""
        return sum(run.applied for run in self.runs)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (for ``--json``)."""
        return {
            "dry_run": self.dry_run,
            "shards": self.shards,
            "applied": self.applied,
            "seconds": round(self.seconds, 3),
            "migrations": [run.as_dict() for run in self.runs],
        }


@dataclass(slots=True, kw_only=True)
class VersionStatus:
    """One migration version across the shards: how many have it, which are behind."""

    version: int
    name: str
    recorded: bool  # in the servers' migration registry (applied, or being applied, somewhere)
    applied: int = 0
    behind: list[int] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class MigrationStatus:
    """Migration versions over every shard: ``behind`` lists shards missing a version, by version."""

    shards: int = 0
    versions: list[VersionStatus] = field(default_factory=list)

    @property
    def shards_behind(self) -> list[int]:
        """Shards missing at least one version."""
        return sorted({shard for v in self.versions for shard in v.behind})

    @property
    def up_to_date(self) -> bool:
        """True when every shard has every version."""
        return not self.shards_behind

    def as_dict(self) -> dict[str, Any]:
        """The status as plain data (for ``--json``)."""
        return {
            "shards": self.shards,
            "up_to_date": self.up_to_date,
            "shards_behind": self.shards_behind,
            "versions": [dataclasses.asdict(v) for v in self.versions],
        }


for _public in (IndexReport, IndexInfo, MigrationRun, MigrationReport, VersionStatus, MigrationStatus):
    _public.__module__ = "hvcore"


def load_migrations(path: str | Path) -> list[Migration]:
    """The migration files of a directory, in version order; `MigrationError` before any SQL for bad files.

    Files are ``NNNN_name.sql`` (at least four digits, version ≥ 1; name of letters, digits, ``_ . -``), UTF-8;
    other ``.sql`` names (``.SQL`` and other cases of the extension too), a version used twice, and a directory
    without migrations are refused; files not ending in ``.sql`` in any case are ignored (a README, say).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise MigrationError(f"migrations directory {str(folder)!r} does not exist or is not a directory")
    found: dict[int, Migration] = {}
    for entry in sorted(folder.iterdir()):
        if entry.suffix.lower() != ".sql" or not entry.is_file():
            continue
        if entry.suffix != ".sql":  # 0002_b.SQL: meant as a migration; skipping it would report success without it
            raise MigrationError(
                f"migration file {entry.name!r} ends in {entry.suffix!r}: migrations end in '.sql' (lower case); "
                f"rename it to {entry.stem + '.sql'!r}"
            )
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match is None or int(match.group(1)) == 0:
            raise MigrationError(
                f"migration file {entry.name!r} is not named NNNN_name.sql (a version ≥ 0001, then letters, digits, "
                "'_', '.' or '-'): rename it, or move it out of the directory"
            )
        version = int(match.group(1))
        if version > BIGINT_MAX:
            raise MigrationError(
                f"migration file {entry.name!r} has version {version}, past the largest one allowed "
                f"({BIGINT_MAX:,}, a PostgreSQL bigint; a YYYYMMDDHHMMSS timestamp fits): renumber it",
                migration=entry.name,
            )
        if version in found:
            raise MigrationError(
                f"migration version {version} is used twice: {found[version].filename} and {entry.name}"
            )
        data = entry.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MigrationError(
                f"migration file {entry.name} is not UTF-8 ({exc.reason} at byte {exc.start})"
            ) from None
        if "\x00" in text:
            raise MigrationError(f"migration file {entry.name} contains a NUL character")
        found[version] = Migration(
            version=version,
            name=match.group(2),
            filename=entry.name,
            sql=text,
            checksum=hashlib.sha256(data).hexdigest(),
        )
    if not found:
        raise MigrationError(f"no migration files (NNNN_name.sql) in {str(folder)!r}")
    return [found[v] for v in sorted(found)]
