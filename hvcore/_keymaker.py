"""Making Key objects fast: the C accelerator ``hvcore._speedups`` when it was built, else its pure-Python twin."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable
from itertools import repeat
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from hvcore._key import Key

__all__ = [
    "ACCELERATED",
    "HOT_MS",
    "LANES",
    "make_key",
    "make_keys",
    "random_below",
    "seed_random",
    "shared_next",
    "table_reserve",
]

HOT_MS = 10
"""Milliseconds after a shard ran out of numbers during which every millisecond starts at number 0."""

LANES = 32
"""Disjoint stretches of time a sequence table keeps apart (hvcore/_sharedseq.py; the C code's HV_LANES)."""

_rng = random.Random()  # the pure-Python build's random starts (reseeded below, as the C one is)

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


def seed_random(seed: int, /) -> None:
    """Reseed this process's generator of random starting points (``seed`` taken modulo 2**64)."""
    _rng.seed(seed & ((1 << 64) - 1))


def random_below(bound: int, /) -> int:
    """A random number in ``0 .. bound - 1`` (``bound`` in 1..2**32): the random starting point of a millisecond."""
    return int(_rng.random() * bound)


shared_next: Callable[[tuple[Any, ...], int, int], Any] | None = None
"""The generator's fast path on its sequence table (None without the accelerator: the Python code does it all)."""

table_reserve: Callable[[Any, int, int, int, int, int, int, int, int, int, int], range] | None = None
"""Lock-free reservation in a sequence table (None without the accelerator: locks then)."""

ACCELERATED = False
"""Whether keys are made by the C accelerator (built at install time when a C compiler is present)."""

# HYPERVAULT_PURE_PYTHON=1 keeps the pure-Python functions (to compare the two, or to rule the C code out).
if os.environ.get("HYPERVAULT_PURE_PYTHON", "") in ("", "0"):
    _accelerator: Any = None
    with contextlib.suppress(ImportError):  # built without a C compiler: the same keys, made more slowly
        from hvcore import _speedups as _accelerator
    if _accelerator is not None and (
        getattr(_accelerator, "LANES", None) != LANES or getattr(_accelerator, "SLICES", None) != 1
    ):
        _accelerator = None  # a stale build, for another table layout: the pure-Python code, which agrees with itself
    if _accelerator is not None:
        make_key = _accelerator.make_key
        make_keys = _accelerator.make_keys
        shared_next = _accelerator.shared_next
        table_reserve = _accelerator.table_reserve
        seed_random = _accelerator.seed_random
        random_below = _accelerator.random_below
        ACCELERATED = True
        assert _accelerator.HOT_MS == HOT_MS


def _reseed() -> None:
    """A fresh seed from the OS: at import, and in every child after ``fork()`` (else parent and child, or two
    children, would draw the same starting points)."""
    seed_random(int.from_bytes(os.urandom(8), "little"))


_reseed()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)
