"""Sequence tables in shared memory: how the `KeyGenerator`s of a process, and of the processes forked from it,
never repeat an id: every generator of one layout in the process takes its numbers from one table, whatever its
clock and worker slice.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import threading
import weakref
from collections import deque
from collections.abc import Callable, Hashable

from hvcore import _keymaker

__all__ = ["SharedSequenceTable", "process_table"]

_WORD = 8  # bytes per int64
_ENTRY = 2 * _WORD  # per shard and lane: highest millisecond handed out, numbers used in it
_NEVER = -(1 << 62)  # "no shard ran out yet" in a lane's third word
_HOT_MS = _keymaker.HOT_MS
LANES = _keymaker.LANES
"""How many disjoint stretches of time (lanes) a table keeps apart: clocks reading far-apart times each get one."""
LANE_STEP_MS = 1024
"""A lane reaching a millisecond takes this many more with it (and spans a gap up to this long)."""
_LANE_WORDS = 4  # per lane: first millisecond, last millisecond, last run-out millisecond, unused
_HEAD = 4 + LANES * _LANE_WORDS  # words before the entries: floor, lanes in use, 2 unused; then the lanes
_FIRST_UNSET = (1 << 63) - 1  # an unused lane owns no millisecond: first > last
_LAST_UNSET = -(1 << 63)


class SharedSequenceTable:
    """Per shard, the highest millisecond reserved and how many of its numbers are used, shared by every generator
    of a layout in a process (`process_table`) and by the processes forked from it.

    Worker slices: a generator with a worker number reserves in its part of the sequence (`reserve`'s
    ``numbers``), above the highest number of the (shard, millisecond) reserved before, by anyone; a plain
    generator too (its part is all of it). So a slice and the whole sequence, or slices of other bits, never hand
    out one number twice; a slice another generator has passed in a millisecond is used up for it.

    Lanes: generators with different clocks share the table, so that two clocks reading the same time draw
    distinct numbers. Clocks reading far-apart times (a test's fake clock in 2025 beside the system clock) must
    not move each other's shards forward, though: time is cut into lanes, disjoint stretches of milliseconds each
    with its own entry per shard. Every millisecond belongs to at most one lane, for good once claimed (under the
    table's lock); a reservation for a millisecond goes to the lane that owns it, and within a lane numbers only
    move forward. A lane that reaches an unowned millisecond claims `LANE_STEP_MS` more with it (a clock reading
    there later shares that lane's entries), and a millisecond up to `LANE_STEP_MS` past the nearest lane below
    extends that lane; any other starts a new lane. With all `LANES` lanes in use, the nearest lane is stretched
    to it (the milliseconds between are then owned by that lane: a clock reading them is behind its shards'
    newest and goes on from there, as when the clock goes back).

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
    shard of a lane ran out of numbers, the lane's milliseconds start at 0 again (its third word records when).
    `reserve` may be given the caller's own ``spread`` (and ``home``, a fixed start instead of a random one), so
    generators with and without random starts can share one table.
    """

    def __init__(self, shards: int, sequence_size: int, *, floor: int = -1, spread: int = 0) -> None:
        import fcntl  # POSIX only, like fork itself

        if type(shards) is not int or shards < 1:
            from hvcore.errors import ConfigError

            raise ConfigError(f"shards must be an int >= 1, got {shards!r}")

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
        length = _HEAD * _WORD + LANES * shards * _ENTRY  # the header and lanes, then an entry per lane and shard
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
        self._words[1] = 0  # lanes in use
        for lane in range(LANES):
            at = 4 + lane * _LANE_WORDS
            self._words[at] = _FIRST_UNSET
            self._words[at + 1] = _LAST_UNSET
            self._words[at + 2] = _NEVER
        self._finalizer = weakref.finalize(self, _release, self._words, self._map, fd)
        self._users: dict[int, bytearray] = {}  # per live generator: which lanes it used (a byte per lane)
        self._leaving: deque[bytearray] = deque()  # those of generators gone, for the next claim to look at
        self._given_up = [0] * LANES  # per lane, the newest millisecond it had when given up
        _TABLES.add(self)

    def join(self, user: object) -> bytearray:
        """A new user's lane marks (a byte per lane, set when it reserves in the lane): once ``user`` is gone and
        no other live user marked a lane, the lane is given up, as a table is once no generator holds it."""
        mark = bytearray(LANES)
        with self._thread_lock:
            if self._leaving and not self._forked:  # the C fast path would take up a lane of the gone as it is
                self._give_up_lanes()
            self._users[id(mark)] = mark
        weakref.finalize(user, self._leaving.append, mark)  # no lock here: a finalizer runs at any moment
        return mark

    @property
    def atomic(self) -> bool:
        """Whether entries are moved by compare-and-swap (the C extension) rather than under fcntl locks."""
        return self._atomic_reserve is not None

    @property
    def buffer(self) -> mmap.mmap:
        """The shared memory itself (for the C fast path)."""
        return self._map

    def reserve(
        self,
        shard_id: int,
        time_part: int,
        wanted: int,
        *,
        spread: int | None = None,
        home: int = -1,
        user: bytearray | None = None,
        numbers: range | None = None,
    ) -> range:
        """Reserve up to ``wanted`` numbers of ``(shard_id, time_part)``; empty when used up or already passed.

        ``numbers``: the caller's part of the sequence (a worker's slice; default: all of it); what it gets lies
        in it, above every number any caller got for the (shard, millisecond) before. ``spread`` (default: the
        table's) bounds a new millisecond's random first number, counted from ``numbers.start``; ``home`` (``0 ..
        spread``) is that first number instead of a random one (-1: random); ``user``: the caller's marks (`join`).
        """
        if spread is None:
            spread = self.spread
        lo, hi = (0, self.sequence_size) if numbers is None else (numbers.start, numbers.stop)
        if not 0 <= lo < hi <= self.sequence_size or not 0 <= spread < hi - lo or not -1 <= home <= spread:
            raise ValueError(f"numbers {numbers!r}, spread {spread!r} or home {home!r} out of the table's range")
        if type(shard_id) is not int or not 0 <= shard_id < self.shards:
            raise ValueError(f"shard {shard_id!r} out of the shared table's range 0..{self.shards - 1}")
        words = self._words
        if words[4] <= time_part <= words[5] and user is not None and user[0]:
            lane = 0  # the usual case, inline (a marked lane is not given up)
        else:
            lane = self.lane(time_part, claim=True, user=user)
        if self._atomic_reserve is not None:
            return self._atomic_reserve(
                self._map,
                lane,
                self.shards,
                shard_id,
                time_part,
                wanted,
                hi - lo,
                self.used_bits,
                spread,
                home,
                lo,
            )
        with self._thread_lock:
            return self._locked_reserve(lane, shard_id, time_part, max(wanted, 1), spread, home, lo, hi)

    def _locked_reserve(
        self, lane: int, shard_id: int, time_part: int, wanted: int, spread: int, home: int, lo: int, hi: int
    ) -> range:
        words = self._words
        at = _HEAD + 2 * (lane * self.shards + shard_id)
        runout = 6 + lane * _LANE_WORDS
        forked = self._forked
        if forked:
            self._lockf(self._fd, self._ex, _ENTRY, at * _WORD)
        try:
            newest = words[at]
            if time_part <= words[0]:  # milliseconds the process that made the table used before forking
                return range(0)
            if time_part > newest:
                first = lo
                if spread and time_part - words[runout] > _HOT_MS:  # as table_take in hvcore/_speedups.c
                    first = lo + (home if home >= 0 else self._random_below(spread + 1))
                    if first > hi - wanted:  # the block asked for fits
                        first = hi - wanted if hi - wanted > lo else lo
            elif time_part == newest:
                first = max(words[at + 1], lo)  # above every number of the millisecond handed out, to anyone
            else:
                return range(0)
            take = min(wanted, hi - first)
            if take < wanted and spread:
                words[runout] = time_part  # this shard ran out: the lane's next milliseconds start whole
            if take <= 0:
                return range(0)
            words[at] = time_part
            words[at + 1] = first + take
            return range(first, first + take)
        finally:
            if forked:
                self._lockf(self._fd, self._un, _ENTRY, at * _WORD)

    def lane(self, time_part: int, *, claim: bool = False, user: bytearray | None = None) -> int:
        """The lane owning millisecond ``time_part`` (-1: none); ``claim``: give it one if none does (see the class),
        marked as used by ``user``."""
        words = self._words
        for lane in range(words[1]):
            at = 4 + lane * _LANE_WORDS
            if words[at] <= time_part <= words[at + 1]:
                if not claim or (user is not None and user[lane]):  # a lane its user marked is not given up
                    return lane
                break
        else:
            if not claim:
                return -1
        with self._thread_lock:  # found (or claimed) and marked at once: no lane is given up in between
            forked = self._forked
            if forked:  # every claim of every process sharing the table is made under this lock
                self._lockf(self._fd, self._ex, 4 * _WORD, 0)
            try:
                if self._leaving:
                    self._give_up_lanes()
                lane = self._claim_lane(time_part)
                if user is not None:
                    user[lane] = 1
                return lane
            finally:
                if forked:
                    self._lockf(self._fd, self._un, 4 * _WORD, 0)

    def _give_up_lanes(self) -> None:
        """Free the lanes only generators now gone used (under the locks): a clock reading their times later
        starts afresh, as it would in a new table. Never once forked: a child's generators leave no marks here."""
        gone: set[int] = set()
        while self._leaving:
            mark = self._leaving.popleft()
            self._users.pop(id(mark), None)
            gone.update(lane for lane in range(LANES) if mark[lane])
        if self._forked:
            return
        words = self._words
        for lane in sorted(gone):
            if any(mark[lane] for mark in self._users.values()):
                continue
            at = 4 + lane * _LANE_WORDS
            first = words[at]
            words[at] = _FIRST_UNSET  # the C fast path (another thread, between two of these lines) finds it no more
            if any(mark[lane] for mark in self._users.values()):  # it marked the lane before that: keep it
                words[at] = first
                continue
            self._given_up[lane] = max(self._given_up[lane], self._newest_in_lane(lane))
            start = (_HEAD + 2 * lane * self.shards) * _WORD
            self._map[start : start + self.shards * _ENTRY] = bytes(self.shards * _ENTRY)
            words[at + 1] = _LAST_UNSET
            words[at + 2] = _NEVER

    def _claim_lane(self, time_part: int) -> int:
        words = self._words
        used = words[1]
        below = above = free = -1  # the lanes nearest below and above time_part, a lane given up
        for lane in range(used):
            at = 4 + lane * _LANE_WORDS
            first, last = words[at], words[at + 1]
            if first == _FIRST_UNSET:
                free = lane
                continue
            if first <= time_part <= last:
                return lane  # claimed by another thread or process meanwhile
            if last < time_part and (below < 0 or last > words[5 + below * _LANE_WORDS]):
                below = lane
            if first > time_part and (above < 0 or first < words[4 + above * _LANE_WORDS]):
                above = lane
        # Each write below only ever widens what a lane owns, so a reader without the lock (the C fast path, a
        # thread of another process) sees a lane own no more than it does: at worst it comes here.
        ceiling = words[4 + above * _LANE_WORDS] - 1 if above >= 0 else (1 << 62)
        last = min(time_part + LANE_STEP_MS, ceiling)
        if below >= 0 and (time_part - words[5 + below * _LANE_WORDS] <= LANE_STEP_MS or (free < 0 and used == LANES)):
            words[5 + below * _LANE_WORDS] = last
            return below
        if free >= 0 or used < LANES:
            lane = free if free >= 0 else used
            at = 4 + lane * _LANE_WORDS
            words[at + 2] = _NEVER
            words[at + 1] = last
            words[at] = time_part
            words[1] = max(used, lane + 1)
            return lane
        words[4 + above * _LANE_WORDS] = time_part  # every lane in use, none below: the lowest reaches down
        return above

    def newest(self, shard_id: int, time_part: int | None = None) -> int:
        """The newest millisecond (time part) reserved for ``shard_id`` in the lane owning ``time_part`` (-1 if no
        lane does), or in any lane (None; 0 before any)."""
        if time_part is not None:
            words = self._words
            lane = 0 if words[4] <= time_part <= words[5] else self.lane(time_part)  # lane 0 inline: the usual one
            if lane < 0:
                return -1
            word = words[_HEAD + 2 * (lane * self.shards + shard_id)]
            return word >> self.used_bits if self._atomic_reserve is not None else word
        return max([self._newest_in(lane, shard_id) for lane in range(self._words[1])], default=0)

    def newest_above(self, shard_id: int, time_part: int, user: bytearray) -> int:
        """The newest millisecond reserved for ``shard_id`` in the lanes ``user`` marked that lie wholly after
        ``time_part`` (-1: none): where a generator whose clock went back below its lane goes on."""
        words = self._words
        if words[4] <= time_part and user[0] and user.count(1) == 1:
            return -1  # the usual case: the generator used lane 0 only, and it is not after time_part
        newest = -1
        for lane in range(words[1]):
            if user[lane] and words[4 + lane * _LANE_WORDS] > time_part:
                newest = max(newest, self._newest_in(lane, shard_id))
        return newest

    def newest_marked(self, marks: bytearray) -> int:
        """The newest millisecond (time part) reserved for any shard in the lanes ``marks`` (a user's, `join`) says
        were used, even after they were given up (0 before any): what the next holder of a gone generator's worker
        number must start after. Clocks elsewhere (a fake one years ahead) do not hold it back."""
        used = self._words[1]
        newest = [
            max(self._given_up[lane], self._newest_in_lane(lane) if lane < used else 0)
            for lane in range(LANES)
            if marks[lane]
        ]
        return max([0, *newest])

    def _newest_in_lane(self, lane: int) -> int:
        at = _HEAD + 2 * lane * self.shards
        word = max(self._words[at : at + 2 * self.shards : 2])  # packed (ms, used): the largest has the newest ms
        return word >> self.used_bits if self._atomic_reserve is not None else word

    def _newest_in(self, lane: int, shard_id: int) -> int:
        word = self._words[_HEAD + 2 * (lane * self.shards + shard_id)]
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
    """The table of this process for ``key`` (a layout and the numbers used, whatever the clock), made by ``make``
    if no live generator holds one: every generator of one key, in every thread, draws from it, so no two of them
    hand out the same (millisecond, shard, sequence number). A forked child keeps its parent's tables (shared
    memory)."""
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
