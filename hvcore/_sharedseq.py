"""A sequence table in shared memory: how a forked `KeyGenerator` keeps parent and children from repeating ids."""

from __future__ import annotations

import mmap
import os
import tempfile
import weakref

from hvcore import _keymaker

__all__ = ["SharedSequenceTable"]

_WORD = 8  # bytes per int64
_ENTRY = 2 * _WORD  # per shard: highest millisecond handed out, numbers used in it
_NEVER = -(1 << 62)  # "no shard ran out yet" in the header's second word
_HOT_MS = _keymaker.HOT_MS


class SharedSequenceTable:
    """Per shard, the highest millisecond reserved and how many of its numbers are used, shared by forked processes.

    The table lives in a ``MAP_SHARED`` mapping of an anonymous memory file created *before* a fork, so every
    descendant sees the same memory. Each shard's entry is guarded by a POSIX record lock (``fcntl.lockf``) on
    its bytes: record locks are per process, so they exclude other processes (and are released if a process
    dies), while the caller's own threads are kept apart by the generator's per-shard thread locks.

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

    @property
    def atomic(self) -> bool:
        """Whether entries are moved by compare-and-swap (the C extension) rather than under fcntl locks."""
        return self._atomic_reserve is not None

    @property
    def buffer(self) -> mmap.mmap:
        """The shared memory itself (for the C fast path)."""
        return self._map

    def reserve(self, shard_id: int, time_part: int, wanted: int) -> range:
        """Reserve up to ``wanted`` numbers of ``(shard_id, time_part)``; empty when used up or already passed."""
        spread = self.spread
        if self._atomic_reserve is not None:
            return self._atomic_reserve(
                self._map, shard_id, time_part, wanted, self.sequence_size, self.used_bits, spread
            )
        size = self.sequence_size
        words = self._words
        hi = 2 * shard_id + 2
        wanted = max(wanted, 1)
        self._lockf(self._fd, self._ex, _ENTRY, hi * _WORD)
        try:
            newest = words[hi]
            if time_part <= words[0]:  # milliseconds the process that made the table used before forking
                return range(0)
            if time_part > newest:
                used = 0
                if spread and time_part - words[1] > _HOT_MS:  # as table_take in hvcore/_speedups.c
                    used = self._random_below(spread + 1)
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
            self._lockf(self._fd, self._un, _ENTRY, hi * _WORD)

    def after_fork_in_child(self) -> None:
        """Nothing to drop: the mapping and the file are meant to be shared with the child."""

    def close(self) -> None:
        """Unmap the table and close its file (only once no process needs it any more)."""
        self._finalizer()


def _release(words: memoryview, mapping: mmap.mmap, fd: int) -> None:
    words.release()
    mapping.close()
    os.close(fd)
