"""Key generators: unique, increasing 64-bit keys per shard, made in the client without a round trip.

`KeyGenerator` and `AsyncKeyGenerator` (hvcore/_agenerator.py) share one implementation, `_GeneratorBase`: every
decision is made there (`_step` says what to do next: done, reserve a block, or wait; `_pauses` how to wait;
`_install` takes a reserved block). Each class adds only its slow-path loop, `_fill`, which carries those out
with ``time.sleep`` and a thread lock, or with ``asyncio.sleep``, an asyncio lock and an awaited source; the sync
loop is the async one without ``async``/``await`` (checked by a test, as psycopg checks its generated sync code).
`KeyGenerator` adds an inlined fast path for its hot call (and the C accelerator's).
"""

from __future__ import annotations

import contextlib
import inspect
import operator
import os
import struct
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from itertools import count, islice
from typing import Any, Final, NamedTuple

from hvcore import _keymaker
from hvcore._config import parse_layout, redact_conninfo
from hvcore._key import Key, KeyLayout, check_shard_id
from hvcore._keymaker import make_key as _make_key
from hvcore._keymaker import make_keys as _make_keys
from hvcore._keymaker import shared_next as _shared_next
from hvcore._sequence import SequenceSource
from hvcore._sharedseq import SharedSequenceTable, process_table
from hvcore._worker import WorkerGrant, WorkerSlice, _Claim, claim_numbers, release_numbers
from hvcore.errors import ClockMovedBackwards, ConfigError, HypervaultError, InvalidArgument, InvalidShard

__all__ = ["KeyGenerator"]

if _shared_next is not None:
    _fast_shared = _shared_next  # bound once, without the Optional, for KeyGenerator's fast paths

_NS_PER_MS: Final = 1_000_000
_SPIN_NS: Final = 200_000  # the last part of a wait for the next millisecond only yields the GIL
_consume: Callable[[Iterator[int]], None] = deque[int](maxlen=0).extend  # drains an iterator in C
_DEAD: Final[Iterator[int]] = count()  # the counter of states whose limit rejects every number
_AGAIN: Final = 0  # _step results besides None (done), a _Reserve, or a clock reading (ns) to wait for
_HEADROOM: Final = 16  # a random start stays below size - size/16: a millisecond keeps room for 64 more ids

# How ids are made, and why no two threads, generators or forked processes ever make the same one:
#
# Every generator without a sequence source takes its numbers from its process's sequence table for its layout,
# whatever its clock and worker slice (hvcore/_sharedseq.py: `process_table`): one table per layout, a worker taking
# numbers in its slice above every number of the (shard, millisecond) anyone got before; shared by every generator
# of the process and, as shared memory, by the processes forked from it. Per lane (a
# stretch of time: clocks reading far-apart times use different lanes) and shard the table keeps the newest
# millisecond handed out and how many of its numbers are used; a reservation moves that forward atomically (a
# compare-and-swap in C, else under a thread lock and an fcntl record lock), so every (shard, ms, sequence) is
# handed out once, whichever generator, thread, process or clock asks. With the C accelerator next_key takes
# its key straight from the table (`shared_next`); otherwise a generator caches blocks of numbers per shard.
#
# Block mode (all generators). Each shard has a state (end_ns, counter, base, limit), replaced whole under the
# shard's lock: ids are base + n for n drawn from the counter while n < limit and the clock is before end_ns. The
# numbers come in blocks from the table or from the sequence source.
#
# Random start (the default with the system clock): the first reservation of each (shard, millisecond) starts at
# a random number in 0..spread (spread = size - size/16 - 1), or at the generator's home (start_each_ms_at), so
# independent processes sharing a shard do not hand out 0, 1, 2, ... in step. For HOT_MS ms after a shard ran out
# of numbers, milliseconds start at 0 again, so a process that needs the whole sequence gets it.
_State = tuple[int, Iterator[int], int, int]


class _Reserve(NamedTuple):
    """A block to reserve from the sequence source, for the shard whose state is ``state``."""

    state: _State
    time_part: int
    wanted: int


def _sequence_source(sequence: object, layout: KeyLayout, *, asyncio: bool) -> tuple[Any, bool]:
    """The sequence source for ``sequence`` (None, a source object or a URL) and whether the generator made it.

    A URL goes to the sequence plugin registered for its scheme, exactly as ``Datastore(sequence=...)`` does.
    """
    if sequence is None:
        return None, False
    if isinstance(sequence, str):
        if "://" not in sequence:
            raise ConfigError(
                f"sequence must be a URL such as 'redis://127.0.0.1:6379/0' or a SequenceSource, got the string "
                f"{redact_conninfo(sequence)!r}"
            )
        from hvcore._plugins import default_registry  # the registry loads plugins: only when a URL is given

        factory = default_registry().sequence(sequence.split("://", 1)[0])
        return factory(sequence, asyncio=asyncio, layout=layout), True
    reserve = getattr(sequence, "reserve", None)
    if not all(callable(getattr(sequence, name, None)) for name in ("reserve", "after_fork_in_child", "close")):
        raise ConfigError(
            "sequence must be a SequenceSource (an object with reserve(), after_fork_in_child() and close()) or a "
            f"URL such as 'redis://127.0.0.1:6379/0', got {type(sequence).__name__}"
        )
    if not asyncio and inspect.iscoroutinefunction(reserve):
        raise ConfigError(f"{sequence!r} is an asynchronous sequence source: use AsyncKeyGenerator")
    size = getattr(sequence, "sequence_size", None)
    if type(size) is int and size != layout.sequence_size:
        raise ConfigError(
            f"the sequence source hands out numbers below {size}, but the layout has {layout.sequence_size} per "
            "shard and millisecond: make the source for the same layout"
        )
    return sequence, False


def check_layout_now(layout: KeyLayout, now_ms: int) -> None:
    """`ConfigError` if ``layout`` can make no key at Unix time ``now_ms``: its epoch is ahead, or it ran out.

    Checked when a generator on the system clock is built (a `Datastore` builds one), so a layout of the wrong
    epoch is refused before any SQL instead of at the first put (as ClockMovedBackwards or LayoutExhausted).
    """
    if now_ms < layout.epoch_ms:
        raise ConfigError(
            f"the layout's epoch {layout.epoch_ms} ms (Unix) is ahead of the clock ({now_ms} ms): no key can be made "
            "before it; an epoch is a past moment in Unix ms (layout='default' is 2024-01-01, 1704067200000)"
        )
    if now_ms > layout.last_timestamp_ms:
        raise ConfigError(
            f"the layout with epoch {layout.epoch_ms} ms (Unix) ran out of ids at {layout.exhausted_at.isoformat()}: "
            "choose a later epoch, e.g. layout='default' (2024-01-01, lasts until 2058)"
        )


class _GeneratorBase:
    """State and logic shared by `KeyGenerator` and `AsyncKeyGenerator`: they only add the waiting and the I/O."""

    __slots__ = (
        "__weakref__",
        "_claim",
        "_closed",
        "_custom_clock",
        "_epoch_ns",
        "_floor",
        "_grant",
        "_hi",
        "_home",
        "_key_type",
        "_lock",
        "_locks",
        "_marks",
        "_max_back_ns",
        "_max_time",
        "_now_ns",
        "_numbers",
        "_offset",
        "_owns_source",
        "_sbits",
        "_shards",
        "_shared",
        "_size",
        "_source",
        "_spread",
        "_states",
        "_time_shift",
        "_want",
        "block_size",
        "layout",
        "max_backwards_ms",
        "random_start",
        "sequence",
        "worker",
    )

    def __init__(
        self,
        layout: KeyLayout | str | int,
        sequence: object,
        worker: WorkerSlice | WorkerGrant | None,
        random_start: bool | None,
        clock: Callable[[], int] | None,
        max_backwards_ms: int,
        block_size: int,
        *,
        asyncio: bool,
    ) -> None:
        if not getattr(sys, "_is_gil_enabled", lambda: True)():
            # Every step of the lock-free fast paths is atomic only under the GIL (free-threaded 3.13 makes no
            # such promise for itertools.count, for one). Importing the C accelerator turns the GIL back on.
            raise HypervaultError(
                "this free-threaded Python runs without the GIL, and the key generator's lock-free paths rely on "
                "it: run with PYTHON_GIL=1 (or -X gil=1), or install hypervault with a C compiler so that its "
                "accelerator is built (importing it turns the GIL on)"
            )
        # Every option is checked before anything is made (a claim, a source): a refused generator leaves nothing.
        layout = parse_layout(layout)  # a KeyLayout, "default"/"hypervault", or an epoch in Unix ms: as Datastore
        if type(max_backwards_ms) is not int or max_backwards_ms < 0:
            raise ConfigError(f"max_backwards_ms must be an int >= 0, got {max_backwards_ms!r}")
        size = layout.sequence_size
        if type(block_size) is not int or block_size < 1:
            raise ConfigError(f"block_size must be an int >= 1, got {block_size!r}")
        block_size = min(block_size, size)  # no block is larger than a millisecond's sequence
        if clock is not None and not callable(clock):
            raise ConfigError(f"clock must be a callable returning Unix time in ms, got {clock!r}")
        if random_start is not None and type(random_start) is not bool:
            raise ConfigError(f"random_start must be True, False or None (automatic), got {random_start!r}")
        grant = worker if isinstance(worker, WorkerGrant) else None
        slice_ = grant.worker if grant is not None else worker
        if slice_ is not None and not isinstance(slice_, WorkerSlice):
            raise ConfigError(
                "worker must be a WorkerSlice (a fixed worker number) or a WorkerGrant (a leased one, e.g. "
                f"hvbackend_postgres.lease_worker(...)), got {type(worker).__name__}"
            )
        if slice_ is not None and sequence is not None:
            raise ConfigError(
                "worker and sequence are two ways of sharing a shard's sequence between processes: give one, not "
                "both (a sequence source already hands out every number once)"
            )
        if random_start and (slice_ is not None or sequence is not None):
            raise ConfigError(
                "random_start=True applies to the in-process sequence only: a worker slice or a sequence source "
                "makes every number once already (leave random_start unset)"
            )
        numbers = slice_.numbers(layout) if slice_ is not None else range(size)
        if random_start is None:
            random_start = clock is None and slice_ is None and sequence is None
        self.layout = layout
        self.max_backwards_ms = max_backwards_ms
        self.block_size = block_size
        self.random_start = random_start
        self.worker = worker
        self._key_type = layout.key_type
        self._size = len(numbers)
        self._offset = numbers.start
        self._numbers = numbers  # the sequence numbers this generator's keys use (a worker's slice, or all)
        self._spread = self._size - self._size // _HEADROOM - 1 if random_start else 0
        self._home: int | None = None  # where each millisecond starts instead of a random number (start_each_ms_at)
        self._shards = layout.max_shard_id + 1
        self._sbits = [shard << layout.shard_shift for shard in range(self._shards)]  # numbers come absolute
        self._time_shift = layout.time_shift
        self._max_time = layout.max_time_part
        self._hi = self._max_time  # the last millisecond keys may use (a worker lease's horizon, -1 when closed)
        self._epoch_ns = layout.epoch_ms * _NS_PER_MS
        self._max_back_ns = (max_backwards_ms + 1) * _NS_PER_MS
        self._custom_clock = clock is not None
        if clock is None:
            self._now_ns: Callable[[], int] = time.time_ns
        else:
            ms_clock = clock
            # Half a millisecond in: never a cached small int, so each reading is a distinct object.
            self._now_ns = lambda: _clock_ms(ms_clock) * _NS_PER_MS + _NS_PER_MS // 2
        if not self._custom_clock:  # the system clock: a layout that cannot make a key now is refused here
            check_layout_now(layout, time.time_ns() // _NS_PER_MS)
        self._floor = -1  # milliseconds up to this one are not ours to use (set by a fork or a worker lease)
        self._want = [block_size] * self._shards
        self._locks: dict[int, Any] = {}
        self._lock = threading.Lock()  # the worker grant's changes; fork hooks
        self._closed = False
        self._shared: tuple[Any, ...] | None = None  # set when keys come straight from a lock-free table (C)
        self._states: list[_State] = self._fresh_states()
        self._grant = grant
        self.sequence: Any = None
        self._owns_source = False
        self._source: Any = None
        if sequence is not None:
            self.sequence, self._owns_source = _sequence_source(sequence, layout, asyncio=asyncio)
            self._source = self.sequence
        else:
            self._source = self._process_table()
        self._marks = self._source.join(self) if self.sequence is None else bytearray(_keymaker.LANES)
        self._claim: _Claim | None = None
        if slice_ is not None:
            scope = grant._claim_scope if grant is not None else ""
            self._claim = claim_numbers(scope, numbers, self, f"worker {slice_.id} of {slice_.workers}")
            self._claim.table = (self._source, layout.epoch_ms, self._marks)
            self._floor = max(self._floor, self._claim.last_used_ms() - layout.epoch_ms)
        if self.sequence is None and self._source.atomic:
            self._shared = self._shared_params((self._now_ns, self._key_type, self._source.buffer, b""), self._hi)
        if grant is not None:
            self._floor = max(self._floor, grant.floor_ms - layout.epoch_ms)
            grant._follow(self)
            self._follow_grant()
        _FORK_AWARE.add(self)

    # -- helpers (pure: no waiting, no I/O) ---------------------------------------------------------------------

    def _fresh_states(self) -> list[_State]:
        return [(0, _DEAD, 0, 0)] * self._shards

    def _process_table(self) -> SharedSequenceTable:
        """This process's sequence table for the layout, whatever the clock and the worker slice (two clocks reading
        the same time must draw distinct numbers, and so must a worker's slice and the whole sequence or another
        slice that overlaps it; the table's lanes keep clocks reading far-apart times from moving each other's
        shards). `HypervaultError` if none can be made."""
        # The kind is part of the key only for tests that switch the accelerator off to get a locked table.
        key = (self.layout, _keymaker.table_reserve is not None)
        try:
            return process_table(key, lambda: SharedSequenceTable(self._shards, self.layout.sequence_size))
        except Exception as exc:
            raise HypervaultError(
                f"could not make the key generator's sequence table in shared memory ({exc!r}): without it, "
                "generators of this process (and processes forked from it) could repeat each other's ids; use a "
                "sequence source (e.g. sequence='redis://...') instead"
            ) from exc

    def _bad_shard(self, shard_id: object) -> InvalidShard:
        try:
            check_shard_id(shard_id, self.layout)
        except InvalidShard as exc:
            return exc
        return InvalidShard(f"shard id {shard_id!r} is not usable here")  # pragma: no cover

    @staticmethod
    def _check_count(n: object) -> int:
        if type(n) is not int:
            if isinstance(n, bool) or not hasattr(n, "__index__"):
                raise InvalidArgument(f"n (how many keys) must be an int >= 0, got {type(n).__name__} {n!r}")
            n = operator.index(n)
        if n < 0:
            raise InvalidArgument(f"n (how many keys) must be an int >= 0, got {n}")
        return n

    def _time_part(self, t: int) -> int:
        """The time part for clock reading ``t`` (ns), or raise if the layout (or a worker lease) cannot use it."""
        part = (t - self._epoch_ns) // _NS_PER_MS
        if part < 0:
            raise ClockMovedBackwards(
                f"the clock reads {t // _NS_PER_MS} ms (Unix), before this layout's epoch "
                f"{self.layout.epoch_ms} ms: no key can encode that time; check the clock or the layout"
            )
        if part > self._hi:
            if part > self._max_time:
                self.layout.compose(part, 0, 0)  # raises LayoutExhausted with the layout's own message
            raise self._refusal(part)
        return part

    def _refusal(self, part: int) -> HypervaultError:
        """Why no key may use millisecond ``part``: the generator is closed, or its worker lease does not cover it."""
        if self._closed:
            return HypervaultError(f"this {type(self).__name__} is closed: make a new one")
        assert self._grant is not None
        return self._grant.refusal(part + self.layout.epoch_ms)

    def _part_of(self, end: int) -> int:
        return (end - self._epoch_ns) // _NS_PER_MS - 1

    def _collect(self, base: int, lim: int, first: int, last: int, k: int, out: list[Key]) -> None:
        """Append the ids of the valid numbers among ``k`` drawn from ``first`` to ``last`` (all ours if
        contiguous; else another thread drew in between and only the ends are surely ours)."""
        key_type = self._key_type
        if last - first == k - 1:
            stop = last + 1 if last < lim else lim
            if first < stop:
                out += _make_keys(key_type, base + first, stop - first)
        else:
            if first < lim:
                out.append(_make_key(key_type, base + first))
            if last < lim:
                out.append(_make_key(key_type, base + last))

    def _draw(self, cnt: Iterator[int], base: int, lim: int, k: int, out: list[Key]) -> None:
        """Append up to ``k`` ids ``base + n`` for numbers n < ``lim`` drawn from ``cnt``."""
        first = next(cnt)
        if first >= lim:
            return
        k = min(k, lim - first)  # no more than this millisecond can still give: linear time for any batch
        if k == 1:
            out.append(_make_key(self._key_type, base + first))
            return
        _consume(islice(cnt, k - 2))
        self._collect(base, lim, first, next(cnt), k, out)

    def _quick_key(self, shard_id: int) -> Key | None:
        """A key at once from the C fast path (no waiting, no I/O), or None: no accelerator, or none at hand."""
        shared = self._shared
        return None if shared is None else _fast_shared(shared, shard_id, 0)

    def _reserve(self, shard: int, time_part: int, wanted: int) -> Any:
        """Numbers from the sequence source, or from the table with this generator's spread and home."""
        if self.sequence is not None:
            return self._source.reserve(shard, time_part, wanted)
        home = -1 if self._home is None else self._home
        return self._source.reserve(
            shard, time_part, wanted, spread=self._spread, home=home, user=self._marks, numbers=self._numbers
        )

    def _wanted(self, shard: int, k: int, *, refill: bool) -> int:
        if self._shared is not None:
            # Keys come straight from the table: a block cached here could hand this thread a number below one
            # it already got from the table, so take exactly what is needed.
            return min(self._size, k)
        want = min(self._size, 2 * self._want[shard]) if refill else self.block_size
        self._want[shard] = want
        return min(self._size, max(want, k))

    def _step(self, shard: int, n: int, out: list[Key]) -> _Reserve | int | None:
        """Bring ``out`` closer to ``n`` keys; None when done, else what to do before the next step: make a
        `_Reserve`, wait until a clock reading (ns), or just go on (`_AGAIN`)."""
        if len(out) >= n:
            return None
        t = self._now_ns()
        state = self._states[shard]
        end, cnt, base, lim = state
        if t < end:  # the same millisecond (or the clock went back: keep using the last one)
            self._draw(cnt, base, lim, n - len(out), out)
            if len(out) >= n:
                return None
            part = self._part_of(end)
            if self.sequence is None and (newest := self._source.newest(shard, part)) > part:
                # Another generator (its clock ahead of this one's, in the same lane) moved the shard on: go on there.
                return _Reserve(state, newest, self._wanted(shard, n - len(out), refill=False))
            if lim <= 0:
                return end  # the millisecond is used up: wait for the next one
            return _Reserve(state, part, self._wanted(shard, n - len(out), refill=True))
        part = self._time_part(t)
        if part <= self._floor:  # the clock is behind a worker lease's floor (or an earlier holder's last ms)
            return self._epoch_ns + (self._floor + 1) * _NS_PER_MS
        if self.sequence is None:  # the clock went back: go on in the shard's newest millisecond while it lasts
            # (in the lane owning part, or in a later lane this generator used: its keys only ever increase)
            table = self._source
            part = max(part, table.newest(shard, part), table.newest_above(shard, part, self._marks))
        return _Reserve(state, part, self._wanted(shard, n - len(out), refill=False))

    def _pauses(self, shard: int, until: int) -> Iterator[float]:
        """The sleeps (s) of a wait `_step` asked for: until the clock reads ``until`` (ns); none for `_AGAIN`."""
        if until != _AGAIN:
            while (pause := self._sleep_for(shard, until)) is not None:
                yield pause

    def _shard_lock(self, shard: int, make: Callable[[], Any]) -> Any:
        return self._locks.get(shard) or self._locks.setdefault(shard, make())

    def _install(self, shard: int, time_part: int, numbers: object, n: int, out: list[Key]) -> None:
        """Make a reserved block the shard's state and take from it at once, whatever the clock says by now
        (the caller holds the shard's lock)."""
        lo, hi = self._offset, self._offset + self._size  # a source's numbers: 0..size (no worker slice with one)
        if (
            not isinstance(numbers, range)
            or numbers.step != 1
            or (numbers and (numbers.start < lo or numbers.stop > hi))
        ):
            raise HypervaultError(
                f"{self._source!r}.reserve() returned {numbers!r}: expected a range(start, stop) within {lo}..{hi}"
            )
        end = self._epoch_ns + (time_part + 1) * _NS_PER_MS
        base = (time_part << self._time_shift) | self._sbits[shard]
        if numbers.start >= numbers.stop:  # this millisecond of this shard is used up
            self._states[shard] = (end, _DEAD, base, 0)
        else:
            cnt = count(numbers.start)
            self._states[shard] = (end, cnt, base, numbers.stop)
            self._draw(cnt, base, numbers.stop, n - len(out), out)

    def _sleep_for(self, shard: int, until: int) -> float | None:
        """Seconds to sleep before looking at the clock again (0: just yield), None once ``until`` is reached."""
        t = self._now_ns()
        if t >= until:
            return None
        ahead = until - t
        if ahead > self._max_back_ns:
            behind = self._part_of(until) - (t - self._epoch_ns) // _NS_PER_MS
            raise ClockMovedBackwards(
                f"the clock reads {t // _NS_PER_MS} ms (Unix), {behind} ms behind the last millisecond already "
                f"used for shard {shard}, whose sequence is used up; waiting more than "
                f"max_backwards_ms={self.max_backwards_ms} is refused (fix the clock or raise max_backwards_ms)"
            )
        if self._custom_clock or ahead <= _SPIN_NS + 100_000:
            return 0.0
        return (ahead - _SPIN_NS) / 1e9

    # -- worker lease, closing ----------------------------------------------------------------------------------

    def skip_numbers(self, shard_id: int, count: int) -> None:
        """Leave the next ``count`` numbers of ``shard_id``'s current millisecond unused.

        After a collision (another process holds the key just made, and most likely the ones after it: it counts
        up through the same stretch), the next keys then land past that stretch instead of on each of its keys in
        turn. No effect with a sequence source (Redis: no collisions to step past), or when no generator of the
        process has drawn for the shard in the current millisecond (the next millisecond starts afresh).
        """
        if self.sequence is not None or type(count) is not int or count < 1:
            return
        if type(shard_id) is not int or not 0 <= shard_id < self._shards:
            return
        t = self._now_ns()
        end, cnt, _, lim = self._states[shard_id]
        if t < end:  # a block of this millisecond is cached here (no C accelerator): skip within it first
            first = next(cnt)
            if first < lim:
                _consume(islice(cnt, min(count, lim - first) - 1))
                count -= lim - first  # what the block did not hold
            if count <= 0:
                return
        part = (t - self._epoch_ns) // _NS_PER_MS
        table = self._source
        if table.newest(shard_id, part) == part:
            table.reserve(shard_id, part, count, spread=self._spread, user=self._marks, numbers=self._numbers)

    def start_each_ms_at(self, start: int | None) -> None:
        """Start each millisecond's sequence at ``start`` instead of at a random number (None: random again).

        For independent processes given distinct starts by a lease (``Datastore(worker="auto")``, see
        `hvcore._worker.home_start`): each process counts up from its own place, so processes making fewer ids per
        millisecond than the gap between two starts never make the same key. Applies to a ``random_start``
        generator without a sequence source; the first generator of the process (or of its forked family) to use a
        (shard, millisecond) sets where it starts. Raises `ConfigError` if the generator has no random start or
        ``start`` is outside ``0 .. spread``.
        """
        if start is not None and (type(start) is not int or not self._spread or not 0 <= start <= self._spread):
            raise ConfigError(
                f"start_each_ms_at needs a random_start generator and a start in 0..{self._spread}, got {start!r}"
            )
        with self._lock:
            self._home = start
            shared = self._shared
            if shared is not None:
                self._shared = self._shared_params(shared, self._hi)

    def _follow_grant(self) -> None:
        """Take the worker grant's current horizon (called by the grant after each change, from any thread)."""
        grant = self._grant
        if grant is None:
            return
        with self._lock:  # read and applied together: of two changes racing, the later one wins
            _, horizon_ms, lost = grant._limits()
            if lost is not None or self._closed:
                self._stop()
                return
            self._hi = hi = min(self._max_time, horizon_ms - self.layout.epoch_ms)
            shared = self._shared
            if shared is not None:
                self._shared = self._shared_params(shared, hi)

    def _shared_params(self, shared: tuple[Any, ...], max_time: int) -> tuple[Any, ...]:
        """The C fast path's view of the table: (clock, key class, table, its numbers packed as 10 int64s: epoch
        ns, time shift, shard shift, sequence size, last usable millisecond, used bits, offset, spread, home (-1:
        random), floor; the generator's lane marks)."""
        table = self._source
        assert isinstance(table, SharedSequenceTable)
        params = (self._epoch_ns, self._time_shift, self.layout.shard_shift, self._size, max_time)
        home = -1 if self._home is None else self._home
        packed = struct.pack("=10q", *params, table.used_bits, self._offset, self._spread, home, self._floor)
        return (*shared[:3], packed, self._marks)

    def _stop(self) -> None:
        """Make every call take the slow path, where it is refused (closed, or the lease is lost); under _lock."""
        self._hi = -1
        self._states = self._fresh_states()
        shared = self._shared
        if shared is not None:
            self._shared = self._shared_params(shared, -1)

    def _shut(self) -> bool:
        """Refuse keys from now on and give the worker numbers back; False if it was closed already."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            self._stop()
        if self._claim is not None:
            release_numbers(self._claim)
        return True

    # -- fork -------------------------------------------------------------------------------------------------------

    def _before_fork(self) -> None:
        self._lock.acquire()  # no worker grant change while we look
        if self._claim is not None:
            self._claim.pinned = True  # the children may use the worker numbers as long as this process lives

    def _after_fork_parent(self) -> None:
        self._lock.release()

    def _after_fork_child(self) -> None:
        self._lock = threading.Lock()
        self._locks = {}
        # Blocks cached here belong to the parent: everything is reserved again, from the table (the parent's,
        # in shared memory) or the source.
        self._states = self._fresh_states()
        if self.sequence is not None:
            self.sequence.after_fork_in_child()

    def __repr__(self) -> str:
        extra = f", worker={self.worker!r}" if self.worker is not None else ""
        state = ", closed" if self._closed else ""
        return (
            f"{type(self).__name__}(layout={self.layout!r}, sequence={self.sequence!r}{extra}, "
            f"random_start={self.random_start}{state})"
        )


_CLOCK_MS_LIMIT = 2**47  # ms after 1970 up to the year 6429: a reading above is in µs or ns, not ms


def _clock_ms(clock: Callable[[], int]) -> int:
    """One reading of a custom ``clock`` (Unix time in whole ms), checked: `InvalidArgument` for a float (seconds,
    ``time.time``) or a reading in µs/ns (``time.time_ns``), which would fail later as a bare TypeError or
    OverflowError."""
    value = clock()
    try:
        ms = operator.index(value)
    except TypeError:
        raise InvalidArgument(
            f"clock() returned {type(value).__name__} {value!r}: a KeyGenerator clock returns Unix time in whole "
            "milliseconds as an int, e.g. lambda: time.time_ns() // 1_000_000"
        ) from None
    if ms >= _CLOCK_MS_LIMIT:
        raise InvalidArgument(
            f"clock() returned {ms}, past the year 6000 in milliseconds: it reads µs or ns; a KeyGenerator clock "
            "returns Unix time in whole milliseconds, e.g. lambda: time.time_ns() // 1_000_000"
        )
    return ms


class KeyGenerator(_GeneratorBase):
    """Makes unique, increasing keys per shard, safe across threads and ``fork()``.

    ``layout``: a `KeyLayout`, ``"default"`` / ``"hypervault"``, or an epoch in Unix ms (as `Datastore` takes it).
    Each shard gets up to ``layout.sequence_size`` (1024) ids per millisecond; past that, the call waits for the
    next millisecond without holding any lock, so other threads and shards keep going. Keys of one shard never
    repeat within the generator, across the process's threads and its forked children, and those one thread gets
    only ever increase. What is unique across other processes depends on the options (docs/keys.md):

    - default: nothing is shared with other processes; each millisecond's sequence starts at a random number
      (``random_start``), so processes sharing a shard collide only by chance: about ``(k1 * k2) / 960`` repeated
      ids per millisecond for two processes making k1 and k2 ids in it on that shard (measured figures in
      docs/keys.md). ``random_start=False`` starts at 0 (the 2015 behaviour, in step with every other process).
    - ``worker=WorkerSlice(id=..., bits=...)``, or a leased `WorkerGrant` (``hvbackend_postgres.lease_worker``):
      unique across every generator with a different worker number of the same ``bits``, by construction; each
      worker has ``1024 >> bits`` ids per shard per millisecond. One generator per worker number in a process.
    - ``sequence``: a `SequenceSource`, or a URL (``"redis://127.0.0.1:6379/0"``, through the plugin registered
      for its scheme, as ``Datastore(sequence=...)``): unique across every generator sharing the source.

    Options that cannot keep their promise together (``worker`` with ``sequence``; ``random_start=True`` with
    either), a ``sequence`` that is neither a source nor a URL, or a bad value raise `ConfigError` here, before
    any key; an unknown URL scheme raises `PluginError`. ``random_start=None`` (the default) means True with the
    system clock and False with an injected ``clock`` (tests then get the same keys every run).

    The clock going backwards: the generator keeps using the last millisecond it used while that millisecond's
    sequence lasts for the shard; then it waits for the clock to catch up when the clock is at most
    ``max_backwards_ms`` behind, and raises `ClockMovedBackwards` when it is further behind. No (shard,
    millisecond, sequence) is ever used twice. Past the layout's last millisecond it raises `LayoutExhausted`
    rather than make a negative id; past a worker lease's horizon, or once the lease is lost, `WorkerLeaseLost`.

    Generators of one process: every generator without a ``sequence`` takes its numbers from the process's one
    sequence table for its layout, whatever their ``clock`` and ``worker`` (a worker's generator takes them in its
    slice, above every number of the shard's millisecond any generator got before), so two generators of a process
    never hand out the same key either: a ``KeyGenerator()`` beside a datastore's leased worker number, or workers
    of other ``bits``, included (a worker beside a plain generator busy on its shard may then wait for the next
    millisecond, its slice passed); their keys interleave, and only those of one generator (one thread) are
    sure to increase. Clocks reading far-apart times (a test's fake clock beside the system clock) keep out of
    each other's way; of two clocks less than about a second apart, the one behind goes on in the newest
    millisecond the other used on the shard, as when the clock goes back (above). Once every generator that
    used a stretch of time is gone, a new one starts it afresh (unless the process forked).

    ``fork()``: that table is in shared memory, which the child inherits: parent and children reserve sequence
    numbers from it, so no process hands out an id another one does. With a ``sequence`` source (e.g. Redis)
    numbers come from the source instead; the child drops the blocks it inherited and calls
    ``sequence.after_fork_in_child()``.

    ``clock`` returns Unix time in integer milliseconds (tests inject a fake one; by default ``time.time_ns``
    is read). ``block_size`` is how many numbers to ask a sequence source for at once (doubling while one
    millisecond keeps asking; at most the layout's sequence size). `close` ends the generator (and closes a
    source it made from a URL).
    """

    __slots__ = ()
    __module__ = "hvcore"

    def __init__(
        self,
        layout: KeyLayout | str | int = KeyLayout.DEFAULT,
        sequence: SequenceSource | str | None = None,
        *,
        worker: WorkerSlice | WorkerGrant | None = None,
        random_start: bool | None = None,
        clock: Callable[[], int] | None = None,
        max_backwards_ms: int = 100,
        block_size: int = 64,
    ) -> None:
        super().__init__(layout, sequence, worker, random_start, clock, max_backwards_ms, block_size, asyncio=False)

    def next_key(self, shard_id: int) -> Key:
        """One new key for ``shard_id``."""
        # The first branch of _step, inlined: this is the hot path (done in C when the accelerator is built).
        if shard_id.__class__ is int and shard_id >= 0:
            try:
                end, cnt, base, lim = self._states[shard_id]
            except IndexError:
                raise self._bad_shard(shard_id) from None
            if self._now_ns() < end:
                n = next(cnt)
                if n < lim:
                    return _make_key(self._key_type, base + n)
        return self._fill(shard_id, 1, [])[0]

    if _shared_next is not None:
        _next_key_py = next_key

        def next_key(self, shard_id: int) -> Key:
            """One new key for ``shard_id``."""
            shared = self._shared  # _quick_key's body, inlined: one method call less on the hot path
            key = _fast_shared(shared, shard_id, 0) if shared is not None else None
            return key if key is not None else self._next_key_py(shard_id)

    def next_keys(self, shard_id: int, n: int) -> list[Key]:
        """``n`` new keys for ``shard_id``, increasing."""
        if n.__class__ is not int or n < 2:
            n = self._check_count(n)
            if n < 2:
                return [self.next_key(shard_id)] if n else []
        if self._shared is not None:
            return self._fill(shard_id, n, _fast_shared(self._shared, shard_id, n) or [])
        return self._fill(shard_id, n, [])

    def close(self) -> None:
        """End the generator: every later call raises `HypervaultError`; a sequence source it made from a URL is
        closed, and its worker number may serve a new generator of this process (from its next millisecond on)."""
        if self._shut() and self._owns_source:
            self.sequence.close()

    def __enter__(self) -> KeyGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _fill(self, shard_id: int, n: int, out: list[Key]) -> list[Key]:
        """The slow path: `_step` until done, sleeping and reserving as it asks (AsyncKeyGenerator._fill, minus
        its ``await``s: tests/core/test_generator.py checks the two are the same code)."""
        shard = check_shard_id(shard_id, self.layout)
        while (todo := self._step(shard, n, out)) is not None:
            if isinstance(todo, _Reserve):
                with self._shard_lock(shard, threading.Lock):
                    if self._states[shard] is todo.state:  # nobody replaced it while we waited for the lock
                        numbers = self._reserve(shard, todo.time_part, todo.wanted)
                        self._install(shard, todo.time_part, numbers, n, out)
            else:
                for pause in self._pauses(shard, todo):
                    time.sleep(pause)
        return out


# -- fork hooks: registered once, for every live generator ------------------------------------------------------

_FORK_AWARE: weakref.WeakSet[_GeneratorBase] = weakref.WeakSet()


def _each_generator(method: Callable[[_GeneratorBase], None]) -> None:
    for generator in list(_FORK_AWARE):
        with contextlib.suppress(Exception):  # a fork hook must not raise; generators record their failures
            method(generator)


def _before_fork() -> None:
    _each_generator(_GeneratorBase._before_fork)


def _after_fork_in_parent() -> None:
    _each_generator(_GeneratorBase._after_fork_parent)


def _after_fork_in_child() -> None:
    _each_generator(_GeneratorBase._after_fork_child)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
