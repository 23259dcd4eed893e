"""Worker slices: a worker number owning a slice of the sequence bits, fixed or leased (pure core: no I/O).

With ``bits`` worker bits, the sequence part of a key (10 bits in the default layout) splits in two: the high
``bits`` are the worker number, the rest count ids within the worker's slice. Worker ``id`` of ``bits`` makes the
numbers ``id * 2**(10 - bits)`` up to ``(id + 1) * 2**(10 - bits) - 1`` in every (shard, millisecond), so two
generators with different worker numbers never make the same key, whatever their clocks say and without talking
to each other: the Snowflake scheme (Twitter, 2010), whose 10-bit "machine id" is here carved out of the sequence.

A `WorkerSlice` is a fixed number: the deployment guarantees that no two live generators share it (a config
value per host, a StatefulSet ordinal). A `WorkerGrant` is a number held for a while, as a lease hands it out
(`hvbackend_postgres.PostgresWorkerLease`): keys may use only the milliseconds after ``floor_ms`` (the previous
holder's last) and up to ``horizon_ms`` (how far the lease is confirmed), so a number passes from one holder to
the next without a millisecond in common, even when the old holder is cut off and does not know it yet.
"""

from __future__ import annotations

import itertools
import math
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hvcore._key import KeyLayout
from hvcore.errors import ConfigError, WorkerLeaseLost

__all__ = [
    "MAX_WORKER_BITS",
    "MIN_WORKER_BITS",
    "WorkerGrant",
    "WorkerSlice",
    "claim_numbers",
    "home_start",
    "lease_option_problems",
    "release_numbers",
]

MIN_WORKER_BITS = 1
"""Fewest worker bits: 2 workers, each with half of the sequence."""

MAX_WORKER_BITS = 8
"""Most worker bits: 256 workers, each with 4 ids per shard per millisecond (default layout)."""

LEASE_NAME_MAX = 63  # PostgreSQL identifiers (the lease's schema and table; the namespace is kept as short)
LEASE_SECONDS = {"ttl": (0.5, 3600.0), "acquire_timeout": (0.0, 86400.0), "connect_timeout": (0.1, 600.0)}
"""Worker-lease options in seconds: the range each must be in."""


def lease_option_problems(options: Mapping[str, Any]) -> list[str]:
    """What is wrong with the worker-lease option values given (``bits``, ``namespace``, ``schema``, ``table``,
    ``ttl``, ``acquire_timeout``, ``connect_timeout``; absent ones are fine): one sentence each, empty when fine.

    Shared by every backend's lease and by the config file's ``worker = {...}``, so a file ``hv config`` accepts
    is one ``Datastore`` accepts."""
    problems: list[str] = []
    if "bits" in options:
        bits = options["bits"]
        if type(bits) is not int or not MIN_WORKER_BITS <= bits <= MAX_WORKER_BITS:
            problems.append(f"bits must be an int in {MIN_WORKER_BITS}..{MAX_WORKER_BITS}, got {bits!r}")
    for name in ("namespace", "schema", "table"):
        if name in options:
            value = options[name]
            if not isinstance(value, str) or not value or len(value) > LEASE_NAME_MAX or "\x00" in value:
                problems.append(f"{name} must be a non-empty str of at most {LEASE_NAME_MAX} characters, got {value!r}")
    for name, (low, high) in LEASE_SECONDS.items():
        if name in options:
            value = options[name]
            number = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
            if not number or not low <= value <= high:
                problems.append(f"{name} must be a number of seconds in {low}..{high}, got {value!r}")
    return problems


_MIN_FREE_BITS = 2  # every worker keeps at least 4 ids per shard per millisecond
_grant_ids = itertools.count()


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSlice:
    """Worker number ``id`` of ``2**bits`` workers: its generator uses only its slice of the sequence numbers.

    ``bits`` (1..8, default 4) is how many of the layout's sequence bits name the worker: with the default layout's
    10, 4 bits give 16 workers × 64 ids per shard per millisecond (64,000 ids/s per shard per worker), 2 bits 4 ×
    256, 8 bits 256 × 4. Every generator sharing shards must use the same ``bits``. In one process, generators of
    other worker numbers, other bits or none share one sequence table and never repeat an id (a worker's slice a
    plain generator of the process passed in a millisecond is used up for it, though). Raises `ConfigError` for a
    ``bits`` outside 1..8 or an ``id`` outside ``0 .. 2**bits - 1``.
    """

    id: int
    bits: int = 4

    __module__ = "hvcore"

    def __post_init__(self) -> None:
        bits, number = self.bits, self.id
        if type(bits) is not int or not MIN_WORKER_BITS <= bits <= MAX_WORKER_BITS:
            raise ConfigError(
                f"WorkerSlice.bits must be an int in {MIN_WORKER_BITS}..{MAX_WORKER_BITS} (2 to 256 workers), "
                f"got {bits!r}"
            )
        if type(number) is not int or not 0 <= number < 1 << bits:
            raise ConfigError(f"WorkerSlice.id must be an int in 0..{(1 << bits) - 1} for bits={bits}, got {number!r}")

    @property
    def workers(self) -> int:
        """How many worker numbers ``bits`` allows (``2**bits``)."""
        return 1 << self.bits

    def numbers(self, layout: KeyLayout = KeyLayout.DEFAULT) -> range:
        """The sequence numbers this worker makes in each (shard, millisecond) of ``layout``.

        Raises `ConfigError` if the layout's sequence bits leave fewer than 2 bits (4 ids) per worker.
        """
        free = layout.sequence_bits - self.bits
        if free < _MIN_FREE_BITS:
            raise ConfigError(
                f"WorkerSlice(bits={self.bits}) leaves {1 << max(free, 0)} id(s) per shard per millisecond in a layout "
                f"of {layout.sequence_bits} sequence bits: use bits <= {layout.sequence_bits - _MIN_FREE_BITS}"
            )
        size = 1 << free
        return range(self.id * size, (self.id + 1) * size)


class WorkerGrant:
    """A `WorkerSlice` held for a while: keys may use the milliseconds after ``floor_ms`` up to ``horizon_ms``.

    Both are Unix milliseconds as the keys carry them: ``floor_ms`` is the last millisecond the previous holder of
    the number may have used (-1: none), ``horizon_ms`` the last one this holder is sure to own; the lease that made
    the grant moves the horizon forward with `extend` as it renews, and ends the grant with `revoke`. A generator
    following the grant (``KeyGenerator(worker=grant)``) refuses, with `WorkerLeaseLost`, every millisecond past
    the horizon or after a revocation, and waits for the clock to pass the floor. ``scope`` names the table the
    number comes from (two grants of one scope never hold the same number at once; different scopes are
    different number spaces). Thread-safe; no I/O.
    """

    __module__ = "hvcore"

    def __init__(self, worker: WorkerSlice, *, floor_ms: int, horizon_ms: int, scope: str = "") -> None:
        if not isinstance(worker, WorkerSlice):
            raise ConfigError(f"worker must be a WorkerSlice, got {type(worker).__name__} {worker!r}")
        for name, value in (("floor_ms", floor_ms), ("horizon_ms", horizon_ms)):
            if type(value) is not int:
                raise ConfigError(f"{name} must be an int (Unix ms), got {value!r}")
        if not isinstance(scope, str):
            raise ConfigError(f"scope must be a str, got {scope!r}")
        self._worker = worker
        self._floor_ms = floor_ms
        self._horizon_ms = horizon_ms
        self._scope = scope
        self._lost: str | None = None
        self._note = ""  # why the horizon may not move (set by the lease: its last renewal error)
        # Which generator of this process holds the grant (hvcore._worker.claim_numbers): the grant itself, not its
        # number, since the lease table already keeps two grants of a number apart (by floors and horizons).
        self._claim_scope = f"{scope} grant {next(_grant_ids)}"
        self._state_lock = threading.Lock()
        self._followers: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def worker(self) -> WorkerSlice:
        """The worker number and its bits."""
        return self._worker

    @property
    def floor_ms(self) -> int:
        """Keys use only milliseconds after this one (Unix ms): the previous holder's may reach it."""
        return self._floor_ms

    @property
    def horizon_ms(self) -> int:
        """The last millisecond (Unix ms) keys may use until the grant is extended."""
        return self._horizon_ms

    @property
    def lost(self) -> str | None:
        """Why the grant ended (`revoke`), or None while it holds."""
        return self._lost

    @property
    def scope(self) -> str:
        """The table the worker number comes from (numbers of different scopes are unrelated)."""
        return self._scope

    def extend(self, horizon_ms: int) -> None:
        """Move the horizon to ``horizon_ms`` (Unix ms) once the lease owns it; never back, never after `revoke`."""
        if type(horizon_ms) is not int:
            raise ConfigError(f"horizon_ms must be an int (Unix ms), got {horizon_ms!r}")
        with self._state_lock:
            if self._lost is not None or horizon_ms <= self._horizon_ms:
                return
            self._horizon_ms = horizon_ms
        self._notify()

    def revoke(self, reason: str) -> None:
        """End the grant: generators following it refuse every key from now on, with `WorkerLeaseLost` (``reason``)."""
        with self._state_lock:
            if self._lost is not None:
                return
            self._lost = reason
        self._notify()

    def refusal(self, ms: int) -> WorkerLeaseLost:
        """The error for a key wanted at Unix millisecond ``ms`` that the grant does not cover."""
        who = f"worker {self._worker.id} of {self._worker.workers}"
        if self._lost is not None:
            return WorkerLeaseLost(f"the lease of {who} ended: {self._lost}; no key is made with it")
        note = f"; {self._note}" if self._note else ""
        return WorkerLeaseLost(
            f"the lease of {who} covers keys up to Unix ms {self._horizon_ms}, and a key was wanted at {ms}: it "
            f"was not renewed in time{note}"
        )

    def __repr__(self) -> str:
        state = f"lost: {self._lost}" if self._lost is not None else f"horizon_ms={self._horizon_ms}"
        return f"<{type(self).__name__} worker={self._worker.id}/{self._worker.workers} {state}>"

    # -- the generators' side -------------------------------------------------------------------------------------

    def _limits(self) -> tuple[int, int, str | None]:
        with self._state_lock:
            return self._floor_ms, self._horizon_ms, self._lost

    def _follow(self, generator: Any) -> None:
        """Call ``generator._follow_grant()`` after every change (the generator is held weakly)."""
        self._followers.add(generator)

    def _notify(self) -> None:
        for generator in list(self._followers):
            generator._follow_grant()


# -- one generator per worker slice in a process -------------------------------------------------------------------


class _Claim:
    """A generator's hold on worker numbers in this process; ``last_ms``: the last Unix ms an earlier holder may
    have used; ``table``: the generator's sequence table, its layout's epoch (Unix ms) and its lane marks, which tell
    the rest."""

    __slots__ = ("generator", "last_ms", "numbers", "pinned", "scope", "table")

    def __init__(self, scope: str, numbers: range, generator: object, last_ms: int) -> None:
        self.scope = scope
        self.numbers = numbers
        self.generator: weakref.ref[object] | None = weakref.ref(generator)
        self.last_ms = last_ms
        self.pinned = False  # set once the generator forks: its children may go on using the numbers
        self.table: tuple[Any, int, bytearray] | None = None

    def last_used_ms(self) -> int:
        """The last Unix ms the numbers may have been used in: by an earlier holder, or in the generator's table."""
        if self.table is None:
            return self.last_ms
        table, epoch_ms, marks = self.table
        newest = table.newest_marked(marks)  # the table is every generator's: only the lanes the holder used
        return max(self.last_ms, newest + epoch_ms if newest > 0 else -1)

    def held(self) -> bool:
        return self.pinned or (self.generator is not None and self.generator() is not None)


_claims: list[_Claim] = []
_claims_lock = threading.Lock()


def claim_numbers(scope: str, numbers: range, generator: object, describe: str) -> _Claim:
    """Hold ``numbers`` of ``scope`` for ``generator``: a `ConfigError` if another live generator of this process
    holds any of them. The claim's ``last_ms`` starts at the last millisecond an earlier holder used (-1: none)."""
    with _claims_lock:
        floor = -1
        kept: list[_Claim] = []
        for old in _claims:
            if old.scope != scope or old.numbers.stop <= numbers.start or numbers.stop <= old.numbers.start:
                kept.append(old)
            elif old.held():
                raise ConfigError(
                    f"{describe} is already used by another KeyGenerator of this process (or of the process it was "
                    "forked from): two generators with one worker number make the same keys. Share one generator "
                    "(it is thread-safe), or close() the other first"
                )
            else:
                floor = max(floor, old.last_used_ms())  # a closed or collected generator: after its last ms
        claim = _Claim(scope, numbers, generator, floor)
        kept.append(claim)
        _claims[:] = kept
    return claim


def release_numbers(claim: _Claim) -> None:
    """Give the numbers back (a closed generator); a generator that forked keeps them for the life of the process."""
    with _claims_lock:
        if not claim.pinned:
            claim.generator = None


def home_start(worker: WorkerSlice, layout: KeyLayout = KeyLayout.DEFAULT) -> int:
    """Where worker ``worker.id`` starts each millisecond when numbers are homes, not slices (``worker="auto"``).

    The worker number's bits reversed, spread over the random-start range ``0 .. size - size/16 - 1`` (0..959 in
    the default layout): workers 0, 1, 2, 3 of 256 start at 0, 480, 240, 720, so the first few processes are as
    far apart as they can be and each may make that many ids in a millisecond before it reaches another's start.
    """
    spread = layout.sequence_size - layout.sequence_size // 16
    reversed_id = int(f"{worker.id:0{worker.bits}b}"[::-1], 2)
    return reversed_id * spread // worker.workers
