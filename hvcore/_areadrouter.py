"""`AsyncReadRouter`: which server a read goes to when servers list read replicas (asyncio).

This module is the source of ``hvcore/_readrouter.py`` (`ReadRouter`), which tools/async_to_sync.py writes from
it: edit this one, then run the tool. The decisions are `hvcore._replicas`' (pure); this module reads the WAL
positions they need from the servers, in the background, at most once per refresh interval per server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hvcore._acompat import agather, asleep, aspawn
from hvcore._metrics import metrics
from hvcore._replicas import PIN, LagTracker, Timeline, server_id
from hvcore.errors import PoolTimeout, ServerUnavailable

__all__ = ["AsyncReadRouter", "ReplicaChoice", "replica_timeout"]

MIN_REFRESH = 0.01  # seconds: the shortest refresh interval (a lag bound of 40 ms refreshes every 10 ms)
MAX_REFRESH = 0.25  # seconds: the longest (a bound of 1 s refreshes every 250 ms)
REPLICA_TIMEOUT_MIN = 1.0  # seconds: the shortest operation timeout of a standby's connections
REPLICA_TIMEOUT_LAGS = 5  # a standby's exchange may take this many lag bounds before the read goes to the primary
SETTLE_ROUNDS = 4  # extra refreshes of `refresh(settle=True)` (status) while a standby's lag is unknown


def replica_timeout(max_lag: float) -> float:
    """The client-side bound on one exchange with a standby: ``max(1 s, 5 × max_lag)`` (and at most the datastore's
    ``operation_timeout``). A standby that stops answering without closing its sockets fails the read after it, and
    the read goes to the primary, instead of hanging it for the whole ``operation_timeout``."""
    return max(REPLICA_TIMEOUT_MIN, REPLICA_TIMEOUT_LAGS * max_lag)


@dataclass(slots=True)
class ReplicaChoice:
    """A standby chosen for a read: its store, its number among its server's standbys, and the shards of the read
    that must still go to the primary (written by this timeline past what the standby has replayed)."""

    store: Any
    number: int
    pinned: frozenset[int] = field(default_factory=frozenset)


class AsyncReadRouter:
    """The standbys of every server of an `AsyncDatastore`, their lag, and the read-your-writes positions.

    ``replicas[i]`` lists the connection settings of server ``i``'s standbys; their stores are made by ``factory``
    (the datastore's backend) when `attach` is called and open their pools on first use. A backend whose stores
    cannot tell their WAL position (``wal_position()``: the memory backend) reads from its primaries only.
    ``max_lag`` is the staleness bound in seconds; positions are refreshed every ``max_lag / 4`` seconds (between
    10 and 250 ms) in the background, triggered by reads.
    """

    def __init__(
        self,
        replicas: Sequence[Sequence[Mapping[str, Any]]],
        factory: Callable[[Mapping[str, Any], Any], Any],
        options: Any,
        *,
        max_lag: float,
        primaries: Callable[[], list[Any]],
        refresh_interval: float | None = None,
    ) -> None:
        self.max_lag = max_lag
        self.interval = refresh_interval or min(max(max_lag / 4, MIN_REFRESH), MAX_REFRESH)
        self._replica_settings = [list(r) for r in replicas]
        self._factory = factory
        self._options = options
        self._primaries = primaries
        self._stores: list[list[Any]] = []
        self._trackers: list[LagTracker | None] = []
        self.on_primary: list[int] = []  # per server: replica reads that went to the primary (none usable, pinned)
        self._server_ids: list[int] = []
        self._last_refresh: list[float] = []
        self._refreshing: set[int] = set()
        self._pending: set[Any] = set()

    def check(self) -> None:
        """Build every standby's store without opening it: its backend checks its settings (no I/O)."""
        for settings in self._replica_settings:
            for replica in settings:
                self._factory(replica, self._options)

    def _replica_options(self) -> Any:
        """The datastore's backend options with a shorter ``operation_timeout`` (`replica_timeout`)."""
        if not dataclasses.is_dataclass(self._options) or isinstance(self._options, type):
            return self._options
        current = getattr(self._options, "operation_timeout", None)
        bound = replica_timeout(self.max_lag)
        return dataclasses.replace(self._options, operation_timeout=bound if current is None else min(current, bound))

    def attach(self, primaries: Sequence[Any], *, track_writes: bool = False) -> None:
        """Make the standbys' stores for these primaries (pools open on first use); forget any earlier state.

        ``track_writes`` (read-your-writes): primaries with standbys that can bring back the WAL position with each
        write (``track_wal``, PostgreSQL) are told to, so `note_write` needs no round trip of its own.
        """
        self._stores, self._trackers = [], []
        options = self._replica_options()
        for primary, settings in zip(primaries, self._replica_settings, strict=True):
            stores = [self._factory(s, options) for s in settings] if hasattr(primary, "wal_position") else []
            if stores and track_writes and hasattr(primary, "track_wal"):
                primary.track_wal = True
            self._stores.append(stores)
            labels = [str(getattr(s, "label", "?")) for s in stores]
            self._trackers.append(LagTracker(labels, max_lag=self.max_lag) if stores else None)
        self._server_ids = [server_id(str(getattr(p, "label", "?"))) for p in primaries]
        self._last_refresh = [float("-inf")] * len(primaries)
        self._refreshing = set()
        self.on_primary = [0] * len(primaries)

    async def close(self) -> None:
        """Wait for refreshes under way, then close every standby's store."""
        pending, self._pending = list(self._pending), set()
        for job in pending:
            with contextlib.suppress(Exception):  # a refresh that failed has nothing to clean up
                await agather(job)
        stores, self._stores, self._trackers = self._stores, [], []
        for group in stores:
            for store in group:
                await store.close()

    def after_fork_in_child(self) -> None:
        """Forget inherited pools and refreshes (their threads or tasks did not survive the fork)."""
        for group in self._stores:
            for store in group:
                store.after_fork_in_child()
        self._pending = set()
        self._refreshing = set()

    def has_replicas(self, index: int) -> bool:
        """True if server ``index`` has standbys this backend can route to."""
        return index < len(self._trackers) and self._trackers[index] is not None

    def server_id(self, index: int) -> int:
        """The id of server ``index`` in timelines (`hvcore._replicas.server_id` of its label)."""
        return self._server_ids[index]

    def pick(self, index: int, shards: Collection[int], timeline: Timeline) -> ReplicaChoice | None:
        """A standby of server ``index`` for a read of ``shards``, or None (read from the primary).

        The standby is up, within ``max_lag``, and the shards this timeline wrote since it last replayed are
        returned as ``pinned`` (they go to the primary). Starts a background refresh when the positions are older
        than the refresh interval.
        """
        tracker = self._trackers[index] if index < len(self._trackers) else None
        if tracker is None:
            return None
        now = time.monotonic()
        if now - self._last_refresh[index] >= self.interval and index not in self._refreshing:
            self._start_refresh(index, now)
        server = self._server_ids[index]
        needs = {shard: timeline.need(shard, server) for shard in shards}
        wanted = [n for n in needs.values() if n is not None and n != PIN]
        number = tracker.choose(now, max(wanted) if wanted and len(wanted) == len(needs) else None)
        if number is None:
            self.on_primary[index] += 1
            if metrics.on:
                self._count_fallback(index, None, self._no_standby_reason(tracker, now, bool(wanted)))
            return None
        replayed = tracker.replicas[number].replayed or 0
        pinned = frozenset(shard for shard, need in needs.items() if need is not None and need > replayed)
        if len(pinned) == len(needs):
            self.on_primary[index] += 1
            if metrics.on:
                self._count_fallback(index, number, "read_your_writes")
            return None
        return ReplicaChoice(self._stores[index][number], number, pinned)

    def failed(self, index: int, choice: ReplicaChoice, error: BaseException) -> None:
        """A read on ``choice`` failed: a standby that cannot be reached is skipped until a refresh finds it again."""
        tracker = self._trackers[index] if index < len(self._trackers) else None
        if tracker is None:
            return
        if isinstance(error, ServerUnavailable | PoolTimeout | OSError):  # down, refusing, or out of connections
            tracker.mark_down(choice.number, time.monotonic(), f"{type(error).__name__}: {error}")
            reason = "down"
        else:
            tracker.replicas[choice.number].fallbacks += 1
            reason = "error"
        if metrics.on:
            self._count_fallback(index, choice.number, reason)

    def _count_fallback(self, index: int, number: int | None, reason: str) -> None:
        """Count a read meant for a standby of server ``index`` that goes to the primary (hvcore._metrics).

        ``number`` is the standby it would have used; None when no standby was usable (then ``any`` if the server
        has several).
        """
        stores = self._stores[index] if index < len(self._stores) else []
        if number is not None and number < len(stores):
            replica = str(getattr(stores[number], "label", "?"))
        else:
            replica = str(getattr(stores[0], "label", "?")) if len(stores) == 1 else "any"
        primaries = self._primaries()
        server = str(getattr(primaries[index], "label", "?")) if index < len(primaries) else "?"
        metrics.replica_fallback(server, replica, reason)

    @staticmethod
    def _no_standby_reason(tracker: LagTracker, now: float, waited: bool) -> str:
        """Why no standby was usable: ``read_your_writes`` (one is within the lag bound but behind this timeline's
        writes), ``lag`` (up but behind, or not measured yet), else ``down``."""
        states = {tracker.describe(number, now)["state"] for number in range(len(tracker.replicas))}
        if waited and "in use" in states:
            return "read_your_writes"
        if states & {"in use", "lagging", "unknown"}:
            return "lag"
        return "down"

    def _start_refresh(self, index: int, now: float) -> None:
        self._refreshing.add(index)
        self._last_refresh[index] = now
        try:
            job = aspawn(self.refresh_server, index)
        except RuntimeError:  # no event loop / the thread pool is shutting down: positions age, reads use the primary
            self._refreshing.discard(index)
            return
        self._pending.add(job)
        job.add_done_callback(self._pending.discard)

    async def refresh_server(self, index: int) -> None:
        """Read server ``index``'s primary WAL position, then each standby's replayed one (skipping standbys marked
        down until their retry time). Failures are recorded, never raised."""
        tracker = self._trackers[index] if index < len(self._trackers) else None
        try:
            if tracker is None:
                return
            started = time.monotonic()
            try:
                _, lsn = await self._primaries()[index].wal_position()
            except Exception:  # the primary is down: reads go there and fail there, with its error
                return
            tracker.add_primary(started, lsn)
            for number, store in enumerate(self._stores[index]):
                state = tracker.replicas[number]
                if state.down_until > time.monotonic():
                    continue
                try:
                    in_recovery, replayed = await store.wal_position()
                except Exception as exc:
                    tracker.mark_down(number, time.monotonic(), f"{type(exc).__name__}: {exc}")
                    continue
                if not in_recovery:
                    tracker.mark_down(number, time.monotonic(), "not a standby (promoted?): not read from")
                else:
                    tracker.add_replica(number, time.monotonic(), replayed)
        finally:
            self._last_refresh[index] = time.monotonic() if tracker is not None else self._last_refresh[index]
            self._refreshing.discard(index)

    async def refresh(self, *, settle: bool = False) -> None:
        """Refresh every server's positions now (one after the other).

        With ``settle``, while a standby has not replayed past any primary position read so far (a first refresh
        while the primary is busy, or WAL inserted but not flushed yet: the WAL writer flushes every 200 ms by
        default), refresh again up to `SETTLE_ROUNDS` times, 0.1 s apart, which tells its lag.
        """
        for round_ in range(SETTLE_ROUNDS + 1 if settle else 1):
            if round_:
                if not any(r["lag_seconds"] is None and r["state"] != "down" for r in self._described()):
                    return
                await asleep(0.1)
            for index in range(len(self._trackers)):
                if self._trackers[index] is not None:
                    await self.refresh_server(index)

    def _described(self) -> list[dict[str, Any]]:
        return [r for index in range(len(self._trackers)) for r in self.describe(index)]

    async def note_write(self, index: int, shard_id: int, timeline: Timeline, *, carried: bool = False) -> None:
        """Record in ``timeline`` the WAL position of a write to ``shard_id`` just done on server ``index``'s primary;
        a primary that cannot tell pins the shard to it until the position expires.

        ``carried``: the write went through the primary's store in one exchange that brought the position back
        (``written_position()``, see `attach`): no round trip. Otherwise, or when that position is unknown, the
        position is read now (one round trip).
        """
        if not self.has_replicas(index):
            return
        primary = self._primaries()[index]
        lsn = primary.written_position() if carried and hasattr(primary, "written_position") else None
        if lsn is None:
            try:
                _, lsn = await primary.wal_position()
            except Exception:  # the write is done; what is unknown is only when standbys have it
                lsn = PIN
        timeline.note(shard_id, self._server_ids[index], lsn)

    def describe(self, index: int) -> list[dict[str, Any]]:
        """Server ``index``'s standbys for ``status()``: label, state, lag (seconds, bytes), reads, fall-backs."""
        tracker = self._trackers[index] if index < len(self._trackers) else None
        if tracker is None:
            return []
        now = time.monotonic()
        return [tracker.describe(number, now) for number in range(len(tracker.replicas))]
