"""Citus schema-based sharding behind a hypervault server: adopting shards without copying, moves, status.

Each logical shard is a schema (``shard0012``), which is the unit of Citus's schema-based sharding (Citus 12.0+):
a *distributed schema* is one colocation group whose tables live on one worker node, and the coordinator routes
every statement naming the schema there. This module is what the PostgreSQL backends know about Citus:

- `check_citus_version`: the versions this code was written and tested for (12.x and 13.x; tested with 13.0.5).
- `CitusCoordinator` (``store.shard_cluster()``, the `hvcore.ShardCluster` contract): which nodes hold which
  shards (``citus_schemas``), moves between nodes (``citus_schema_move``), and **adoption**: handing shards that
  plain servers hold over to Citus once those servers are its workers, without copying a row.
- `CITUS_*_SQL` and `distribute_sql`: what provisioning does differently on a coordinator (every new shard schema is
  created and then distributed with ``citus_schema_distribute``, so its table lives on a worker, not the coordinator).
- `CITUS_SHARDS_PER_STATEMENT`: how the stores cut multi-shard statements (``get_many``, ``query``) on a Citus node
  whose shard schemas are distributed: one schema per statement. Citus routes a statement naming one distributed
  schema to the worker holding it (router planning: ``EXPLAIN`` shows ``Task Count: 1`` and the node), but plans a
  ``UNION ALL`` over several schemas by recursive planning: one distributed subplan per schema, run one after
  another, their rows collected on the coordinator as intermediate results, then the top query run over those
  (``EXPLAIN``: ``Distributed Subplan 1_1``, ``1_2``, ...). The one-schema statements of a call still go in one
  pipeline (one round trip), 16 to a transaction (`hvbackend_postgres._fanout.pieces_per_transaction`).

What Citus requires, measured on Citus 13.0.5 (see docs/moving-shards.md): ``citus_schema_distribute`` only
converts a schema *of the coordinator*; its rows are copied to a worker chosen by Citus (colocation id modulo the
number of workers, in host:port order). A schema that already lives on a worker is not known to it, and both
``CREATE SCHEMA`` on the coordinator (propagated to every worker) and the distribution (which creates the table's
"shell" on every worker) fail with "already exists" on that worker. So the documented path is a copy: dump each
schema, restore it on the coordinator, distribute (a second copy, to a worker), and ``citus_schema_move`` it back
to the worker that served it (a third copy, for the shards Citus placed elsewhere).

Adoption avoids every copy. Per shard, with ``H`` the worker holding its rows:

1. **stage** (on H, one transaction): lock ``shardNNNN.entities`` (in-flight writes finish first), count and
   checksum its rows, rename the schema to ``hv_adopt_NNNN`` and record the figures in the schema's comment.
   From here until step 4, hypervault clients still pointing at H get `NotProvisioned` for this shard (refused,
   never lost).
2. **distribute** (on the coordinator, one transaction per batch): create the schema and its empty table there and
   ``citus_schema_distribute`` it. Citus places the empty shard table (``shardNNNN.entities_<shardid>``) on
   worker ``colocation_id % workers``; the batch is ordered so that each schema's id points at its holder.
3. **relocate**: a schema placed elsewhere anyway (another process took colocation ids meanwhile, or the nodes
   are not the config's servers alone) is moved to H with ``citus_schema_move(..., 'block_writes')``: an empty
   table, so nothing but DDL.
4. **hand over** (on H, under a coordinator transaction holding ``LOCK TABLE shardNNNN.entities IN EXCLUSIVE
   MODE``, which Citus propagates to the shell tables, so every write routed by Citus waits): rows written through
   Citus into the empty shard table meanwhile are merged into the staged table, the empty table is dropped, and
   the staged table *becomes* the shard table: its indexes get Citus's shard index names, it gets the shard's name
   and owner and moves into ``shardNNNN`` (renames only: same relation, same files). Then, still under the lock,
   the coordinator reads every row of the shard (count and checksum) and must find exactly the staged figures plus
   the merged rows, or adoption stops with `MoveError`.

Every step is idempotent and the state is in the catalogs (a staged schema, a distributed schema, a placement),
so an interrupted adoption is resumed by running it again. Writing to shard tables on a worker needs Citus's
``citus.enable_manual_changes_to_shards`` (set for that one transaction); the shard's table, index and
constraint names follow Citus's ``<name>_<shardid>`` convention, read from the empty shard itself, never assumed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from hvbackend_postgres._move import MoveEndpoint
from hvbackend_postgres._schema import BODY_INDEX, TABLE, body_index_ddl, shard_ddl, shard_schema
from hvcore._backend import AdoptionReport, MoveProgress, MoveReport, NodeShard
from hvcore.errors import ConfigError, MoveError

__all__ = [
    "CITUS_COORDINATOR_SQL",
    "CITUS_EXTENSION_SQL",
    "CITUS_SHARDS_PER_STATEMENT",
    "CITUS_SHARD_SCHEMAS_SQL",
    "CITUS_UNDISTRIBUTED_SQL",
    "MAX_VERSION",
    "MIN_VERSION",
    "TESTED_VERSION",
    "CitusCoordinator",
    "CitusInfo",
    "check_citus_version",
    "distribute_sql",
    "read_citus",
    "staging_schema",
]

MIN_VERSION = (12, 0)  # schema-based sharding: citus_schema_distribute, citus_schema_move, citus_schemas
MAX_VERSION = (14, 0)  # exclusive: adoption renames shard tables following Citus internals verified on 12-13
TESTED_VERSION = "13.0.5"
STAGE_PREFIX = "hv_adopt_"
RETIRED_PREFIX = "hv_retired_"
LOCK_TIMEOUT = "10s"  # longest wait for a shard's lock while staging or handing over (in-flight writes finish)

CITUS_EXTENSION_SQL = "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'citus'"
CITUS_COORDINATOR_SQL = "SELECT citus_version(), citus_is_coordinator()"
CITUS_SHARDS_PER_STATEMENT = 1  # a store's shards_per_statement where Citus distributes the shard schemas (above)
# run only where the citus extension exists (BACKEND_CHECK_SQL says so): are shard schemas distributed here?
CITUS_SHARD_SCHEMAS_SQL = (
    "SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_schema d JOIN pg_catalog.pg_namespace n ON n.oid = d.schemaid "
    "WHERE n.nspname ~ '^shard[0-9]{4,}$')"
)
CITUS_ROW_ESTIMATES_SQL = (  # each node's statistics of its placements of distributed shard schemas' tables
    "SELECT result FROM pg_catalog.run_command_on_all_nodes($cmd$SELECT coalesce(pg_catalog.json_object_agg("
    "schemaname, n_live_tup), '{}') FROM (SELECT schemaname, max(n_live_tup) AS n_live_tup "
    "FROM pg_catalog.pg_stat_user_tables WHERE relname ~ '^entities_[0-9]+$' AND schemaname ~ '^shard[0-9]{4,}$' "
    "GROUP BY schemaname) s$cmd$) WHERE success"
)
"""One row per node of the Citus cluster (coordinator included): a JSON object of shard schema -> the live rows of
its placement there (``n_live_tup``; `citus_row_estimates` reads it). A shell table on the coordinator is named
``entities`` and counts nothing; a placement is ``entities_<shardid>``."""


def citus_row_estimates(result: str) -> dict[str, int]:
    """A node's `CITUS_ROW_ESTIMATES_SQL` result as shard schema -> rows (an unreadable result gives nothing)."""
    try:
        found = json.loads(result)
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {str(k): max(int(v), 0) for k, v in found.items() if isinstance(v, int)}


CITUS_UNDISTRIBUTED_SQL = (
    "SELECT n.nspname FROM pg_catalog.pg_namespace n WHERE n.nspname = ANY(%s) "
    "AND NOT EXISTS (SELECT FROM pg_catalog.pg_dist_schema d WHERE d.schemaid = n.oid)"
)
# schema → shard id, shard table, node (pg_dist_* directly: citus_shards would ask every worker for sizes)
_PLACEMENT_SQL = """
SELECT n.nspname, sh.shardid, nd.nodename, nd.nodeport
FROM pg_catalog.pg_dist_schema d
JOIN pg_catalog.pg_namespace n ON n.oid = d.schemaid
JOIN pg_catalog.pg_dist_partition p ON p.colocationid = d.colocationid
JOIN pg_catalog.pg_class c ON c.oid = p.logicalrelid AND c.relname = %s
JOIN pg_catalog.pg_dist_shard sh ON sh.logicalrelid = p.logicalrelid
JOIN pg_catalog.pg_dist_placement pl ON pl.shardid = sh.shardid
JOIN pg_catalog.pg_dist_node nd ON nd.groupid = pl.groupid AND nd.noderole = 'primary'
WHERE n.nspname = ANY(%s)
"""
_SIZES_SQL = """
SELECT sc.schema_name::text, sh.nodename, sh.nodeport, sum(sh.shard_size)::bigint
FROM citus_schemas sc JOIN citus_shards sh ON sh.colocation_id = sc.colocation_id
WHERE sc.schema_name::text = ANY(%s) GROUP BY 1, 2, 3
"""
# the nodes new distributed schemas may be placed on, in the order Citus picks from (host name, then port)
_PLACEMENT_NODES_SQL = (
    "SELECT nodename, nodeport FROM pg_catalog.pg_dist_node WHERE isactive AND noderole = 'primary' "
    'AND shouldhaveshards AND groupid <> 0 ORDER BY nodename COLLATE "C", nodeport'
)
_WORKERS_SQL = (
    "SELECT nodename, nodeport FROM pg_catalog.pg_dist_node WHERE isactive AND noderole = 'primary' AND groupid <> 0 "
    'ORDER BY nodename COLLATE "C", nodeport'
)
_IDENTITY_SQL = "SELECT system_identifier::text FROM pg_catalog.pg_control_system()"
_NODE_IDENTITIES_SQL = (
    "SELECT nodename, nodeport, success, result FROM run_command_on_workers("
    "'SELECT system_identifier FROM pg_catalog.pg_control_system()')"
)
_CHECKSUM = (
    "SELECT count(*), coalesce(sum(hashtextextended(id::text || ' ' || kind::text || ' ' || body::text, 0)), 0)"
    "::numeric FROM {}"
)
# every table, view, ... in these schemas: (schema, name, relkind)
_RELATIONS_SQL = (
    "SELECT n.nspname, c.relname::text, c.relkind::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
    "ON n.oid = c.relnamespace WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
)
# what the hand-over needs to know about the empty shard table ($1) and the staged table ($2), in one round trip
_SWAP_FACTS_SQL = """
SELECT (SELECT array_agg(ARRAY[attname::text, format_type(atttypid, atttypmod), attnotnull::text] ORDER BY attnum)
          FROM pg_catalog.pg_attribute WHERE attrelid = t.empty AND attnum > 0 AND NOT attisdropped),
       (SELECT array_agg(ARRAY[attname::text, format_type(atttypid, atttypmod), attnotnull::text] ORDER BY attnum)
          FROM pg_catalog.pg_attribute WHERE attrelid = t.staged AND attnum > 0 AND NOT attisdropped),
       (SELECT relowner::regrole::text FROM pg_catalog.pg_class WHERE oid = t.empty),
       (SELECT array_agg(c.relname::text ORDER BY 1) FROM pg_catalog.pg_index i
          JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = t.empty),
       (SELECT array_agg(c.relname::text ORDER BY 1) FROM pg_catalog.pg_index i
          JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = t.staged)
FROM (SELECT %s::regclass AS empty, %s::regclass AS staged) t
"""
Conn = psycopg.Connection[Any]


def staging_schema(shard_id: int) -> str:
    """Where adoption keeps a shard's table on its server between staging and hand-over: ``hv_adopt_0012``."""
    return f"{STAGE_PREFIX}{shard_id:04d}"


def _version(text: str) -> tuple[int, int] | None:
    match = re.search(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_citus_version(extversion: str, library: str | None, where: str) -> str:
    """Check the Citus on a server; return its library version (``"13.0.5"``), or raise `ConfigError`.

    ``extversion`` is the installed extension's version (``pg_extension.extversion``, e.g. ``"13.0-1"``),
    ``library`` what ``citus_version()`` says (``"Citus 13.0.5 on x86_64..."``; None if not asked). Supported:
    Citus 12.0 (schema-based sharding) up to, not including, 14.0; the extension must be updated to the loaded
    library's version (``ALTER EXTENSION citus UPDATE``).
    """
    ext = _version(extversion)
    if ext is None:
        raise ConfigError(f"{where} reports Citus extension version {extversion!r}, which hypervault cannot read")
    lowest, highest = ".".join(map(str, MIN_VERSION)), ".".join(map(str, MAX_VERSION))
    if ext < MIN_VERSION:
        raise ConfigError(
            f"{where} has the Citus extension at version {extversion}: hypervault needs Citus {lowest} or newer "
            f"(schema-based sharding) and below {highest} (tested with {TESTED_VERSION}); update it "
            "(install a newer Citus, restart, ALTER EXTENSION citus UPDATE)"
        )
    if ext >= MAX_VERSION:
        raise ConfigError(
            f"{where} has Citus {extversion}: hypervault supports Citus {lowest} up to, not including, {highest} "
            f"(tested with {TESTED_VERSION}); adoption renames shard tables as those versions name them"
        )
    if library is None:
        return extversion
    lib = _version(library)
    full = re.search(r"Citus (\d+\.\d+[\w.-]*)", library)
    if lib is not None and lib != ext:
        raise ConfigError(
            f"{where} loads the Citus {lib[0]}.{lib[1]} library but its extension is at {extversion}: "
            "run ALTER EXTENSION citus UPDATE there"
        )
    return full.group(1) if full else library


@dataclass(frozen=True, slots=True)
class CitusInfo:
    """What a server says about Citus: the extension's and library's versions, and whether it is the coordinator."""

    extversion: str
    version: str
    coordinator: bool


def read_citus(conn: Conn, where: str) -> CitusInfo | None:
    """Citus on the server behind ``conn`` (checked with `check_citus_version`), or None if not installed."""
    row = conn.execute(CITUS_EXTENSION_SQL).fetchone()
    if row is None:
        return None
    extversion = str(row[0])
    check_citus_version(extversion, None, where)  # before calling functions an old extension may lack
    info = conn.execute(CITUS_COORDINATOR_SQL).fetchone()
    assert info is not None
    version = check_citus_version(extversion, str(info[0]), where)
    return CitusInfo(extversion, version, bool(info[1]))


def distribute_sql(schemas: Sequence[str]) -> str:
    """One statement distributing these schemas (those not distributed yet), in name order, on a coordinator."""
    names = sql.SQL(", ").join(sql.Literal(s) for s in schemas)
    return (
        sql.SQL(
            "SELECT citus_schema_distribute(n.oid::regnamespace) FROM pg_catalog.pg_namespace n "
            "WHERE n.nspname IN ({}) AND NOT EXISTS (SELECT FROM pg_catalog.pg_dist_schema d WHERE d.schemaid = n.oid) "
            "ORDER BY n.nspname"
        )
        .format(names)
        .as_string(None)
    )


def _node(host: str, port: int) -> str:
    return f"{host}:{port}"


def _split_node(node: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    if not host or not port.isdigit():
        raise MoveError(f"node {node!r} is not host:port")
    return host, int(port)


def _endpoint(label: str) -> tuple[str, int]:
    """``host:port`` of a store label (``host:port/dbname``)."""
    return _split_node(label.rsplit("/", 1)[0])


def _q(schema: str, name: str = TABLE) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def _checksum(conn: Conn, table: sql.Composable) -> tuple[int, int]:
    row = conn.execute(sql.SQL(_CHECKSUM).format(table)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _staged_with_body_index(conn: Conn, shards: Sequence[int]) -> set[int]:
    """The shards among ``shards`` whose staged table (``hv_adopt_NNNN``) on this holder has the body index."""
    names = {staging_schema(s): s for s in shards}
    rows = conn.execute(
        "SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = %s AND n.nspname = ANY(%s)",
        (BODY_INDEX, list(names)),
    ).fetchall()
    return {names[str(r[0])] for r in rows}


@dataclass(slots=True)
class _Holder:
    """A config server holding shards, as adoption sees it: its store, node and the shards to hand over."""

    store: MoveEndpoint
    node: str = ""
    shards: list[int] = field(default_factory=list)


class CitusCoordinator:
    """The Citus cluster behind one server (its coordinator): the `hvcore.ShardCluster` of the PostgreSQL backends."""

    __module__ = "hvbackend_postgres"

    def __init__(self, store: MoveEndpoint, info: CitusInfo) -> None:
        self.store = store
        self.info = info

    def __repr__(self) -> str:
        return f"<CitusCoordinator {self.store.label} Citus {self.info.version}>"

    @contextlib.contextmanager
    def _conn(self, store: MoveEndpoint | None = None) -> Iterator[Conn]:
        conn = (store or self.store)._admin()
        try:
            yield conn
        finally:
            conn.close()

    def describe(self) -> str:
        """``"Citus 13.0.5"``."""
        return f"Citus {self.info.version}"

    def nodes(self) -> list[str]:
        """The active primary workers, ``host:port``, in Citus's order (host name, then port)."""
        with self._conn() as conn:
            return [_node(str(h), int(p)) for h, p in conn.execute(_WORKERS_SQL).fetchall()]

    def _placement(self, conn: Conn, schemas: Sequence[str]) -> dict[str, tuple[int, str]]:
        """Distributed schema → (Citus shard id of its ``entities`` table, node)."""
        rows = conn.execute(_PLACEMENT_SQL, (TABLE, list(schemas))).fetchall()
        return {str(r[0]): (int(r[1]), _node(str(r[2]), int(r[3]))) for r in rows}

    def placement(self, shard_ids: Sequence[int]) -> dict[int, NodeShard]:
        """Node and size (``citus_schemas`` with ``citus_shards``) of each of these shards Citus distributes."""
        names = {shard_schema(s): s for s in shard_ids}
        with self._conn() as conn:
            rows = conn.execute(_SIZES_SQL, (list(names),)).fetchall()
        return {names[str(r[0])]: NodeShard(names[str(r[0])], _node(str(r[1]), int(r[2])), int(r[3])) for r in rows}

    # -- moves between nodes ---------------------------------------------------------------------------------

    def move_to_node(self, shard_id: int, node: str, *, progress: MoveProgress | None = None) -> MoveReport:
        """Move ``shard_id`` to worker ``node`` (``host:port``) with ``citus_schema_move`` (logical replication:
        writes go on during the copy and pause only while Citus switches the placement)."""
        started = time.perf_counter()
        schema = shard_schema(shard_id)
        nodes = self.nodes()
        if node not in nodes:
            raise MoveError(f"{node!r} is not a worker of the Citus cluster at {self.store.label}: {', '.join(nodes)}")
        with self._conn() as conn:
            where = self._placement(conn, [schema]).get(schema)
            if where is None:
                raise MoveError(
                    f"shard {shard_id} ({schema}) is not a distributed schema on {self.store.label}: "
                    "run hv init (new shards) or hv citus adopt first"
                )
            report = MoveReport(shard_id=shard_id, source=where[1], target=node, engine=self.describe())
            if where[1] == node:
                report.notes.append(f"shard {shard_id} is already on {node}")
                return report
            step: MoveProgress = progress or (lambda phase, done, total: None)
            step("citus_schema_move", 0, 1)
            host, port = _split_node(node)
            moved = time.perf_counter()
            try:
                conn.execute("SELECT citus_schema_move(%s::regnamespace, %s, %s)", (schema, host, port))
            except psycopg.Error as exc:
                raise MoveError(f"citus_schema_move of {schema} to {node} failed: {exc}") from None
            report.copy_seconds = time.perf_counter() - moved
            step("citus_schema_move", 1, 1)
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_q(schema))).fetchone()
            report.rows = int(row[0]) if row else 0
            after = self._placement(conn, [schema]).get(schema)
        if after is None or after[1] != node:
            raise MoveError(f"citus_schema_move returned but {schema} is on {after and after[1]}, not {node}")
        report.seconds = time.perf_counter() - started
        report.notes.append("moved by citus_schema_move (logical replication; Citus drops the old placement itself)")
        return report

    # -- adoption ---------------------------------------------------------------------------------------------

    def adopt(
        self,
        holders: Mapping[int, Any],
        *,
        progress: MoveProgress | None = None,
        batch: int = 64,
    ) -> AdoptionReport:
        """Hand the shards that plain servers hold over to this Citus cluster without copying them (see module).

        ``holders``: shard id → the store of the server holding it (a PostgreSQL store of the same backend). Those
        servers must preload Citus and have its extension in this database; the ones that are not worker nodes
        yet are added (``citus_add_node``). Resumable: run it again after an interruption. ``progress(phase,
        done, total)`` counts shards: ``stage``, ``distribute``, ``relocate`` and ``hand-over`` as each step of a
        batch starts, ``adopt`` when a batch is done.
        """
        if batch < 1:
            raise ConfigError(f"batch must be ≥ 1, got {batch}")
        started = time.perf_counter()
        step: MoveProgress = progress or (lambda phase, done, total: None)
        report = AdoptionReport(coordinator=self.store.label, engine=self.describe(), shards=len(holders))
        tick = time.perf_counter()
        with self._conn() as coord:
            servers = self._check(coord, holders, report)
            report.phases["check"] = time.perf_counter() - tick
            order = _interleave([h.shards for h in servers.values()])
            total = len(order)
            done = 0
            step("adopt", 0, total)
            for start in range(0, total, batch):
                chunk = order[start : start + batch]
                self._adopt_batch(coord, chunk, holders, servers, report, functools.partial(_at, step, done, total))
                done += len(chunk)
                step("adopt", done, total)
        report.seconds = time.perf_counter() - started
        return report

    def _check(self, coord: Conn, holders: Mapping[int, Any], report: AdoptionReport) -> dict[str, _Holder]:
        """Versions, databases, the holders as worker nodes (added if ready); holders by store label."""
        if not self.info.coordinator:
            raise ConfigError(f"{self.store.label} is a Citus worker, not the coordinator: give the coordinator")
        coord.execute("SELECT recover_prepared_transactions()")  # a killed earlier run may have left some
        coord_db = coord.execute("SELECT current_database()").fetchone()
        backend = self.store.backend
        servers: dict[str, _Holder] = {}
        for shard, store in sorted(holders.items()):
            if store.backend != backend:
                raise ConfigError(f"{store.label} stores {store.backend} bodies, the coordinator's config {backend}")
            servers.setdefault(store.label, _Holder(store)).shards.append(shard)
        identities = {}
        for label, holder in servers.items():
            with self._conn(holder.store) as conn:
                citus = read_citus(conn, label)
                if citus is None:
                    raise ConfigError(
                        f"{label} holds shards but has no Citus: add shared_preload_libraries = 'citus' to its "
                        f"postgresql.conf, restart it, run CREATE EXTENSION citus in its database, then adopt again"
                    )
                if _version(citus.version) != _version(self.info.version):
                    raise ConfigError(
                        f"{label} runs Citus {citus.version}, the coordinator {self.info.version}: use one version"
                    )
                if conn.execute("SELECT current_database()").fetchone() != coord_db:
                    raise ConfigError(
                        f"{label} keeps the shards in another database than the coordinator's "
                        f"({coord_db[0] if coord_db else '?'}): Citus uses one database name on every node"
                    )
                self._check_moves(conn, label)
                identity = conn.execute(_IDENTITY_SQL).fetchone()
                assert identity is not None
                identities[label] = str(identity[0])
        own = coord.execute(_IDENTITY_SQL).fetchone()
        if own is not None and str(own[0]) in identities.values():
            raise ConfigError(
                f"a server of the config is the coordinator {self.store.label} itself: its schemas are local tables "
                "there; give a coordinator that is not one of the config's servers"
            )
        for label, node in self._match_nodes(coord, identities).items():
            servers[label].node = node
        missing = [label for label, holder in servers.items() if not holder.node]
        for label in missing:
            host, port = _endpoint(label)
            coord.execute("SELECT citus_add_node(%s, %s)", (host, port))
            report.notes.append(f"added {label} as worker node {host}:{port}")
        if missing:
            for label, node in self._match_nodes(coord, identities).items():
                servers[label].node = node
        for label, holder in servers.items():
            if not holder.node:
                raise ConfigError(f"{label} was added to the Citus cluster but is not an active worker node")
            report.nodes[label] = holder.node
        if backend == "hstore":
            coord.execute("CREATE EXTENSION IF NOT EXISTS hstore")
        return servers

    @staticmethod
    def _check_moves(conn: Conn, label: str) -> None:
        if conn.execute("SELECT to_regclass('hypervault.moves') IS NULL").fetchone() == (True,):
            return
        rows = conn.execute("SELECT shard, phase FROM hypervault.moves WHERE phase <> 'switched' ORDER BY 1").fetchall()
        if rows:
            shard, phase = rows[0]
            raise MoveError(
                f"shard {shard} has an unfinished hypervault move from {label} (phase {phase}): finish it "
                f"(hv shard move {shard} --resume) or roll it back (--rollback) before adopting"
            )

    @staticmethod
    def _match_nodes(coord: Conn, identities: Mapping[str, str]) -> dict[str, str]:
        """Config server label → the worker node that is that very server (same ``system_identifier``)."""
        rows = coord.execute(_NODE_IDENTITIES_SQL).fetchall()
        by_identity: dict[str, list[str]] = {}
        for host, port, ok, result in rows:
            if ok:
                by_identity.setdefault(str(result), []).append(_node(str(host), int(port)))
        matched: dict[str, str] = {}
        for label, identity in identities.items():
            nodes = by_identity.get(identity, [])
            if len(nodes) > 1:  # clones share an identifier: the port tells them apart
                nodes = [n for n in nodes if _split_node(n)[1] == _endpoint(label)[1]] or nodes
            if len(nodes) == 1:
                matched[label] = nodes[0]
            elif nodes:
                raise ConfigError(f"{label} matches several Citus worker nodes ({', '.join(nodes)}): cannot tell which")
        return matched

    def _adopt_batch(
        self,
        coord: Conn,
        shards: Sequence[int],
        holders: Mapping[int, Any],
        servers: Mapping[str, _Holder],
        report: AdoptionReport,
        phase: Callable[[str], None],
    ) -> None:
        schemas = [shard_schema(s) for s in shards]
        distributed = set(self._placement(coord, schemas))
        by_server: dict[str, list[int]] = {}
        for shard in shards:
            by_server.setdefault(holders[shard].label, []).append(shard)
        # 1. stage: each holder sets its shards' tables aside (what an earlier run staged stays staged)
        phase("stage")
        tick = time.perf_counter()
        staged: dict[int, tuple[int, int]] = {}
        with_body: set[int] = set()  # staged tables with the body index: the coordinator's table gets it too
        for label, owned in by_server.items():
            with self._conn(servers[label].store) as conn:
                staged.update(self._stage(conn, owned, distributed, report))
                with_body |= _staged_with_body_index(conn, owned)
            for other_label, other in servers.items():  # stubs of shards moved away, under the names Citus needs
                if other_label != label:
                    with self._conn(other.store) as conn:
                        self._retire(conn, [s for s in owned if shard_schema(s) not in distributed], report)
        _add(report.phases, "stage", tick)
        # 2. distribute the rest, in the order that puts each on its holder
        phase("distribute")
        tick = time.perf_counter()
        todo = [s for s in shards if shard_schema(s) not in distributed]
        if todo:
            self._distribute(coord, todo, {s: servers[holders[s].label].node for s in todo}, with_body)
        _add(report.phases, "distribute", tick)
        # 3. relocate empty placements Citus put elsewhere
        phase("relocate")
        tick = time.perf_counter()
        placement = self._placement(coord, schemas)
        for shard in shards:
            schema = shard_schema(shard)
            want = servers[holders[shard].label].node
            if placement[schema][1] != want and shard in staged:
                host, port = _split_node(want)
                coord.execute(
                    "SELECT citus_schema_move(%s::regnamespace, %s, %s, 'block_writes')", (schema, host, port)
                )
                report.relocated += 1
        placement = self._placement(coord, schemas)
        _add(report.phases, "relocate", tick)
        # 4. hand over: the staged tables become the shard tables, verified through the coordinator
        phase("hand-over")
        tick = time.perf_counter()
        for label, owned in by_server.items():
            mine = [s for s in owned if s in staged]
            if mine:
                self._hand_over(coord, servers[label], mine, staged, placement, report)
        report.already += sum(1 for s in shards if s not in staged and shard_schema(s) in distributed)
        _add(report.phases, "hand-over", tick)

    def _stage(
        self,
        conn: Conn,
        shards: Sequence[int],
        distributed: set[str],
        report: AdoptionReport,
    ) -> dict[int, tuple[int, int]]:
        """Set the holder's tables aside (``hv_adopt_NNNN``) with their figures; shard → (rows, checksum) staged.

        Shards with nothing to stage (already adopted, or held by no server) are left out.
        """
        names = [shard_schema(s) for s in shards] + [staging_schema(s) for s in shards]
        present = {
            str(r[0]): str(r[1] or "")
            for r in conn.execute(
                "SELECT n.nspname, obj_description(n.oid, 'pg_namespace') FROM pg_catalog.pg_namespace n "
                "WHERE n.nspname = ANY(%s)",
                (names,),
            ).fetchall()
        }
        staged: dict[int, tuple[int, int]] = {}
        to_stage: list[int] = []
        for shard in shards:
            stage = staging_schema(shard)
            if stage in present:
                figures = json.loads(present[stage] or "{}")
                staged[shard] = (int(figures["rows"]), int(figures["checksum"]))
            elif shard_schema(shard) in distributed:
                continue  # adopted before (the schema here is Citus's now)
            elif shard_schema(shard) in present:
                to_stage.append(shard)
            else:
                report.empty += 1  # no server had it: Citus creates it empty
        if not to_stage:
            return staged
        schemas = [shard_schema(s) for s in to_stage]
        relations = conn.execute(_RELATIONS_SQL, (schemas,)).fetchall()
        tables = {str(r[0]): str(r[2]) for r in relations if r[1] == TABLE}
        for shard in to_stage:
            schema = shard_schema(shard)
            if tables.get(schema) != "r":
                found = {"v": "a forwarding stub of a moved shard", None: "none"}.get(
                    tables.get(schema), "another kind"
                )
                raise MoveError(
                    f"shard {shard} on {self._label_of(conn)} has no {schema}.{TABLE} table ({found}): "
                    "its placement is stale, run hv status"
                )
        others = sorted({f"{r[0]}.{r[1]}" for r in relations if r[1] != TABLE})
        if others:
            raise MoveError(
                f"shard schemas on {self._label_of(conn)} hold other relations than {TABLE} ({', '.join(others)}): "
                "hv citus adopt hands over the entities table only"
            )
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            locked = sql.SQL(", ").join(_q(schema) for schema in schemas)
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(locked))  # in-flight writes end
            ddl: list[sql.Composable] = []
            for shard in to_stage:
                schema, stage = shard_schema(shard), staging_schema(shard)
                rows, checksum = _checksum(conn, _q(schema))
                figures = json.dumps({"rows": rows, "checksum": checksum, "by": "hv citus adopt"})
                ddl.append(
                    sql.SQL("ALTER SCHEMA {} RENAME TO {};").format(sql.Identifier(schema), sql.Identifier(stage))
                )
                ddl.append(sql.SQL("COMMENT ON SCHEMA {} IS {};").format(sql.Identifier(stage), sql.Literal(figures)))
                staged[shard] = (rows, checksum)
            conn.execute(sql.SQL("").join(ddl))
        return staged

    @staticmethod
    def _label_of(conn: Conn) -> str:
        info = conn.info
        return f"{info.host}:{info.port}/{info.dbname}"

    @staticmethod
    def _retire(conn: Conn, shards: Sequence[int], report: AdoptionReport) -> None:
        """On a server that does not hold these shards: rename leftover schemas of theirs (forwarding stubs of
        moved shards) out of the way of the schema and shell table Citus creates on every worker."""
        if not shards:
            return
        rows = conn.execute(
            "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname = ANY(%s)", ([shard_schema(s) for s in shards],)
        ).fetchall()
        for (name,) in rows:
            retired = RETIRED_PREFIX + str(name).removeprefix("shard")
            conn.execute(
                sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(str(name)), sql.Identifier(retired))
            )
            report.notes.append(f"renamed the leftover {name} on {CitusCoordinator._label_of(conn)} to {retired}")

    def _distribute(
        self, coord: Conn, shards: Sequence[int], want: Mapping[int, str], with_body: Collection[int] = ()
    ) -> None:
        """Create and distribute these schemas in one transaction, ordered so that each lands on its holder; the
        shards in ``with_body`` get the body index (their staged tables have it, and the hand-over needs every index
        of a staged table on Citus's empty one).

        Citus puts a new distributed schema on placement node ``colocation_id % nodes`` (host name, then port order;
        ``EmptySingleShardTableColocationDecideNodeId`` in Citus 12-13), and colocation ids come from one sequence:
        the batch follows that rotation. A guess the cluster spoils (ids taken meanwhile) costs an empty move.
        """
        ext = None
        if self.store.backend == "hstore":
            row = coord.execute(
                "SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n "
                "ON n.oid = e.extnamespace WHERE e.extname = 'hstore'"
            ).fetchone()
            ext = str(row[0]) if row else "public"
        with coord.transaction():
            nodes = [_node(str(h), int(p)) for h, p in coord.execute(_PLACEMENT_NODES_SQL).fetchall()]
            seq = coord.execute("SELECT last_value, is_called FROM pg_catalog.pg_dist_colocationid_seq").fetchone()
            next_id = int(seq[0]) + (1 if seq[1] else 0) if seq else 0
            queue = list(shards)
            ordered: list[int] = []
            while queue:
                slot = nodes[(next_id + len(ordered)) % len(nodes)] if nodes else ""
                pick = next((s for s in queue if want[s] == slot), queue[0])
                queue.remove(pick)
                ordered.append(pick)
            body = {
                s: body_index_ddl(shard_schema(s), ext, concurrently=False).as_string(None) + ";" for s in with_body
            }
            coord.execute("".join(shard_ddl(s, self.store.backend, ext) + body.get(s, "") for s in ordered))
            coord.execute(
                "SELECT citus_schema_distribute(name::regnamespace) FROM unnest(%s::text[]) WITH ORDINALITY "
                "AS t(name, n) ORDER BY n",
                ([shard_schema(s) for s in ordered],),
            )

    def _hand_over(
        self,
        coord: Conn,
        holder: _Holder,
        shards: Sequence[int],
        staged: Mapping[int, tuple[int, int]],
        placement: Mapping[str, tuple[int, str]],
        report: AdoptionReport,
    ) -> None:
        """Swap the staged tables in as the empty shard tables on the holder, verified through the coordinator."""
        for shard in shards:
            where = placement[shard_schema(shard)][1]
            if where != holder.node:
                raise MoveError(f"shard {shard} is placed on {where}, not on its holder {holder.node}")
        merged: dict[int, tuple[int, int]] = {}
        with coord.transaction():
            coord.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            tables = sql.SQL(", ").join(_q(shard_schema(s)) for s in shards)
            coord.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(tables))  # Citus-routed writes wait
            with self._conn(holder.store) as conn, conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                conn.execute("SET LOCAL citus.enable_manual_changes_to_shards = on")
                conn.execute("SET LOCAL citus.override_table_visibility = off")
                for shard in shards:
                    merged[shard] = self._swap(conn, shard, placement[shard_schema(shard)][0])
            for shard in shards:
                rows, checksum = staged[shard]
                extra_rows, extra_sum = merged[shard]
                expected = (rows + extra_rows, checksum + extra_sum)
                found = _checksum(coord, _q(shard_schema(shard)))
                if found != expected:
                    raise MoveError(
                        f"shard {shard} reads {found[0]} rows (checksum {found[1]}) through the coordinator after "
                        f"the hand-over on {holder.node}, expected {expected[0]} (checksum {expected[1]}): "
                        "the rows are in place on the worker; investigate before writing to it"
                    )
                report.rows += found[0]
                report.merged_rows += extra_rows
                report.verified += 1
                report.adopted += 1

    @staticmethod
    def _swap(conn: Conn, shard: int, shard_id: int) -> tuple[int, int]:
        """On the holder: the staged table becomes the Citus shard table; returns the rows merged from it."""
        schema, stage = shard_schema(shard), staging_schema(shard)
        suffix = f"_{shard_id}"
        name = f"{TABLE}{suffix}"
        empty, staged_table = _q(schema, name), _q(stage)
        conn.execute(sql.SQL("LOCK TABLE {}, {} IN ACCESS EXCLUSIVE MODE").format(empty, staged_table))
        facts = conn.execute(_SWAP_FACTS_SQL, (empty.as_string(conn), staged_table.as_string(conn))).fetchone()
        assert facts is not None
        target_cols, staged_cols, owner, shard_indexes, staged_indexes = facts
        if target_cols != staged_cols:
            raise MoveError(
                f"shard {shard}: the columns of its table ({staged_cols}) differ from Citus's shard table "
                f"({target_cols}) on {CitusCoordinator._label_of(conn)}"
            )
        unknown = [i for i in staged_indexes or [] if f"{i}{suffix}" not in (shard_indexes or [])]
        if unknown:
            raise MoveError(
                f"shard {shard} has indexes the coordinator's table lacks ({', '.join(unknown)}): create them "
                "on the coordinator's table first (CREATE INDEX ... ON shardNNNN.entities)"
            )
        merged = _checksum(conn, empty)
        ddl: list[sql.Composable] = []
        if merged[0]:  # written through Citus since the distribution: kept
            ddl.append(sql.SQL("INSERT INTO {} SELECT * FROM {};").format(staged_table, empty))
        ddl.append(sql.SQL("DROP TABLE {};").format(empty))
        for index in staged_indexes or []:
            ddl.append(
                sql.SQL("ALTER INDEX {} RENAME TO {};").format(_q(stage, index), sql.Identifier(f"{index}{suffix}"))
            )
        ddl.append(sql.SQL("ALTER TABLE {} RENAME TO {};").format(staged_table, sql.Identifier(name)))
        ddl.append(sql.SQL("ALTER TABLE {} SET SCHEMA {};").format(_q(stage, name), sql.Identifier(schema)))
        if owner is not None:
            ddl.append(sql.SQL("ALTER TABLE {} OWNER TO {};").format(_q(schema, name), sql.Identifier(str(owner))))
        ddl.append(sql.SQL("DROP SCHEMA {};").format(sql.Identifier(stage)))
        conn.execute(sql.SQL("").join(ddl))
        return merged


def _interleave(groups: Sequence[Sequence[int]]) -> list[int]:
    """Shards of several holders taken in turn (so every batch spreads over the holders as evenly as it can)."""
    out: list[int] = []
    iters = [iter(g) for g in groups]
    while iters:
        alive = []
        for it in iters:
            value = next(it, None)
            if value is not None:
                out.append(value)
                alive.append(it)
        iters = alive
    return out


def _at(step: MoveProgress, done: int, total: int, phase: str) -> None:
    step(phase, done, total)


def _add(phases: dict[str, float], name: str, since: float) -> None:
    phases[name] = phases.get(name, 0.0) + time.perf_counter() - since
