"""Making Key objects fast: the C accelerator ``hvcore._speedups`` when it was built, else its pure-Python twin."""

from __future__ import annotations

import os
from collections.abc import Callable
from itertools import repeat
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from hvcore._key import Key

__all__ = ["ACCELERATED", "make_key", "make_keys", "next_local", "shared_next", "table_reserve"]

K = TypeVar("K", bound="Key")

_new = int.__new__

if TYPE_CHECKING:

    def make_key(cls: type[K], value: int, /) -> K:
        """An instance of ``cls`` equal to ``value`` (no range check: the generator made the value)."""

else:
    make_key = _new  # itself, not wrapped: a Python wrapper would cost a call per key


def make_keys(cls: type[K], start: int, count: int, /) -> list[K]:
    """``count`` instances of ``cls`` equal to ``start, start + 1, ...``."""
    return list(map(_new, repeat(cls, count), range(start, start + count)))


next_local: Callable[[tuple[Any, ...], int, int], Key | None] | None = None
"""KeyGenerator.next_key's local-mode fast path in C (None without the accelerator: the Python code does it all)."""

shared_next: Callable[[tuple[Any, ...], int, int], Any] | None = None
"""The generator's fast path on the shared table after fork (None without the accelerator)."""

table_reserve: Callable[[Any, int, int, int, int, int], range] | None = None
"""Lock-free reservation in the shared table after fork (None without the accelerator: fcntl locks then)."""

ACCELERATED = False
"""Whether keys are made by the C accelerator (built at install time when a C compiler is present)."""

# HYPERVAULT_PURE_PYTHON=1 keeps the pure-Python functions (to compare the two, or to rule the C code out).
if os.environ.get("HYPERVAULT_PURE_PYTHON", "") in ("", "0"):
    try:
        from hvcore import _speedups
    except ImportError:  # built without a C compiler: the same keys, made more slowly
        pass
    else:
        make_key = _speedups.make_key
        make_keys = _speedups.make_keys
        next_local = _speedups.next_local
        shared_next = _speedups.shared_next
        table_reserve = _speedups.table_reserve
        ACCELERATED = True
