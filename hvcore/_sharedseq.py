"""Sequence tables in shared memory: how the `KeyGenerator`s of a process, and of the processes forked from it,
never repeat an id: every generator of one layout (and one clock) in the process takes its numbers from one table.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Hashable

from hvcore import _keymaker

__all__ = ["SharedSequenceTable", "process_table"]

_WORD = 8  # bytes per int64
_ENTRY = 2 * _WORD  # per shard: highest millisecond handed out, numbers used in it
_NEVER = -(1 << 62)  # "no shard ran out yet" in the header's second word
_HOT_MS = _keymaker.HOT_MS


class SharedSequenceTable:
    """Per shard, the highest millisecond reserved and how many of its numbers are used, shared by every generator
    of a layout in a process (`process_table`) and by the processes forked from it.

    The table lives in a ``MAP_SHARED`` mapping of an anonymous memory file created *before* a fork, so every
    descendant sees the same memory. The process's own threads are kept apart by a thread lock of the table; once
    a fork shared it, each shard's entry is also guarded by a POSIX record lock (``fcntl.lockf``) on its bytes:
    record locks are per process, so they exclude other processes (and are released if a process dies).

    With the C accelerator (``atomic``), an entry is one word updated by compare-and-swap instead: no lock, no
    system call, and a `KeyGenerator` takes its keys straight from the table (hvcore/_speedups.c). Every process
    sharing a table uses the kind its creator chose, since children inherit the code with the memory.

    It satisfies the `SequenceSource` protocol. ``floor`` is the last millisecond the creating process used on
    its own (every shard, up to and including it, belongs to that process); a reservation for a millisecond up
    to the floor, or older than the newest one reserved for that shard, gets an empty range, so ids only ever
    move forward in the table.

    ``spread``: the first reservation of a (shard, millisecond) starts at a random number in ``0 .. spread``
    (lowered so that the block asked for fits), so two unrelated process trees, each sharing its own table, do
    not hand out the same numbers in step; 0 starts every millisecond at 0. For `HOT_MS` milliseconds after a
    shard of the table ran out of numbers, milliseconds start at 0 again (the header's second word records when).
    `reserve` may be given the caller's own ``spread`` (and ``home``, a fixed start instead of a random one), so
    generators with and without random starts can share one table.
    """

    def __init__(self, shards: int, sequence_size: int, *, floor: int = -1, spread: int = 0) -> None:
        import fcntl  # POSIX only, like fork itself

        self._lockf = fcntl.lockf
        self._ex = fcntl.LOCK_EX
        self._un = fcntl.LOCK_UN
        self.sequence_size = sequence_size
        self.shards = shards
        self.used_bits = sequence_size.bit_length()  # room for 0..sequence_size numbers used
        if type(spread) is not int or not 0 <= spread < sequence_size:
            from hvcore.errors import ConfigError

            raise ConfigError(f"spread must be an int in 0..{sequence_size - 1}, got {spread!r}")
        self.spread = spread
        self._atomic_reserve = _keymaker.table_reserve
        self._random_below = _keymaker.random_below
        self._thread_lock = threading.Lock()  # the locked (pure-Python) kind: this process's threads
        self._forked = False  # until a fork, no other process sees the table: the thread lock is enough
        length = (shards + 1) * _ENTRY  # a header (the floor, the last run-out millisecond), then one entry per shard
        memfd_create = getattr(os, "memfd_create", None)
        if memfd_create is not None:
            fd = memfd_create("hvcore-keys", os.MFD_CLOEXEC)
        else:  # pragma: no cover - macOS and other systems without memfd
            with tempfile.TemporaryFile() as handle:
                fd = os.dup(handle.fileno())
        try:
            os.ftruncate(fd, length)
            self._map = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._words = memoryview(self._map).cast("q")  # zero-filled: millisecond 0, nothing used
        self._words[0] = floor
        self._words[1] = _NEVER
        self._finalizer = weakref.finalize(self, _release, self._words, self._map, fd)
        _TABLES.add(self)

    @property
    def atomic(self) -> bool:
        """Whether entries are moved by compare-and-swap (the C extension) rather than under fcntl locks."""
        return self._atomic_reserve is not None

    @property
    def buffer(self) -> mmap.mmap:
        """The shared memory itself (for the C fast path)."""
        return self._map

    def reserve(
        self, shard_id: int, time_part: int, wanted: int, *, spread: int | None = None, home: int = -1
    ) -> range:
        """Reserve up to ``wanted`` numbers of ``(shard_id, time_part)``; empty when used up or already passed.

        ``spread`` (default: the table's) bounds a new millisecond's random first number; ``home`` (``0 ..
        spread``) is that first number instead of a random one (-1: random).
        """
        if spread is None:
            spread = self.spread
        if self._atomic_reserve is not None:
            return self._atomic_reserve(
                self._map, shard_id, time_part, wanted, self.sequence_size, self.used_bits, spread, home
            )
        with self._thread_lock:
            return self._locked_reserve(shard_id, time_part, max(wanted, 1), spread, home)

    def _locked_reserve(self, shard_id: int, time_part: int, wanted: int, spread: int, home: int) -> range:
        size = self.sequence_size
        words = self._words
        hi = 2 * shard_id + 2
        forked = self._forked
        if forked:
            self._lockf(self._fd, self._ex, _ENTRY, hi * _WORD)
        try:
            newest = words[hi]
            if time_part <= words[0]:  # milliseconds the process that made the table used before forking
                return range(0)
            if time_part > newest:
                used = 0
                if spread and time_part - words[1] > _HOT_MS:  # as table_take in hvcore/_speedups.c
                    used = home if home >= 0 else self._random_below(spread + 1)
                    if used > size - wanted:  # the block asked for fits
                        used = size - wanted if size > wanted else 0
            elif time_part == newest:
                used = words[hi + 1]
            else:
                return range(0)
            take = min(wanted, size - used)
            if take < wanted and spread:
                words[1] = time_part  # this shard ran out: the next milliseconds start whole
            if take <= 0:
                return range(0)
            words[hi] = time_part
            words[hi + 1] = used + take
            return range(used, used + take)
        finally:
            if forked:
                self._lockf(self._fd, self._un, _ENTRY, hi * _WORD)

    def newest(self, shard_id: int) -> int:
        """The newest millisecond (time part) reserved for ``shard_id`` (0 before any)."""
        word = self._words[2 * shard_id + 2]
        return word >> self.used_bits if self._atomic_reserve is not None else word

    def after_fork_in_child(self) -> None:
        """Nothing to drop: the mapping and the file are meant to be shared with the child (whose thread lock
        `_after_fork_in_child` makes anew)."""

    def close(self) -> None:
        """Unmap the table and close its file (only once no process needs it any more)."""
        self._finalizer()


def _release(words: memoryview, mapping: mmap.mmap, fd: int) -> None:
    words.release()
    mapping.close()
    os.close(fd)


_TABLES: weakref.WeakSet[SharedSequenceTable] = weakref.WeakSet()
_registry: weakref.WeakValueDictionary[Hashable, SharedSequenceTable] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


def process_table(key: Hashable, make: Callable[[], SharedSequenceTable]) -> SharedSequenceTable:
    """The table of this process for ``key`` (a layout, the numbers used, the clock), made by ``make`` if no live
    generator holds one: every generator of one key, in every thread, draws from it, so no two of them hand out
    the same (millisecond, shard, sequence number). A forked child keeps its parent's tables (shared memory)."""
    with _registry_lock:
        table = _registry.get(key)
        if table is None:
            table = _registry[key] = make()
        return table


def _before_fork() -> None:
    for table in list(_TABLES):
        with table._thread_lock:  # no reservation of this process is half done while the flag changes
            table._forked = True  # parent and child alike: another process may reserve from now on


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for table in list(_TABLES):
        table._thread_lock = threading.Lock()  # a parent's thread may have held it; the fcntl lock still guards


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
