"""Where moved shards live, as the `Datastore` sees it: following `ShardMoved`, reloading placement, moving shards.

A shard move is run by the backend (`SupportsShardMoves.shard_mover()`, see ``hvbackend_postgres._move``); this
module is the façade's side: it picks source and target stores, applies the new placement to the in-process
`ShardMap`, and follows a `ShardMoved` refusal from a server that no longer serves a shard (reload, retry on the
new server).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

from hvcore._attempts import one_attempt_per_call
from hvcore._backend import MoveProgress, MoveReport, ShardMover, SupportsShardMoves
from hvcore._distributed import move_within_cluster
from hvcore._metrics import metrics
from hvcore._shardmap import ShardMap, format_ranges
from hvcore.errors import MoveError, ShardMoved, ShardNotFound

__all__ = [
    "MAX_HOPS",
    "AsyncPlacementMixin",
    "MoveProgress",
    "MoveReport",
    "PlacementFollower",
    "PlacementMixin",
    "ShardMover",
    "canonical_identity",
    "export_map",
    "match_identity",
    "mover_of",
    "plan_moves",
    "shared_databases_text",
]

MAX_HOPS = 8  # ShardMoved refusals followed by one call before giving up (a chain of moves)

_T = TypeVar("_T")

# Set by `AsyncPlacementMixin.move_shard` around the worker thread that runs the move (the thread runs in a copy of
# the caller's context): set once the caller is cancelled, so that the mover stops at its next step (`_stoppable`)
_STOP_MOVE: ContextVar[threading.Event | None] = ContextVar("hv_stop_move", default=None)
STOPPABLE_PHASES = ("prepare", "copy", "catchup", "fence", "verify")  # before the switch begins: nothing committed


def _stoppable(shard_id: int, progress: MoveProgress | None) -> MoveProgress | None:
    """``progress``, checking first at each step whether the move's caller was cancelled (`_STOP_MOVE`): then
    `MoveError` stops the mover there, before the switch (a step of ``switch`` at 0 or earlier), leaving the move
    interrupted (resumable, or undone by ``rollback_move``). From the switch on the move goes to its end."""
    stop = _STOP_MOVE.get()
    if stop is None:
        return progress

    def step(phase: str, done: int, total: int) -> None:
        if stop.is_set() and (phase in STOPPABLE_PHASES or (phase == "switch" and done == 0)):
            raise MoveError(
                f"the move of shard {shard_id} was stopped in phase {phase} because its caller was cancelled; the "
                "source still serves the shard: run move_shard again to resume, or rollback_move to undo it"
            )
        if progress is not None:
            progress(phase, done, total)

    return step


def canonical_identity(identity: str) -> str:
    """A database identity ("system/start/dbname/oid") with its start time as UTC microseconds
    (``2026-11-30T09:00:00.000001Z``, what `hvbackend_postgres._move.identity_text` writes now); forwarding stubs
    written by earlier releases hold the start time in their session's TimeZone (``2026-11-30T10:00:00.000001+01:00``,
    microseconds left out when zero), rewritten here. Anything else is returned as it is."""
    parts = identity.split("/", 2)
    if len(parts) < 3 or parts[1].endswith("Z"):
        return identity
    try:
        start = datetime.datetime.fromisoformat(parts[1])
    except ValueError:
        return identity
    if start.tzinfo is None:
        return identity
    utc = start.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{parts[0]}/{utc}/{parts[2]}"


def match_identity(identity: str, known: Mapping[str, str]) -> str | None:
    """The label in ``known`` (label → database identity, "system/start/dbname/oid") reaching the database
    ``identity`` names, or None: the exact identity first; else the one entry whose identity matches without the
    server's start time (the target restarted since the move), if only one does. Both sides are compared in
    `canonical_identity` form (a stub written by an earlier release matches)."""
    identity = canonical_identity(identity)
    known = {label: canonical_identity(found) for label, found in known.items()}
    exact = [label for label, found in known.items() if found == identity]
    if len(exact) == 1:
        return exact[0]

    def stable(text: str) -> str:
        parts = text.split("/")
        return "/".join(parts[:1] + parts[2:]) if len(parts) >= 4 else text

    loose = [label for label, found in known.items() if stable(found) == stable(identity)]
    return loose[0] if len(loose) == 1 and not stable(identity).startswith("?/") else None


def mover_of(store: object) -> ShardMover:
    """The shard-move operations of a server store (`SupportsShardMoves`); `MoveError` if its backend has none."""
    if not isinstance(store, SupportsShardMoves):
        raise MoveError(
            f"the backend of {getattr(store, 'label', store)!r} cannot move shards (PostgreSQL backends can)"
        )
    return store.shard_mover()


class PlacementFollower:
    """Following moved shards (`ShardMoved` refusals), for `Datastore` and `AsyncDatastore` alike."""

    shard_map: ShardMap
    _live: Callable[[], list[Any]]

    def _placement_guard(self) -> threading.Lock:
        lock: threading.Lock | None = self.__dict__.get("_placement_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_placement_lock", threading.Lock())
        return lock

    def _versions(self) -> dict[int, int]:
        versions: dict[int, int] | None = self.__dict__.get("_placement_versions")
        if versions is None:
            versions = self.__dict__.setdefault("_placement_versions", {})
        return versions

    def _server_index(self, server: int | str) -> int:
        labels = [store.label for store in self._live()]
        if isinstance(server, int) and not isinstance(server, bool) and 0 <= server < len(labels):
            return server
        if isinstance(server, str):
            if server in labels:
                return labels.index(server)
            if server.isdigit() and int(server) < len(labels):
                return int(server)
        raise MoveError(f"unknown server {server!r}: give an index 0..{len(labels) - 1} or one of {', '.join(labels)}")

    def _apply_placement(self, shard_id: int, index: int, version: int) -> bool:
        """Point ``shard_id`` at server ``index`` if ``version`` is newer than what this process knows."""
        with self._placement_guard():
            versions = self._versions()
            if version <= versions.get(shard_id, 0):
                return False
            if self.shard_map.server_for(shard_id) != index:
                self.shard_map = self.shard_map.moved(shard_id, index)
            versions[shard_id] = version
            return True

    def _follow(self, moved: ShardMoved) -> None:
        """React to a refusal: point the shard at the server that has it now (the caller retries there)."""
        labels = [store.label for store in self._live()]
        if moved.server not in labels:
            raise ShardNotFound(
                f"shard {moved.shard_id} moved to {moved.server} (placement version {moved.version}), which is not "
                f"one of this datastore's servers ({', '.join(labels)}): add it to the config"
            ) from moved
        index = labels.index(moved.server)
        if metrics.on:
            metrics.shard_moved_followed(moved.shard_id, moved.server)
        if not self._apply_placement(moved.shard_id, index, moved.version) and (
            self.shard_map.server_for(moved.shard_id) != index
        ):
            raise moved  # an older forwarding pointer than what we know: do not loop

    def _too_many_hops(self, shard_id: int) -> ShardNotFound:
        return ShardNotFound(
            f"shard {shard_id} was forwarded {MAX_HOPS} times between servers: the placement records disagree "
            "(run `hv status` and check hypervault.placement)"
        )

    def placement_version(self, shard_id: int) -> int:
        """The placement version of ``shard_id`` this process knows (0: as configured, never moved).

        `InvalidShard` for a shard id that is not an int in range, `ShardNotFound` for an unmapped one.
        """
        self.shard_map.server_for(shard_id)
        return self._versions().get(shard_id, 0)


class PlacementMixin(PlacementFollower):
    """Moving shards and following moves, for `Datastore`."""

    @one_attempt_per_call
    def reload_placement(self) -> ShardMap:
        """Read the placement recorded on every reachable server and apply the newest entry of each shard."""
        stores = self._live()
        labels = [store.label for store in stores]
        newest: dict[int, tuple[int, str, str]] = {}
        for store in stores:
            try:
                mover = mover_of(store)
                records = getattr(mover, "placement_records", None)
                recorded = (
                    records()
                    if records is not None
                    else {shard: (label, version, "") for shard, (label, version) in mover.placement().items()}
                )
            except MoveError:
                return self.shard_map
            except Exception:  # an unreachable server: the others (and ShardMoved refusals) still tell
                continue
            for shard, (label, version, identity) in recorded.items():
                if version > newest.get(shard, (0, "", ""))[0]:
                    newest[shard] = (version, label, identity)
        for shard, (version, label, identity) in sorted(newest.items()):
            if shard not in self.shard_map:
                continue
            if label not in labels and identity:  # this config names the server otherwise (localhost, a pooler)
                label = match_identity(identity, self._known_identities()) or label
            if label in labels:
                self._apply_placement(shard, labels.index(label), version)
        return self.shard_map

    def _known_identities(self) -> dict[str, str]:
        """Label → database identity of this datastore's servers, each read once (one session each; unreachable
        servers and backends without moves left out)."""
        known: dict[str, str] | None = self.__dict__.get("_placement_identities")
        if known is None:
            known = {}
            for store in self._live():
                try:
                    known[store.label] = mover_of(store).database_identity()
                except Exception:  # unreachable, or no moves on this backend: not matched by identity
                    continue
            self.__dict__["_placement_identities"] = known
        return known

    @one_attempt_per_call
    def shared_databases(self) -> list[tuple[str, ...]]:
        """Groups of this datastore's server entries that reach one database under different names (``127.0.0.1``
        and ``localhost``, a copied entry): a misconfiguration, as a move between them would copy a shard onto
        itself. Empty when every entry names its own database; unreachable servers and backends without shard
        moves are left out."""
        found: dict[str, list[str]] = {}
        for store in self._live():
            try:
                identity = mover_of(store).database_identity()
            except Exception:  # no moves on this backend, or unreachable: hv status reports that on its own
                continue
            found.setdefault(identity, []).append(store.label)
        return [tuple(labels) for labels in found.values() if len(labels) > 1]

    @one_attempt_per_call
    def move_state(self, shard_id: int) -> dict[str, Any] | None:
        """The unfinished move of ``shard_id`` (phase, source, target, version), or None."""
        self.reload_placement()
        source = self._live()[self.shard_map.server_for(shard_id)]
        return mover_of(source).move_state(shard_id)

    @one_attempt_per_call
    def move_shard(
        self,
        shard_id: int,
        to_server: int | str,
        *,
        drop_source: bool = False,
        progress: MoveProgress | None = None,
    ) -> MoveReport:
        """Move one shard to another server while writes continue; resumes an interrupted move of it.

        ``to_server`` is a server index or label (``host:port/dbname``). Phases, reported to
        ``progress(phase, done, total)``: prepare, copy, catchup, fence, verify, switch (and drop with
        ``drop_source``). Writes to this shard pause during fence..switch only; other shards never pause.
        On a server that fronts a distributed database (a Citus coordinator), ``to_server`` may name one of its
        nodes (``host:port``): the engine's own move does it (``citus_schema_move``).

        On asyncio the move runs in a worker thread. A cancelled caller (an ``asyncio.timeout``, ``task.cancel()``,
        a ``TaskGroup`` sibling failing) stops it at its next step (a copied block, a catch-up round, a phase) if
        the switch has not begun, and the cancellation is raised once the mover has stopped: the move is then
        interrupted, resumed by ``move_shard`` or undone by ``rollback_move``. A cancellation arriving once the
        switch has begun waits for the move to end (the shard is then on the target) and is raised after it.
        """
        self.reload_placement()
        progress = _stoppable(shard_id, progress)
        within = move_within_cluster(self, shard_id, to_server, progress=progress)
        if within is not None:
            return within
        stores = self._live()
        target_index = self._server_index(to_server)
        source_index = self.shard_map.server_for(shard_id)
        target = stores[target_index]
        if source_index == target_index:
            report = MoveReport(shard_id=shard_id, source=target.label, target=target.label)
            report.version = self.placement_version(shard_id)
            report.notes.append(f"shard {shard_id} is already on {target.label}")
            if drop_source:
                for store in stores:
                    if store is not target and mover_of(store).drop_source(shard_id):
                        report.dropped_source = True
                        report.notes.append(f"dropped the old copy on {store.label}")
            return report
        try:
            report = mover_of(stores[source_index]).move_to(
                shard_id, target, drop_source=drop_source, progress=progress
            )
        except BaseException as exc:
            metrics.shard_move(source=stores[source_index].label, target=target.label, error=exc)
            raise
        metrics.shard_move(report)
        self._apply_placement(shard_id, target_index, report.version)
        identity = ""
        for index, store in enumerate(stores):
            if index not in (source_index, target_index):
                try:
                    identity = identity or mover_of(target).database_identity()
                    mover_of(store).record_placement(shard_id, target.label, report.version, identity)
                except Exception as exc:  # the source's forwarding pointer still redirects every process
                    report.notes.append(f"placement not recorded on {store.label}: {type(exc).__name__}")
        return report

    @one_attempt_per_call
    def rollback_move(self, shard_id: int) -> str:
        """Undo an interrupted move of ``shard_id`` (before its switch): the shard stays where it is."""
        self.reload_placement()
        stores = self._live()
        source = stores[self.shard_map.server_for(shard_id)]
        state = mover_of(source).move_state(shard_id)
        if state is None:
            raise MoveError(
                f"no unfinished move of shard {shard_id} on {source.label}, which serves it: nothing to roll back "
                "(to undo a finished move, move the shard back)"
            )
        labels: Mapping[str, Any] = {store.label: store for store in stores}
        target = labels.get(str(state["target"]))
        return mover_of(source).rollback(shard_id, target)


class AsyncPlacementMixin(PlacementFollower):
    """Moving shards and following moves, for `AsyncDatastore`: the operator work runs a `Datastore` on the same
    servers in a worker thread (a move is minutes of copying, not a request to interleave with others)."""

    @one_attempt_per_call
    async def reload_placement(self) -> ShardMap:
        """Read the placement recorded on every reachable server and apply the newest entry of each shard."""
        shard_map, versions = await asyncio.to_thread(self._admin, _reload)
        for shard, version in versions.items():
            self._apply_placement(shard, shard_map.server_for(shard), version)
        return self.shard_map

    @one_attempt_per_call
    async def shared_databases(self) -> list[tuple[str, ...]]:
        """Groups of this datastore's server entries that reach one database under different names (``127.0.0.1``
        and ``localhost``, a copied entry): a misconfiguration, as a move between them would copy a shard onto
        itself. Empty when every entry names its own database; unreachable servers and backends without shard
        moves are left out."""
        groups: list[tuple[str, ...]] = await asyncio.to_thread(self._admin, lambda db: db.shared_databases())
        return groups

    @one_attempt_per_call
    async def move_state(self, shard_id: int) -> dict[str, Any] | None:
        """The unfinished move of ``shard_id`` (phase, source, target, version), or None."""
        state: dict[str, Any] | None = await asyncio.to_thread(self._admin, lambda db: db.move_state(shard_id))
        return state

    @one_attempt_per_call
    async def move_shard(
        self,
        shard_id: int,
        to_server: int | str,
        *,
        drop_source: bool = False,
        progress: MoveProgress | None = None,
    ) -> MoveReport:
        """Move one shard to another server while writes continue; resumes an interrupted move of it.

        ``to_server`` is a server index or label (``host:port/dbname``). Phases, reported to
        ``progress(phase, done, total)``: prepare, copy, catchup, fence, verify, switch (and drop with
        ``drop_source``). Writes to this shard pause during fence..switch only; other shards never pause.
        On a server that fronts a distributed database (a Citus coordinator), ``to_server`` may name one of its
        nodes (``host:port``): the engine's own move does it (``citus_schema_move``).

        On asyncio the move runs in a worker thread. A cancelled caller (an ``asyncio.timeout``, ``task.cancel()``,
        a ``TaskGroup`` sibling failing) stops it at its next step (a copied block, a catch-up round, a phase) if
        the switch has not begun, and the cancellation is raised once the mover has stopped: the move is then
        interrupted, resumed by ``move_shard`` or undone by ``rollback_move``. A cancellation arriving once the
        switch has begun waits for the move to end (the shard is then on the target) and is raised after it.
        """
        stop = threading.Event()
        token = _STOP_MOVE.set(stop)  # the thread runs in a copy of this context
        try:
            mover = asyncio.ensure_future(
                asyncio.to_thread(
                    self._admin,
                    lambda db: db.move_shard(shard_id, to_server, drop_source=drop_source, progress=progress),
                )
            )
        finally:
            _STOP_MOVE.reset(token)
        try:
            report: MoveReport = await asyncio.shield(mover)
        except asyncio.CancelledError:
            stop.set()
            await _until_done(mover)  # a thread cannot be stopped but at its next step: wait for it
            with contextlib.suppress(Exception):  # it may have switched (the switch had begun): follow it
                await self.reload_placement()
            raise
        await self.reload_placement()
        return report

    @one_attempt_per_call
    async def rollback_move(self, shard_id: int) -> str:
        """Undo an interrupted move of ``shard_id`` (before its switch): the shard stays where it is."""
        undone: str = await asyncio.to_thread(self._admin, lambda db: db.rollback_move(shard_id))
        return undone

    def _admin(self, work: Callable[[Any], _T]) -> _T:
        """Run ``work(datastore)`` on a sync `Datastore` over the same servers (the async datastore provides it)."""
        raise NotImplementedError


async def _until_done(future: asyncio.Future[Any]) -> None:
    """Wait until ``future`` (a worker thread's) has ended, even if cancelled again meanwhile (then re-raised after);
    its outcome is seen (not logged as never retrieved)."""
    again: BaseException | None = None
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError as exc:
            again = exc
    if not future.cancelled():
        future.exception()
    if again is not None:
        raise again


def _reload(db: Any) -> tuple[ShardMap, dict[int, int]]:
    shard_map = db.reload_placement()
    return shard_map, {s: db.placement_version(s) for s in shard_map.shard_ids if db.placement_version(s)}


def shared_databases_text(groups: Sequence[Sequence[str]]) -> str:
    """What to tell about server entries that reach one database (`PlacementMixin.shared_databases`)."""
    named = "; ".join(" and ".join(group) for group in groups)
    return (
        f"these server entries reach the same database under different names: {named}. A move between them would "
        "copy a shard onto itself, and their shards are one set of tables. Give each [[servers]] entry its own "
        "database (or remove the duplicate entry)"
    )


def plan_moves(
    rows_per_shard: Mapping[int, int], owner: Mapping[int, int], servers: int
) -> list[tuple[int, int, int, int]]:
    """Moves that balance rows over ``servers`` servers: (shard, rows, from server, to server), greedy.

    Raises `MoveError` unless 1 ≤ ``servers`` ≤ the number of shards in ``owner`` (shard → server index).

    Shards on servers numbered ``servers`` or above are moved off first (shrinking); then, while the fullest
    and the emptiest server differ, the shard whose rows come closest to half that gap moves between them.
    """
    if servers < 1:
        raise MoveError(f"--servers must be ≥ 1, got {servers}")
    if servers > len(owner):
        raise MoveError(
            f"--servers {servers} is more servers than the map has shards ({len(owner)}): a server holds whole "
            f"shards, so at most {len(owner)} can each hold one; use --servers {len(owner)} or fewer"
        )
    load = [0] * max(servers, max(owner.values(), default=0) + 1)
    where = dict(owner)
    for shard, server in where.items():
        load[server] += rows_per_shard.get(shard, 0)
    moves: list[tuple[int, int, int, int]] = []

    def move(shard: int, to: int) -> None:
        rows = rows_per_shard.get(shard, 0)
        moves.append((shard, rows, where[shard], to))
        load[where[shard]] -= rows
        load[to] += rows
        where[shard] = to

    for shard in sorted(where, key=lambda s: -rows_per_shard.get(s, 0)):
        if where[shard] >= servers:
            move(shard, min(range(servers), key=lambda i: load[i]))
    for _ in range(10 * len(where) + 1):
        high = max(range(servers), key=lambda i: load[i])
        low = min(range(servers), key=lambda i: load[i])
        gap = load[high] - load[low]
        fits = [s for s, o in where.items() if o == high and 0 < rows_per_shard.get(s, 0) < gap]
        if not fits:
            break
        move(min(fits, key=lambda s: abs(rows_per_shard.get(s, 0) - gap / 2)), low)
    return moves


def export_map(
    shard_map: ShardMap, servers: Sequence[Mapping[str, Any]], labels: Sequence[str], fmt: str, *, version: int = 0
) -> str:
    """The shard map (one schema per shard) for Citus schema-based sharding, PgDog or as JSON; never passwords."""

    def schema(shard: int) -> str:
        return f"shard{shard:04d}"

    def node(index: int) -> tuple[str, int, str]:
        settings = servers[index]
        host = str(settings.get("host") or "localhost")
        return host, int(settings.get("port") or 5432), str(settings.get("dbname") or "postgres")

    if fmt == "json":
        data = {
            "format": "hypervault-shard-map",
            "version": version,
            "schema_pattern": "shard%04d",
            "table": "entities",
            "servers": [
                {
                    "index": i,
                    "label": labels[i],
                    "host": node(i)[0],
                    "port": node(i)[1],
                    "dbname": node(i)[2],
                    "shards": format_ranges(shard_map.shards_of(i)),
                }
                for i in range(len(labels))
            ],
            "shards": {str(shard): {"schema": schema(shard), "server": server} for shard, server in shard_map},
        }
        return json.dumps(data, indent=2) + "\n"
    if fmt == "citus":
        return _citus_script(shard_map, [node(i) for i in range(len(labels))], version)
    if fmt == "pgdog":
        lines = [f"# hypervault shard map (placement version {version}) for PgDog schema-based sharding (pgdog.toml)"]
        for i in range(len(labels)):
            host, port, dbname = node(i)
            lines += [
                "",
                "[[databases]]",
                'name = "hypervault"',
                f'host = "{host}"',
                f"port = {port}",
                f'database_name = "{dbname}"',
                f"shard = {i}",
            ]
        for shard, server in shard_map:
            lines += [
                "",
                "[[sharded_schemas]]",
                'database = "hypervault"',
                f'name = "{schema(shard)}"',
                f"shard = {server}",
            ]
        return "\n".join(lines) + "\n"
    raise MoveError(f"unknown export format {fmt!r}: expected citus, pgdog or json")


def _literal(text: str) -> str:
    """A SQL string literal (standard_conforming_strings: quotes doubled, backslashes literal)."""
    return "'" + text.replace("'", "''") + "'"


def _citus_script(shard_map: ShardMap, nodes: Sequence[tuple[str, int, str]], version: int) -> str:
    """``hv shard export --format citus``: the copying path Citus documents, as statements psql runs one by one.

    Idempotent, so a run stopped halfway can be run again: ``citus_add_node`` returns the id of a node already
    added, ``citus_schema_distribute`` only notices a schema already distributed, and each ``citus_schema_move``
    runs only when the schema is not on its node yet (Citus refuses a move to the node that holds it).
    """
    lines = [
        f"-- hypervault shard map (placement version {version}) for Citus schema-based sharding (Citus 12.0-13.x).",
        "-- The path Citus documents, which copies every row; `hv citus adopt` hands the shards over without copying.",
        "-- Before: every server preloads Citus (shared_preload_libraries = 'citus') and ran CREATE EXTENSION citus in",
        "-- its database; the shardNNNN schemas were restored on the coordinator (pg_dump --schema='shard*' | psql)",
        "-- and renamed or dropped on the servers (Citus creates each distributed schema on every worker).",
        "-- Run on the coordinator with psql, one statement at a time: psql -v ON_ERROR_STOP=1 -f this.sql",
    ]
    if len({dbname for _, _, dbname in nodes}) > 1:
        lines.append(
            "-- WARNING: the servers use different database names; Citus uses the coordinator's on every node."
        )
    lines.append("-- 1. the servers become worker nodes")
    for host, port in dict.fromkeys((h, p) for h, p, _ in nodes):
        lines.append(f"SELECT citus_add_node({_literal(host)}, {port});")
    lines.append(
        "-- 2. each logical shard's schema becomes a distributed schema (Citus copies it to a worker it picks)"
    )
    lines += [f"SELECT citus_schema_distribute({_literal(f'shard{shard:04d}')});" for shard, _ in shard_map]
    lines.append("-- 3. each schema goes to the node that served it under hypervault, unless Citus put it there")
    for shard, server in shard_map:
        schema = _literal(f"shard{shard:04d}")
        host, port, _ = nodes[server]
        held = (
            "SELECT FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid) JOIN pg_dist_node n USING (groupid) "
            f"WHERE s.logicalrelid = {_literal(f'shard{shard:04d}.entities')}::regclass "
            f"AND n.nodename = {_literal(host)} AND n.nodeport = {port}"
        )
        lines.append(
            f"SELECT citus_schema_move({schema}, {_literal(host)}, {port}, 'block_writes') WHERE NOT EXISTS ({held});"
        )
    return "\n".join(lines) + "\n"
