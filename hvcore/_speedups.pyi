"""Type stub of the optional C accelerator (hvcore/_speedups.c)."""

from typing import Any, TypeVar

from hvcore._key import Key

K = TypeVar("K", bound=Key)

DIRECT: int

def make_key(cls: type[K], value: int, /) -> K:
    """An instance of the int subclass ``cls`` equal to ``value``."""

def make_keys(cls: type[K], start: int, count: int, /) -> list[K]:
    """``count`` instances of the int subclass ``cls``, equal to start, start + 1, ..."""

def next_local(cur: tuple[Any, ...], shard_id: int, size: int, /) -> Key | None:
    """KeyGenerator.next_key's local-mode fast path: a key, or None when the Python code must take over."""
