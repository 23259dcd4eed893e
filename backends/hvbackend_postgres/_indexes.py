"""Secondary indexes on body fields in every shard of one PostgreSQL server: expressions, DDL and the online build.

An index on (kind K, field F, type T) is, in each ``shardNNNN`` schema, a partial expression index::

    CREATE INDEX CONCURRENTLY hv_k<K>_<hash> ON shardNNNN.entities ((<F as T>)) WHERE kind = K

where ``<F as T>`` is `field_expr`: the field's value as T, or NULL when it is not one — never an error, so no
write is ever refused because of an index (``hvcore._schemadefs.typed_value`` is the same rule in Python). hstore
bodies hold text, so their expressions cast from text (``body -> 'F'``) after a pattern check; jsonb bodies check the
JSON type first (``jsonb_typeof``). Text compares with ``COLLATE "C"`` (code-point order, as Python compares str);
timestamptz goes through ``hypervault.hv_timestamptz(text)``, an IMMUTABLE function accepting only ISO 8601 with
an explicit offset (so neither TimeZone nor DateStyle can change its result, which is what makes it indexable).

Definitions are recorded per server in ``hypervault.indexes`` (with the migrations' tables, see ``_migrate``), so
provisioning and shard moves give new shards the same indexes. The build goes shard by shard with ``CREATE INDEX
CONCURRENTLY`` (outside a transaction: writes go on); an interrupted one leaves an INVALID index, which the next
run finds in ``pg_index.indisvalid``, drops and builds again. The query side (`typed_conditions`) writes the
same expressions, with the kind as a literal so the planner can prove the partial index's predicate even in a
generic plan.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from hvbackend_postgres._bouncer import session_lock_refusal, transaction_pooled
from hvbackend_postgres._common import ADVISORY_LOCK, HSTORE_SCHEMA_SQL, refusal_error
from hvbackend_postgres._indexsql import field_expr, index_ddl
from hvbackend_postgres._schema import BODY_INDEX, PKEY_INDEX, TABLE, shard_schema
from hvcore._attempts import earlier_failure, failed_attempt
from hvcore._schemadefs import TIMESTAMP_PATTERN, IndexSpec
from hvcore.errors import DuplicateValue, HypervaultError, MigrationError

__all__ = [
    "BODY_TABLE_DDL",
    "META_LOCK",
    "SCHEMA_LOCK",
    "PostgresIndexes",
    "SchemaEndpoint",
    "admin_connection",
    "adopt_body_index",
    "adopt_body_index_on",
    "ensure_support",
    "ext_schema",
    "field_expr",
    "has_support",
    "index_ddl",
    "index_states",
    "is_unique_violation",
    "live_shards",
    "lock_holder",
    "narrow_version_tables",
    "record_body_index",
    "recorded_indexes",
    "refused",
    "schema_lock",
    "unique_violation",
]

META_LOCK = 0x68765F6D657461  # "hv_meta", the key _move uses too: one session creates the hypervault schema at once
SCHEMA_LOCK = 0x68765F736368656D  # "hv_schem": one schema change (migrate, index build or drop) per database

Conn = psycopg.Connection[Any]

SUPPORT_DDL = sql.SQL(
    "CREATE SCHEMA IF NOT EXISTS hypervault;"
    "CREATE TABLE IF NOT EXISTS hypervault.indexes (name text PRIMARY KEY, kind int NOT NULL, field text NOT NULL, "
    "type text NOT NULL, is_unique boolean NOT NULL, state text NOT NULL DEFAULT 'active', "
    "created_at timestamptz NOT NULL DEFAULT now());"
    "CREATE TABLE IF NOT EXISTS hypervault.migrations (version bigint PRIMARY KEY, name text NOT NULL, "
    "checksum text NOT NULL, body text NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now());"
    "CREATE TABLE IF NOT EXISTS hypervault.shard_versions (shard int NOT NULL, version bigint NOT NULL, "
    "applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (shard, version));"
    "CREATE OR REPLACE FUNCTION hypervault.hv_timestamptz(value text) RETURNS timestamptz "
    "LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $hv$BEGIN "
    "IF value !~ {pattern} THEN RETURN NULL; END IF; "
    "BEGIN RETURN value::timestamptz; EXCEPTION WHEN others THEN RETURN NULL; END; "
    "END$hv$;"
).format(pattern=sql.Literal(f"^({TIMESTAMP_PATTERN})$"))


class SchemaEndpoint(Protocol):
    """What the index builder and the migrator need of a server store (both PostgreSQL stores are one)."""

    @property
    def label(self) -> str:
        """``host:port/dbname`` of the server."""
        ...

    backend: str
    text_only: bool
    _conninfo: str
    _kwargs: dict[str, Any]

    def _unavailable(self, exc: BaseException) -> Exception:
        """The `ServerUnavailable` for a failed connection (password masked)."""
        ...


def refused(exc: psycopg.Error, conn: Conn | None, store: SchemaEndpoint, doing: str) -> HypervaultError | None:
    """`PermissionDenied` or `ReadOnlyServer` (`_common.refusal_error`) for a schema statement the server refused,
    its message starting with ``doing`` (the operation, and the shard when there is one); None for other errors."""
    role = ""
    with contextlib.suppress(Exception):
        role = conn.info.user if conn is not None else ""
    found = refusal_error(exc, store.label, role or str(store._kwargs.get("user") or ""))
    if found is None:
        return None
    return type(found)(f"{doing}: {found}")


@contextlib.contextmanager
def refusals(store: SchemaEndpoint, conn: Conn, doing: str) -> Iterator[Conn]:
    """Yield ``conn``; a privilege or read-only refusal inside becomes `refused`'s typed error."""
    try:
        yield conn
    except psycopg.Error as exc:
        found = refused(exc, conn, store, doing)
        if found is None:
            raise
        raise found from None


def admin_connection(store: SchemaEndpoint) -> Conn:
    """A new autocommit session on the store's server, outside its pool (blocking; the caller closes it)."""
    earlier = earlier_failure(store.label)  # the server did not answer earlier in the running call: not again
    if earlier is not None:
        raise earlier
    try:
        return psycopg.connect(store._conninfo, **{**store._kwargs, "autocommit": True})
    except psycopg.OperationalError as exc:
        error = store._unavailable(exc)
        failed_attempt(store.label, error)
        raise error from None


def has_support(conn: Conn) -> bool:
    """True if this database has the ``hypervault`` tables indexes and migrations are recorded in."""
    row = conn.execute(
        "SELECT to_regclass('hypervault.shard_versions') IS NOT NULL "
        "AND to_regprocedure('hypervault.hv_timestamptz(text)') IS NOT NULL"
    ).fetchone()
    return row == (True,)


# the version columns made int by earlier releases (a YYYYMMDDHHMMSS version does not fit): widened in place
_NARROW_VERSIONS_SQL = (
    "SELECT c.relname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'hypervault' "
    "AND c.relname IN ('migrations', 'shard_versions') AND a.attname = 'version' AND a.atttypid <> 'bigint'::regtype "
    "ORDER BY c.relname"
)


def narrow_version_tables(conn: Conn) -> list[str]:
    """The bookkeeping tables whose ``version`` column is still int (made by an earlier release)."""
    return [str(row[0]) for row in conn.execute(_NARROW_VERSIONS_SQL).fetchall()]


def ensure_support(conn: Conn) -> None:
    """Create the ``hypervault`` schema's index and migration tables and the timestamptz function (idempotent);
    widen the version columns of tables an earlier release made int to bigint (in place, once).

    A role that does not own older tables cannot widen them: they are left as they are (versions up to
    2,147,483,647 still fit; the migrator refuses larger ones by name, see `_migrate`)."""
    if not has_support(conn):
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (META_LOCK,))
                conn.execute(SUPPORT_DDL)
        except psycopg.Error as exc:  # a role without CREATE, a read-only server: typed, named (hv: one line)
            info = conn.info
            refused = refusal_error(exc, f"{info.host}:{info.port}/{info.dbname}", info.user)
            if refused is None:
                raise
            raise refused from None
    if not narrow_version_tables(conn):
        return
    with contextlib.suppress(pg_errors.InsufficientPrivilege), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (META_LOCK,))
        for table in narrow_version_tables(conn):  # again under the lock: another session may have done it
            conn.execute(
                sql.SQL("ALTER TABLE hypervault.{} ALTER COLUMN version TYPE bigint").format(sql.Identifier(table))
            )


def ext_schema(conn: Conn, store: SchemaEndpoint) -> str | None:
    """The schema of the hstore extension (hstore backend), or None (jsonb)."""
    if not store.text_only:
        return None
    row = conn.execute(HSTORE_SCHEMA_SQL).fetchone()
    if row is None:
        raise MigrationError(f"the hstore extension is not installed in {store.label}: run hv init first")
    return str(row[0])


BODY_TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS hypervault.body_index (name text PRIMARY KEY CHECK (name = 'entities_body_idx'), "
    "state text NOT NULL DEFAULT 'active', created_at timestamptz NOT NULL DEFAULT now())"
)
"""Where the body index (`IndexSpec.body`) is recorded: a row when the server gives shards one. A table of its own,
not a row of ``hypervault.indexes``: a process of an earlier release reads those as typed indexes (kind, field),
and would fail on one without them."""


def recorded_indexes(conn: Conn) -> list[IndexSpec]:
    """Every index definition recorded in this database, the body index first (none if the tables were never
    created)."""
    found = conn.execute(
        "SELECT to_regclass('hypervault.indexes') IS NOT NULL, to_regclass('hypervault.body_index') IS NOT NULL"
    ).fetchone()
    specs: list[IndexSpec] = []
    if found is not None and found[1]:
        row = conn.execute("SELECT state FROM hypervault.body_index").fetchone()
        if row is not None:
            specs.append(IndexSpec.body(state=str(row[0])))
    if found is None or not found[0]:
        return specs
    rows = conn.execute("SELECT kind, field, type, is_unique, state FROM hypervault.indexes ORDER BY name").fetchall()
    return specs + [IndexSpec(kind=r[0], field=r[1], type=r[2], unique=r[3], state=r[4]) for r in rows]


def record_body_index(conn: Conn, state: str, *, replace: bool) -> None:
    """Record the body index in ``state`` (the ``hypervault`` tables made if missing); ``replace=False`` leaves a
    row that is there (any state)."""
    ensure_support(conn)
    if conn.execute("SELECT to_regclass('hypervault.body_index') IS NULL").fetchone() == (True,):
        with conn.transaction():  # one session creates it at once (concurrent CREATE TABLE IF NOT EXISTS can clash)
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (META_LOCK,))
            conn.execute(BODY_TABLE_DDL)
    conflict = "DO UPDATE SET state = excluded.state" if replace else "DO NOTHING"
    conn.execute(
        f"INSERT INTO hypervault.body_index (name, state) VALUES (%s, %s) ON CONFLICT (name) {conflict}",
        (BODY_INDEX, state),
    )


def adopt_body_index(store: SchemaEndpoint) -> bool:
    """Record the body index as active on a server whose shards have it and that records nothing about it (shards
    provisioned by a release that gave every shard one): provisioning and moves then give new shards it too, as that
    release did. A row in any state is left (a drop in progress stays one). True if it was recorded now.

    Called by provisioning, which holds the provisioning lock already (`PostgresIndexes.record` takes it too)."""
    with contextlib.closing(admin_connection(store)) as conn, refusals(store, conn, "recording the body index"):
        return adopt_body_index_on(conn)


def adopt_body_index_on(conn: Conn) -> bool:
    """`adopt_body_index` on a session of the server (the caller knows its shards have the index)."""
    if (
        conn.execute("SELECT to_regclass('hypervault.body_index') IS NOT NULL").fetchone() == (True,)
        and conn.execute("SELECT 1 FROM hypervault.body_index").fetchone() is not None
    ):
        return False
    record_body_index(conn, "active", replace=False)
    return True


def is_unique_violation(exc: psycopg.Error) -> bool:
    """A unique violation, also as a Citus coordinator relays one from a worker's COPY (an internal error)."""
    return isinstance(exc, pg_errors.UniqueViolation) or (exc.diag.message_primary or "").startswith(
        "duplicate key value violates unique constraint"
    )


def unique_violation(exc: psycopg.Error, shard_id: int, label: str) -> DuplicateValue | None:
    """The `DuplicateValue` for a unique violation of a secondary index (None for the primary key: a key taken).

    On Citus the primary key of a shard placement carries the placement's number (``entities_pkey_102009``), and an
    error relayed from a worker inside a transaction block may come without its constraint field: the name is then
    read from the message (``duplicate key value violates unique constraint "..."``).
    """
    constraint = exc.diag.constraint_name
    if constraint is None:
        named = re.search(r'unique constraint "([^"]+)"', exc.diag.message_primary or "")
        constraint = named.group(1) if named else None
    if constraint is None or constraint == PKEY_INDEX or re.fullmatch(f"{PKEY_INDEX}_[0-9]+", constraint):
        return None
    detail = exc.diag.message_detail or ""
    value = detail.rsplit(")=(", 1)[-1].removesuffix(") already exists.") if ")=(" in detail else "?"
    return DuplicateValue(
        f"shard {shard_id} on {label} already holds a record with this value ({value!r}) under the unique index "
        f"{constraint}: nothing was written (unique indexes are unique within each shard)"
    )


def lock_holder(conn: Conn, key: int) -> str:
    """Who holds the advisory lock ``key`` (pid, application_name, client, since), for messages."""
    row = conn.execute(
        "SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
        "AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid AND l.objsubid = 1",
        ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
    ).fetchone()
    if row is None:
        return "another session"
    started = row[3].isoformat(timespec="seconds") if row[3] is not None else "?"
    return (
        f"session pid {row[0]} ({row[1] or 'no application_name'} from {row[2] or 'a local socket'}, since {started})"
    )


@contextlib.contextmanager
def schema_lock(store: SchemaEndpoint, wait: float) -> Iterator[Conn]:
    """Hold the server's schema-change advisory lock on a session of its own (yielded); wait up to ``wait`` s.

    `MigrationError` names the session holding it when the wait ends. Closing the session releases the lock, so a
    killed migrator never leaves it held.
    """
    conn = admin_connection(store)
    try:
        if transaction_pooled(store, conn):  # the lock would outlive this session on the pooler's server session
            raise MigrationError(session_lock_refusal("a schema change", store.label), server=store.label)
        deadline = time.monotonic() + max(wait, 0.0)
        while conn.execute("SELECT pg_try_advisory_lock(%s)", (SCHEMA_LOCK,)).fetchone() != (True,):
            if time.monotonic() >= deadline:
                raise MigrationError(
                    f"another schema change (hv migrate, an index build or drop, or the switch of a shard move) runs "
                    f"on {store.label}: held by "
                    f"{lock_holder(conn, SCHEMA_LOCK)}; wait for it to finish"
                    + (f" (waited {wait:g} s)" if wait > 0 else ", or pass wait=SECONDS (hv migrate --wait)"),
                    server=store.label,
                )
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0.01)))
        with refusals(store, conn, "a schema change"):
            yield conn
    finally:
        conn.close()


def live_shards(conn: Conn, shard_ids: Sequence[int]) -> list[int]:
    """The shards among ``shard_ids`` whose entities table lives in this database (not a forwarding stub)."""
    names = {shard_schema(s): s for s in shard_ids}
    rows = conn.execute(
        "SELECT n.nspname FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = %s "
        "AND c.relkind IN ('r', 'p') WHERE n.nspname = ANY(%s)",
        (TABLE, list(names)),
    ).fetchall()
    return sorted(names[r[0]] for r in rows)


def index_states(conn: Conn, shard_ids: Sequence[int]) -> dict[str, dict[int, bool]]:
    """Per ``hv_k…`` index name (and the body index's), the shards among ``shard_ids`` that have it, and whether it
    is valid."""
    names = {shard_schema(s): s for s in shard_ids}
    rows = conn.execute(
        "SELECT n.nspname, i.relname, x.indisvalid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "JOIN pg_namespace n ON n.oid = i.relnamespace WHERE n.nspname = ANY(%s) "
        "AND (i.relname LIKE 'hv\\_k%%' OR i.relname = %s)",
        (list(names), BODY_INDEX),
    ).fetchall()
    states: dict[str, dict[int, bool]] = {}
    for schema, name, valid in rows:
        states.setdefault(str(name), {})[names[schema]] = bool(valid)
    return states


class PostgresIndexes:
    """The `IndexBuilder` of one PostgreSQL server (``store.index_builder()``): sessions of its own, blocking."""

    __module__ = "hvbackend_postgres"

    def __init__(self, store: SchemaEndpoint) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"<PostgresIndexes {self.store.label}>"

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Conn]:
        conn = admin_connection(self.store)
        try:
            with refusals(self.store, conn, "index bookkeeping (hypervault.indexes)"):
                yield conn
        finally:
            conn.close()

    def _refuse_behind_transaction_pooler(self, conn: Conn) -> None:
        """`MigrationError` behind a transaction-mode pooler: builds and drops need `schema_lock`'s session lock."""
        if transaction_pooled(self.store, conn):
            raise MigrationError(session_lock_refusal("a schema change", self.store.label), server=self.store.label)

    def definitions(self) -> list[IndexSpec]:
        """Every index recorded on this server."""
        with self._conn() as conn:
            return recorded_indexes(conn)

    def record(self, spec: IndexSpec) -> None:
        """Record ``spec`` as active (under the provisioning lock: a provisioning run sees it, or ends first)."""
        with self._conn() as conn:
            self._refuse_behind_transaction_pooler(conn)  # before anything is recorded
            ensure_support(conn)
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
                if spec.is_body:
                    record_body_index(conn, "active", replace=True)
                    return
                other = conn.execute(
                    "SELECT name, type FROM hypervault.indexes WHERE kind = %s AND field = %s AND name <> %s",
                    (spec.kind, spec.field, spec.name),
                ).fetchone()
                if other is not None:
                    raise MigrationError(
                        f"field {spec.field!r} of kind {spec.kind} already has an index ({other[1]}, {other[0]}) on "
                        f"{self.store.label}: drop it first",
                        server=self.store.label,
                    )
                conn.execute(
                    "INSERT INTO hypervault.indexes (name, kind, field, type, is_unique) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET state = 'active'",
                    (spec.name, spec.kind, spec.field, spec.type, spec.unique),
                )

    def build(
        self, spec: IndexSpec, shard_ids: Sequence[int], progress: Callable[[int], None], stop: Callable[[], bool]
    ) -> dict[str, int]:
        """Build ``spec`` in these shards, ``CREATE INDEX CONCURRENTLY`` one at a time; INVALID leftovers rebuilt.

        Counts: ``built``, ``rebuilt`` (an INVALID index found and built again), ``present`` (already valid).
        A failing build (a duplicate for a unique index) drops its INVALID leftover and raises `MigrationError`
        naming the shard; the shards done before it keep the index.
        """
        counts = {"built": 0, "rebuilt": 0, "present": 0}
        with schema_lock(self.store, 0.0) as conn:
            ext = ext_schema(conn, self.store)
            live = set(live_shards(conn, shard_ids))
            states = index_states(conn, shard_ids).get(spec.name, {})
            for shard in shard_ids:
                if stop():
                    break
                if shard in live:
                    valid = states.get(shard)
                    if valid:
                        counts["present"] += 1
                    else:
                        if valid is not None:  # an interrupted CONCURRENTLY build left it INVALID
                            self._drop_one(conn, spec, shard)
                            counts["rebuilt"] += 1
                        else:
                            counts["built"] += 1
                        self._build_one(conn, spec, shard, ext)
                progress(1)
        return counts

    def _build_one(self, conn: Conn, spec: IndexSpec, shard: int, ext: str | None) -> None:
        statement = index_ddl(spec, shard_schema(shard), ext, concurrently=True)
        try:
            conn.execute(statement)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) and conn.closed:
                raise self.store._unavailable(exc) from None
            with contextlib.suppress(psycopg.Error):
                self._drop_one(conn, spec, shard)  # what the failed build left: the shard is as it was
            found = refused(exc, conn, self.store, f"building index {spec.name} in shard {shard}")
            if found is not None:
                raise found from None
            detail = f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""
            what = (
                "the body index"
                if spec.is_body
                else f"kind {spec.kind}, field {spec.field!r}, {spec.type}{', unique' if spec.unique else ''}"
            )
            again = "create_body_index" if spec.is_body else "create_index"
            raise MigrationError(
                f"building index {spec.name} ({what}) failed in shard {shard} on {self.store.label}: "
                f"{exc.diag.message_primary or exc}{detail}; the shards before it have the index, this one is as it "
                f"was: fix the data and run {again} again (it continues here)",
                server=self.store.label,
                shard_id=shard,
                statement=statement.as_string(conn),
            ) from None

    @staticmethod
    def _drop_one(conn: Conn, spec: IndexSpec, shard: int) -> None:
        conn.execute(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                sql.Identifier(shard_schema(shard)), sql.Identifier(spec.name)
            )
        )

    def mark_dropping(self, spec: IndexSpec) -> None:
        """Record that ``spec`` is being dropped (new shards no longer get it; queries stop using it)."""
        with self._conn() as conn:
            self._refuse_behind_transaction_pooler(conn)
            if spec.is_body:  # recorded even where it was not: provisioning then does not record it as active
                record_body_index(conn, "dropping", replace=True)
            elif conn.execute("SELECT to_regclass('hypervault.indexes') IS NOT NULL").fetchone() == (True,):
                conn.execute("UPDATE hypervault.indexes SET state = 'dropping' WHERE name = %s", (spec.name,))

    def drop(
        self, spec: IndexSpec, shard_ids: Sequence[int], progress: Callable[[int], None], stop: Callable[[], bool]
    ) -> int:
        """``DROP INDEX CONCURRENTLY`` in every shard that has it; returns how many had it."""
        dropped = 0
        with schema_lock(self.store, 0.0) as conn:
            states = index_states(conn, shard_ids).get(spec.name, {})
            for shard in shard_ids:
                if stop():
                    break
                if shard in states:
                    with refusals(self.store, conn, f"dropping index {spec.name} in shard {shard}"):
                        self._drop_one(conn, spec, shard)
                    dropped += 1
                progress(1)
        return dropped

    def forget(self, spec: IndexSpec) -> None:
        """Remove the definition."""
        with self._conn() as conn:
            self._refuse_behind_transaction_pooler(conn)
            table = "body_index" if spec.is_body else "indexes"
            if conn.execute(f"SELECT to_regclass('hypervault.{table}') IS NOT NULL").fetchone() == (True,):
                conn.execute(f"DELETE FROM hypervault.{table} WHERE name = %s", (spec.name,))

    def states(self, shard_ids: Sequence[int]) -> tuple[list[int], dict[str, tuple[list[int], list[int]]]]:
        """Shards among ``shard_ids`` whose table lives here, and per index name its (valid, invalid) shards."""
        with self._conn() as conn:
            live = live_shards(conn, shard_ids)
            found = index_states(conn, live)
        out = {
            name: (sorted(s for s, ok in shards.items() if ok), sorted(s for s, ok in shards.items() if not ok))
            for name, shards in found.items()
        }
        return live, out
