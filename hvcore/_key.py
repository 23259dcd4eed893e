"""The 64-bit key: its bit layout (`KeyLayout`) and the value type (`Key`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, ClassVar

from hvcore._show import show_value
from hvcore.errors import ConfigError, InvalidKey, InvalidShard, LayoutExhausted

__all__ = ["Key", "KeyLayout", "check_shard_id"]

_UNIX_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MAX_ID = 2**63 - 1  # largest positive signed bigint


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyLayout:
    """How a 64-bit id splits into time, shard and sequence bits, and the epoch its time counts from.

    Only ids in ``0 .. 2**63 - 1`` are made or accepted, so every key fits PostgreSQL's signed ``bigint``.
    """

    epoch_ms: int
    time_bits: int = 41
    shard_bits: int = 13
    sequence_bits: int = 10

    HYPERVAULT: ClassVar[KeyLayout]
    DEFAULT: ClassVar[KeyLayout]

    def __post_init__(self) -> None:
        for name in ("epoch_ms", "time_bits", "shard_bits", "sequence_bits"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ConfigError(f"KeyLayout.{name} must be a non-negative int, got {value!r}")
        total = self.time_bits + self.shard_bits + self.sequence_bits
        if total != 64:
            raise ConfigError(
                f"KeyLayout bits must add up to 64, got {self.time_bits}+{self.shard_bits}+{self.sequence_bits}={total}"
            )
        if self.shard_bits < 1 or self.sequence_bits < 1 or self.time_bits < 2:
            raise ConfigError("KeyLayout needs at least 2 time bits, 1 shard bit and 1 sequence bit")

    @property
    def shard_shift(self) -> int:
        """Bit position of the shard part."""
        return self.sequence_bits

    @property
    def time_shift(self) -> int:
        """Bit position of the time part."""
        return self.sequence_bits + self.shard_bits

    @property
    def max_shard_id(self) -> int:
        """Largest shard id (8191 for 13 shard bits)."""
        return (1 << self.shard_bits) - 1

    @property
    def sequence_size(self) -> int:
        """Ids per shard per millisecond (1024 for 10 sequence bits)."""
        return 1 << self.sequence_bits

    @property
    def max_time_part(self) -> int:
        """Largest time part (ms since the epoch) that keeps the id a positive signed 64-bit int."""
        return _MAX_ID >> self.time_shift

    @property
    def last_timestamp_ms(self) -> int:
        """Unix time in ms of the last millisecond this layout can encode."""
        return self.epoch_ms + self.max_time_part

    @property
    def exhausted_at(self) -> dt.datetime:
        """UTC moment after which this layout can make no more positive ids."""
        return _UNIX_EPOCH + dt.timedelta(milliseconds=self.last_timestamp_ms + 1)

    @property
    def key_type(self) -> type[Key]:
        """The `Key` class whose instances decode with this layout."""
        return _key_type_for(self)

    def key(self, value: object) -> Key:
        """Decode an int id with this layout (same checks as ``Key(value)``)."""
        return self.key_type(value)

    def compose(self, time_part: int, shard_id: int, sequence: int) -> int:
        """Pack already validated parts into an int id; raise `LayoutExhausted` past the sign bit."""
        if time_part > self.max_time_part:
            raise LayoutExhausted(
                f"the time part {time_part} ms exceeds {self.max_time_part} ms: ids of this layout would turn "
                f"negative after {self.exhausted_at.isoformat()}; move to a layout with a later epoch"
            )
        return (time_part << self.time_shift) | (shard_id << self.shard_shift) | sequence


KeyLayout.__module__ = "hvcore"  # set after @dataclass, which resolves string annotations in __module__
KeyLayout.HYPERVAULT = KeyLayout(epoch_ms=1379365531352)  # 2013-09-16 21:05:31.352 UTC, the 2015 library's
KeyLayout.DEFAULT = KeyLayout(epoch_ms=1704067200000)  # 2024-01-01 00:00:00 UTC; exhausted 2058-11-03


def check_shard_id(shard_id: object, layout: KeyLayout) -> int:
    """Return ``shard_id`` if it is an int in the layout's range, else raise `InvalidShard`."""
    if type(shard_id) is int or (isinstance(shard_id, int) and not isinstance(shard_id, bool)):
        value = int(shard_id)
        if 0 <= value <= layout.max_shard_id:
            return value
        raise InvalidShard(f"shard id {show_value(value)} is out of range: expected 0..{layout.max_shard_id}")
    hint = ""
    if isinstance(shard_id, str) and shard_id.strip().isdigit():
        hint = f" (convert it first: int({shard_id!r}))"
    elif isinstance(shard_id, float):
        hint = " (a float is never rounded to a shard)"
    raise InvalidShard(
        f"shard id must be an int in 0..{layout.max_shard_id}, "
        f"got {type(shard_id).__name__} {show_value(shard_id)}{hint}"
    )


class Key(int):
    """A 64-bit id: time, shard and sequence packed into an ``int``.

    Hashes, orders and compares like the int it is (and never equals a string). The parts decode with the
    class's layout: ``Key`` itself uses `KeyLayout.DEFAULT`; ``KeyLayout.HYPERVAULT.key_type`` decodes the 2015
    library's ids.
    """

    __slots__ = ()
    __module__ = "hvcore"
    layout: ClassVar[KeyLayout] = KeyLayout.DEFAULT

    def __new__(cls, value: object) -> Key:
        """Wrap an int id, rejecting bools, floats, strings and anything outside 0..2**63-1."""
        if type(value) is not int and not (isinstance(value, int) and not isinstance(value, bool)):
            if isinstance(value, str):
                raise InvalidKey(f"Key() takes an int, got the string {value!r}: use Key.parse() for strings")
            raise InvalidKey(f"Key() takes an int in 0..{_MAX_ID}, got {type(value).__name__} {show_value(value)}")
        number = int(value)
        if not 0 <= number <= _MAX_ID:
            raise InvalidKey(
                f"key {show_value(number)} is out of range: expected 0..{_MAX_ID} (a positive signed 64-bit int)"
            )
        return int.__new__(cls, number)

    @classmethod
    def parse(cls, text: str) -> Key:
        """Read a key from its decimal string form (as sent to JSON/JavaScript clients); surrounding whitespace
        (a newline pasted with it) is ignored; anything else than ASCII digits is `InvalidKey`."""
        if not isinstance(text, str):
            raise InvalidKey(f"Key.parse() takes a str, got {type(text).__name__} {show_value(text)}")
        stripped = text.strip()
        if not stripped.isdigit() or not stripped.isascii():
            raise InvalidKey(
                f"not a decimal key: {show_value(text)} (expected digits only, 0..{_MAX_ID}; surrounding "
                "whitespace is ignored)"
            )
        if len(stripped.lstrip("0")) > len(str(_MAX_ID)):
            raise InvalidKey(f"key {show_value(text)} is out of range: expected 0..{_MAX_ID}")
        return cls(int(stripped))

    @classmethod
    def from_parts(
        cls,
        *,
        shard_id: int,
        added_id: int,
        timestamp_ms: int | None = None,
        created: dt.datetime | None = None,
    ) -> Key:
        """Build a key from its time (Unix ms or an aware datetime), shard and sequence."""
        layout = cls.layout
        if (timestamp_ms is None) == (created is None):
            raise InvalidKey("give exactly one of timestamp_ms= or created=")
        if created is not None:
            if not isinstance(created, dt.datetime) or created.tzinfo is None:
                raise InvalidKey(f"created must be an aware datetime, got {created!r}")
            timestamp_ms = (created - _UNIX_EPOCH) // dt.timedelta(milliseconds=1)
        if type(timestamp_ms) is not int:
            raise InvalidKey(f"timestamp_ms must be an int (Unix ms), got {show_value(timestamp_ms)}")
        time_part = timestamp_ms - layout.epoch_ms
        if not 0 <= time_part <= layout.max_time_part:
            first = _UNIX_EPOCH + dt.timedelta(milliseconds=layout.epoch_ms)
            raise InvalidKey(
                f"time {show_value(timestamp_ms)} ms is outside this layout: expected {layout.epoch_ms}.."
                f"{layout.last_timestamp_ms} (Unix ms, {first.isoformat()} .. {layout.exhausted_at.isoformat()})"
            )
        try:
            shard = check_shard_id(shard_id, layout)
        except InvalidShard as exc:
            raise InvalidKey(str(exc)) from None
        if type(added_id) is not int or not 0 <= added_id < layout.sequence_size:
            raise InvalidKey(
                f"added_id {show_value(added_id)} is out of range: expected an int in 0..{layout.sequence_size - 1}"
            )
        return int.__new__(cls, layout.compose(time_part, shard, added_id))

    @classmethod
    def bounds(cls, *, timestamp_ms: int, shard_id: int | None = None) -> tuple[Key, Key]:
        """Smallest and largest key of one millisecond (of one shard, or of all shards when ``shard_id`` is None)."""
        layout = cls.layout
        if shard_id is None:
            low = cls.from_parts(timestamp_ms=timestamp_ms, shard_id=0, added_id=0)
            high = cls.from_parts(timestamp_ms=timestamp_ms, shard_id=layout.max_shard_id, added_id=0)
        else:
            low = cls.from_parts(timestamp_ms=timestamp_ms, shard_id=shard_id, added_id=0)
            high = low
        return low, int.__new__(cls, high | (layout.sequence_size - 1))

    @property
    def time_part(self) -> int:
        """Milliseconds since the layout's epoch."""
        return int(self) >> self.layout.time_shift

    @property
    def timestamp_ms(self) -> int:
        """Unix time of creation in milliseconds."""
        return self.time_part + self.layout.epoch_ms

    @property
    def created(self) -> dt.datetime:
        """Creation time as an aware UTC datetime (millisecond precision)."""
        return _UNIX_EPOCH + dt.timedelta(milliseconds=self.timestamp_ms)

    @property
    def shard_id(self) -> int:
        """Logical shard the key was made for."""
        layout = self.layout
        return (int(self) >> layout.shard_shift) & layout.max_shard_id

    @property
    def added_id(self) -> int:
        """The sequence number within its shard and millisecond."""
        return int(self) & (self.layout.sequence_size - 1)

    def to_json(self) -> str:
        """The decimal string form, safe for JavaScript (whose numbers lose precision above 2**53)."""
        return int.__repr__(self)

    def as_dict(self) -> dict[str, Any]:
        """The decoded parts, JSON-ready (id as a string, created as ISO 8601 UTC)."""
        return {
            "id": self.to_json(),
            "created": self.created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "shard_id": self.shard_id,
            "added_id": self.added_id,
            "timestamp_ms": self.timestamp_ms,
        }

    def __repr__(self) -> str:
        return f"Key({int.__repr__(self)})"

    def __str__(self) -> str:
        return int.__repr__(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_key, (self.layout, int(self)))

    def __format__(self, spec: str) -> str:
        return int.__format__(int(self), spec)


_KEY_TYPES: dict[KeyLayout, type[Key]] = {KeyLayout.DEFAULT: Key}


def _key_type_for(layout: KeyLayout) -> type[Key]:
    key_type = _KEY_TYPES.get(layout)
    if key_type is None:
        key_type = type("Key", (Key,), {"__slots__": (), "__module__": "hvcore", "layout": layout})
        key_type = _KEY_TYPES.setdefault(layout, key_type)
    return key_type


def _rebuild_key(layout: KeyLayout, value: int) -> Key:
    return _key_type_for(layout)(value)
