"""Key generators: unique, increasing 64-bit keys per shard, made in the client without a round trip."""

from __future__ import annotations

import contextlib
import inspect
import operator
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from itertools import count, islice
from typing import Any, Final, NamedTuple

from hvcore._key import Key, KeyLayout, check_shard_id
from hvcore._keymaker import make_key as _make_key
from hvcore._keymaker import make_keys as _make_keys
from hvcore._keymaker import next_local as _next_local
from hvcore._keymaker import shared_next as _shared_next
from hvcore._sequence import AsyncSequenceSource, SequenceSource
from hvcore._sharedseq import SharedSequenceTable
from hvcore.errors import ClockMovedBackwards, HypervaultError, InvalidShard

__all__ = ["KeyGenerator"]

if _next_local is not None and _shared_next is not None:
    _fast_next = _next_local  # bound once, without the Optional, for KeyGenerator's fast paths
    _fast_shared = _shared_next

_NS_PER_MS: Final = 1_000_000
_SPIN_NS: Final = 200_000  # the last part of a wait for the next millisecond only yields the GIL
_consume: Callable[[Iterator[int]], None] = deque[int](maxlen=0).extend  # drains an iterator in C
_DEAD: Final[Iterator[int]] = count()  # the counter of states whose limit rejects every number
_AGAIN: Final = 0  # _step results besides None (done), a _Reserve, or a clock reading (ns) to wait for

# How ids are made, and why no two threads (or processes) ever make the same one:
#
# Local mode (no sequence source, no fork yet). `_cur` describes the newest millisecond in use: (clock, end_ns,
# time bits, first, more, shard bits, key class). A key is time bits + shard bits + sequence. `first` and `more`
# are dicts made for that one millisecond: the call whose `first.setdefault(shard, t) is t` (t: its own clock
# reading, a fresh int object) gets sequence 0 of that shard; the others draw 1, 2, ... from the shard's
# `itertools.count` in `more`. Both operations are atomic under the GIL, and a thread that read an older `_cur`
# only ever touches that millisecond's own dicts, so every (shard, ms, sequence) is handed out once. Only the
# move to a new millisecond takes a lock (once per millisecond for all shards).
#
# Block mode (a sequence source, or after the first fork: the shared table). Each shard has a state
# (end_ns, counter, base, limit), replaced whole under the shard's lock: ids are base + n for n drawn from the
# counter while n < limit and the clock is before end_ns. The numbers come in blocks from the source.
_Cur = tuple[Callable[[], int], int, int, dict[int, int], dict[int, Iterator[int]], list[int], type[Key]]
_State = tuple[int, Iterator[int], int, int]


class _Reserve(NamedTuple):
    state: _State
    time_part: int
    wanted: int


class _BrokenSource:
    """Stands in for the shared table in a child whose parent could not set one up before ``fork()``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def reserve(self, shard_id: int, time_part: int, wanted: int) -> range:
        raise HypervaultError(self.reason)

    def after_fork_in_child(self) -> None:
        pass

    def close(self) -> None:
        pass


class _GeneratorBase:
    """State and logic shared by `KeyGenerator` and `AsyncKeyGenerator`: they only add the waiting and the I/O."""

    __slots__ = (
        "__weakref__",
        "_cur",
        "_custom_clock",
        "_epoch_ns",
        "_floor",
        "_fork_error",
        "_key_type",
        "_lock",
        "_locks",
        "_max_back_ns",
        "_max_time",
        "_now_ns",
        "_sbits",
        "_shards",
        "_shared",
        "_size",
        "_source",
        "_states",
        "_time_shift",
        "_want",
        "block_size",
        "layout",
        "max_backwards_ms",
        "sequence",
    )

    def __init__(
        self,
        layout: KeyLayout,
        sequence: SequenceSource | AsyncSequenceSource | None,
        clock: Callable[[], int] | None,
        max_backwards_ms: int,
        block_size: int,
    ) -> None:
        if not getattr(sys, "_is_gil_enabled", lambda: True)():
            # Every step of the lock-free fast paths is atomic only under the GIL (free-threaded 3.13 makes no
            # such promise for itertools.count, for one). Importing the C accelerator turns the GIL back on.
            raise HypervaultError(
                "this free-threaded Python runs without the GIL, and the key generator's lock-free paths rely on "
                "it: run with PYTHON_GIL=1 (or -X gil=1), or install hypervault with a C compiler so that its "
                "accelerator is built (importing it turns the GIL on)"
            )
        if not isinstance(layout, KeyLayout):
            raise TypeError(f"layout must be a KeyLayout, got {type(layout).__name__} {layout!r}")
        if type(max_backwards_ms) is not int or max_backwards_ms < 0:
            raise ValueError(f"max_backwards_ms must be an int >= 0, got {max_backwards_ms!r}")
        size = layout.sequence_size
        if type(block_size) is not int or not 1 <= block_size <= size:
            raise ValueError(f"block_size must be an int in 1..{size}, got {block_size!r}")
        self.layout = layout
        self.sequence = sequence
        self.max_backwards_ms = max_backwards_ms
        self.block_size = block_size
        self._key_type = layout.key_type
        self._size = size
        self._shards = layout.max_shard_id + 1
        self._sbits = [shard << layout.shard_shift for shard in range(self._shards)]
        self._time_shift = layout.time_shift
        self._max_time = layout.max_time_part
        self._epoch_ns = layout.epoch_ms * _NS_PER_MS
        self._max_back_ns = (max_backwards_ms + 1) * _NS_PER_MS
        self._custom_clock = clock is not None
        if clock is None:
            self._now_ns: Callable[[], int] = time.time_ns
        else:
            ms_clock = clock
            # Half a millisecond in: never a cached small int, so each reading is a distinct object.
            self._now_ns = lambda: operator.index(ms_clock()) * _NS_PER_MS + _NS_PER_MS // 2
        self._source: SequenceSource | AsyncSequenceSource | None = sequence
        self._floor = -1  # milliseconds up to this one are not ours to use (set by a fork)
        self._want = [block_size] * self._shards
        self._locks: dict[int, Any] = {}
        self._lock = threading.Lock()  # moving to a new millisecond (local mode); fork hooks
        self._fork_error: str | None = None
        self._shared: tuple[Any, ...] | None = None  # set once keys come straight from a lock-free shared table
        self._states: list[_State] = self._fresh_states()
        self._cur: _Cur = self._make_cur(0, 0)
        _FORK_AWARE.add(self)

    # -- helpers (pure: no waiting, no I/O) ---------------------------------------------------------------------

    def _fresh_states(self) -> list[_State]:
        return [(0, _DEAD, 0, 0)] * self._shards

    def _make_cur(self, end: int, time_bits: int) -> _Cur:
        return (self._now_ns, end, time_bits, {}, {}, self._sbits, self._key_type)

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
                raise TypeError(f"n must be an int, got {type(n).__name__} {n!r}")
            n = operator.index(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return n

    def _time_part(self, t: int) -> int:
        """The layout's time part for clock reading ``t`` (ns), or raise if the layout cannot encode it."""
        part = (t - self._epoch_ns) // _NS_PER_MS
        if part < 0:
            raise ClockMovedBackwards(
                f"the clock reads {t // _NS_PER_MS} ms (Unix), before this layout's epoch "
                f"{self.layout.epoch_ms} ms: no key can encode that time; check the clock or the layout"
            )
        if part > self._max_time:
            self.layout.compose(part, 0, 0)  # raises LayoutExhausted with the layout's own message
        return part

    def _part_of(self, end: int) -> int:
        return (end - self._epoch_ns) // _NS_PER_MS - 1

    def _advance(self, cur: _Cur, t: int) -> None:
        """Local mode: make the millisecond of ``t`` (later than ``cur``'s) the current one."""
        with self._lock:
            if self._cur is cur and self._source is None:
                part = self._time_part(t)
                self._cur = self._make_cur(self._epoch_ns + (part + 1) * _NS_PER_MS, part << self._time_shift)

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
        if k == 1:
            out.append(_make_key(self._key_type, base + first))
            return
        _consume(islice(cnt, k - 2))
        self._collect(base, lim, first, next(cnt), k, out)

    def _quick_key(self, shard_id: int) -> Key | None:
        """A key at once from the C fast path (no waiting, no I/O), or None: no accelerator, or none at hand."""
        if _next_local is None:
            return None
        shared = self._shared
        return _fast_next(self._cur, shard_id, self._size) if shared is None else _fast_shared(shared, shard_id, 0)

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
        if self._source is None:
            cur = self._cur
            now, end, time_bits, first, more, sbits, key_type = cur
            t = now()
            if t >= end:
                self._advance(cur, t)
                cur = self._cur  # go on with the same reading: a fast clock must not starve us
                now, end, time_bits, first, more, sbits, key_type = cur
                if t >= end:
                    return _AGAIN
            base = time_bits + sbits[shard]
            if first.setdefault(shard, t) is t:
                out.append(_make_key(key_type, base))
                if len(out) >= n:
                    return None
            cnt = more.get(shard) or more.setdefault(shard, count(1))
            self._draw(cnt, base, self._size, n - len(out), out)
            return None if len(out) >= n else end  # else this millisecond is used up: wait for the next
        t = self._now_ns()
        state = self._states[shard]
        end, cnt, base, lim = state
        if t < end:  # the same millisecond (or the clock went back: keep using the last one)
            self._draw(cnt, base, lim, n - len(out), out)
            if len(out) >= n:
                return None
            if lim <= 0:
                return end  # the millisecond is used up: wait for the next one
            return _Reserve(state, self._part_of(end), self._wanted(shard, n - len(out), refill=True))
        part = self._time_part(t)
        if part <= self._floor:  # the clock is behind what the parent used before forking
            return self._epoch_ns + (self._floor + 1) * _NS_PER_MS
        return _Reserve(state, part, self._wanted(shard, n - len(out), refill=False))

    def _install(self, shard: int, time_part: int, numbers: object, n: int, out: list[Key]) -> None:
        """Make a reserved block the shard's state and take from it at once, whatever the clock says by now
        (the caller holds the shard's lock)."""
        size = self._size
        if not isinstance(numbers, range) or numbers.step != 1 or numbers.start < 0 or numbers.stop > size:
            raise HypervaultError(
                f"{self._source!r}.reserve() returned {numbers!r}: expected a range(start, stop) within 0..{size}"
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

    # -- fork -------------------------------------------------------------------------------------------------------

    def _before_fork(self) -> None:
        self._lock.acquire()  # no thread is moving to a new millisecond while we look
        self._fork_error = None
        if self._source is None:
            try:
                end = self._cur[1]
                floor = self._part_of(end) if end else -1
                table = SharedSequenceTable(self._shards, self._size, floor=floor)
            except Exception as exc:  # a fork hook cannot raise: the child refuses to make keys instead
                self._fork_error = (
                    f"could not share the key generator's state before fork() ({exc!r}); this process cannot "
                    f"make keys without risking duplicates of its parent's: create a new KeyGenerator"
                )
                return
            # Everything up to the current millisecond stays ours (threads still finishing it included);
            # parent and children now take later milliseconds in blocks from the shared table.
            self._floor = floor
            self._states = self._fresh_states()
            self._source = table
            self._cur = self._make_cur(-1, 0)
            if table.atomic:
                layout = self.layout
                self._shared = (
                    *(self._now_ns, self._epoch_ns, self._time_shift, layout.shard_shift, self._size),
                    *(self._max_time, self._key_type, table.buffer, table.used_bits),
                )

    def _after_fork_parent(self) -> None:
        self._lock.release()

    def _after_fork_child(self) -> None:
        self._lock = threading.Lock()
        self._locks = {}
        if self._fork_error is not None:
            self._source = _BrokenSource(self._fork_error)
            self._cur = self._make_cur(-1, 0)
            self._shared = None
        # Blocks cached here belong to the parent: everything is reserved again, from the table or the source.
        self._states = self._fresh_states()
        if self.sequence is not None:
            self.sequence.after_fork_in_child()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layout={self.layout!r}, sequence={self.sequence!r})"


class KeyGenerator(_GeneratorBase):
    """Makes unique, increasing keys per shard, safe across threads and ``fork()``.

    Each shard gets up to ``layout.sequence_size`` (1024) ids per millisecond; past that, the call waits for the
    next millisecond without holding any lock, so other threads and shards keep going. Keys of one shard never
    repeat within the process and its forked children, and those one thread gets only ever increase.

    The clock going backwards: the generator keeps using the last millisecond it used while that millisecond's
    sequence lasts for the shard; then it waits for the clock to catch up when the clock is at most
    ``max_backwards_ms`` behind, and raises `ClockMovedBackwards` when it is further behind. No (shard,
    millisecond, sequence) is ever used twice. Past the layout's last millisecond it raises `LayoutExhausted`
    rather than make a negative id.

    ``fork()``: the generator moves to a table in shared memory that the child inherits; the parent keeps the
    milliseconds it already used, and from then on parent and children reserve blocks of sequence numbers of
    later milliseconds from that table, so no process hands out an id another one does. With a ``sequence``
    source (e.g. Redis) blocks come from the source instead; the child drops the blocks it inherited and calls
    ``sequence.after_fork_in_child()``.

    ``clock`` returns Unix time in integer milliseconds (tests inject a fake one; by default ``time.time_ns``
    is read). ``block_size`` is how many numbers to ask a sequence source for at once (doubling while one
    millisecond keeps asking).
    """

    __slots__ = ()
    __module__ = "hvcore"

    def __init__(
        self,
        layout: KeyLayout = KeyLayout.DEFAULT,
        sequence: SequenceSource | None = None,
        *,
        clock: Callable[[], int] | None = None,
        max_backwards_ms: int = 100,
        block_size: int = 64,
    ) -> None:
        if sequence is not None and inspect.iscoroutinefunction(getattr(sequence, "reserve", None)):
            raise TypeError(f"{sequence!r} is an asynchronous sequence source: use AsyncKeyGenerator")
        super().__init__(layout, sequence, clock, max_backwards_ms, block_size)

    def next_key(self, shard_id: int) -> Key:
        """One new key for ``shard_id``."""
        # The local-mode path of _step, inlined: this is the hot path (done in C when the accelerator is built).
        now, end, time_bits, first, more, sbits, key_type = self._cur
        t = now()
        if t < end and shard_id.__class__ is int and shard_id >= 0:
            try:
                base = time_bits + sbits[shard_id]
            except IndexError:
                raise self._bad_shard(shard_id) from None
            if first.setdefault(shard_id, t) is t:
                return _make_key(key_type, base)
            n = next(more.get(shard_id) or more.setdefault(shard_id, count(1)))
            if n < self._size:
                return _make_key(key_type, base + n)
        elif self._source is not None and shard_id.__class__ is int and shard_id >= 0:
            try:
                end, cnt, base, lim = self._states[shard_id]
            except IndexError:
                raise self._bad_shard(shard_id) from None
            if self._now_ns() < end:
                n = next(cnt)
                if n < lim:
                    return _make_key(self._key_type, base + n)
        return self._fill(shard_id, 1, [])[0]

    if _next_local is not None:
        _next_key_py = next_key

        def next_key(self, shard_id: int) -> Key:
            """One new key for ``shard_id``."""
            shared = self._shared  # _quick_key's body, inlined: one method call less on the hot path
            key = _fast_next(self._cur, shard_id, self._size) if shared is None else _fast_shared(shared, shard_id, 0)
            return key if key is not None else self._next_key_py(shard_id)

    def next_keys(self, shard_id: int, n: int) -> list[Key]:
        """``n`` new keys for ``shard_id``, increasing."""
        if n.__class__ is not int or n < 2:
            n = self._check_count(n)
            if n < 2:
                return [self.next_key(shard_id)] if n else []
        if self._shared is not None:
            return self._fill(shard_id, n, _fast_shared(self._shared, shard_id, n) or [])
        now, end, time_bits, first, more, sbits, key_type = self._cur
        t = now()
        if t < end and shard_id.__class__ is int and shard_id >= 0:
            try:
                base = time_bits + sbits[shard_id]
            except IndexError:
                raise self._bad_shard(shard_id) from None
            zero = first.setdefault(shard_id, t) is t
            cnt = more.get(shard_id) or more.setdefault(shard_id, count(1))
            k = n - 1 if zero else n
            a = next(cnt)
            if k > 1:
                _consume(islice(cnt, k - 2))
                b = next(cnt)
            else:
                b = a
            if b < self._size and b - a == k - 1:  # contiguous: no other thread drew in between
                if zero and a == 1:
                    return _make_keys(key_type, base, n)
                out = _make_keys(key_type, base + a, k)
                if zero:
                    out.insert(0, _make_key(key_type, base))
                return out
            out = [_make_key(key_type, base)] if zero else []
            self._collect(base, self._size, a, b, k, out)
            return self._fill(shard_id, n, out)
        return self._fill(shard_id, n, [])

    def _fill(self, shard_id: int, n: int, out: list[Key]) -> list[Key]:
        shard = check_shard_id(shard_id, self.layout)
        step = self._step
        while True:
            todo = step(shard, n, out)
            if todo is None:
                return out
            if type(todo) is _Reserve:
                self._reserve(shard, todo, n, out)
            elif todo != _AGAIN:
                assert isinstance(todo, int)
                while (pause := self._sleep_for(shard, todo)) is not None:
                    time.sleep(pause)

    def _reserve(self, shard: int, todo: _Reserve, n: int, out: list[Key]) -> None:
        lock = self._locks.get(shard) or self._locks.setdefault(shard, threading.Lock())
        with lock:
            if self._states[shard] is todo.state:  # nobody replaced it while we waited for the lock
                source = self._source
                assert source is not None
                numbers = source.reserve(shard, todo.time_part, todo.wanted)
                self._install(shard, todo.time_part, numbers, n, out)


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
