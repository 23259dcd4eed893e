"""Type stub of the optional C accelerator (hvcore/_speedups.c)."""

from typing import Any, TypeVar

from hvcore._key import Key

K = TypeVar("K", bound=Key)

DIRECT: int
HOT_MS: int
LANES: int
SLICES: int

def make_key(cls: type[K], value: int, /) -> K:
    """An instance of the int subclass ``cls`` equal to ``value``."""

def make_keys(cls: type[K], start: int, count: int, /) -> list[K]:
    """``count`` instances of the int subclass ``cls``, equal to start, start + 1, ..."""

def table_reserve(
    table: Any,
    lane: int,
    shards: int,
    shard_id: int,
    time_part: int,
    wanted: int,
    size: int,
    used_bits: int,
    spread: int,
    home: int = -1,
    offset: int = 0,
    /,
) -> range:
    """Reserve up to ``wanted`` numbers of (shard_id, time_part) in ``offset .. offset + size - 1``, above every
    number of the millisecond reserved before, in lane ``lane`` of a sequence table, lock-free; ``home`` (>= 0)
    starts a new millisecond there (from ``offset``) instead of at a random number."""

def shared_next(shared: tuple[Any, ...], shard_id: int, n: int, /) -> Any:
    """Keys straight from the shared table (a Key for n == 0, else a list), or None for the Python code."""

def seed_random(seed: int, /) -> None:
    """Reseed this process's generator of random starting points."""

def random_below(bound: int, /) -> int:
    """A random int in ``0 .. bound - 1`` (``bound`` in 1..2**32), from this process's splitmix64 state."""
