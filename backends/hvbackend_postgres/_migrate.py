"""Versioned SQL migrations over every shard of one PostgreSQL server, and what provisioning and moves take of them.

A migration file is parsed by PostgreSQL's own parser (pglast, libpg_query) before anything runs: syntax errors,
transaction control (``BEGIN``/``COMMIT``: each file already runs in its own transaction per shard), changes of
``search_path``, and files mixing statements that must run outside a transaction (``CREATE INDEX CONCURRENTLY``,
``VACUUM``...) with others are refused — Flyway's rule: such statements go in a file of their own. Then, per shard:

- a transactional file is one round trip: ``BEGIN; SET LOCAL search_path = shardNNNN, <ext>; <statements>;
  INSERT INTO hypervault.shard_versions ...; COMMIT`` — the file and its record commit together or not at all. On
  failure the shard is rolled back, its statements are run again one by one in a transaction that is rolled back
  too, to name the one that fails, and `MigrationError` reports shard, file and statement. Before the COMMIT a
  guard checks that the search path is still the shard's (`path_guard`: ``RESET ALL`` or ``set_config(
  'search_path', ...)`` would have put the shard's objects elsewhere; no parse can list every spelling);
- a non-transactional file runs its statements one by one in autocommit with the shard's search path, then records
  the version; an interrupted ``CREATE INDEX CONCURRENTLY`` leaves an INVALID index, which a rerun drops and builds
  again (a valid one is kept).

Migrations are recorded per server in ``hypervault.migrations`` (file name, checksum, text), versions per shard in
``hypervault.shard_versions``. Provisioning a shard (`new_shard_ddl`) applies every recorded migration in the
provisioning transaction (``CONCURRENTLY`` removed: the table is new). A shard move replays the shard's migrations
on the target's staging table while it is still empty (`replay_migrations`: the copy then brings rows the
migrations already changed, so a data migration never runs twice on them), builds the recorded indexes with the
mover's own (`carry_indexes`), and at the switch moves every object of the staging schema into the shard's schema
and carries the version rows (`adopt_staging`). Moves copy ``entities (id, kind,
body)`` only, so `check_movable` refuses a shard whose schema holds other data.

The binding of a transaction to a shard (``SET LOCAL search_path``) is ``_shardtx``, for a transaction API to
reuse.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq, sql

from hvbackend_postgres._common import ADVISORY_LOCK, PROVISION_WORKERS
from hvbackend_postgres._indexes import (
    Conn,
    SchemaEndpoint,
    admin_connection,
    adopt_body_index_on,
    ensure_support,
    ext_schema,
    has_support,
    index_ddl,
    live_shards,
    narrow_version_tables,
    record_body_index,
    recorded_indexes,
    refusals,
    refused,
    schema_lock,
)
from hvbackend_postgres._schema import BODY_INDEX, TABLE, shard_schema
from hvbackend_postgres._shardtx import shard_search_path, shard_transaction
from hvcore._schemadefs import BIGINT_MAX, Migration
from hvcore.errors import MigrationError, MoveError

__all__ = [
    "ESCAPED_PATH",
    "MigrationPlan",
    "PlannedStatement",
    "PostgresMigrator",
    "adopt_staging",
    "carry_indexes",
    "check_movable",
    "new_shard_ddl",
    "path_capture",
    "path_guard",
    "plan_migration",
    "reconcile_indexes",
    "record_conflicts",
    "replay_migrations",
    "replay_new_migrations",
]

_OUTSIDE = "cannot run in a transaction"


@dataclass(frozen=True, slots=True)
class PlannedStatement:
    """One statement of a migration file, as written, and how it runs."""

    text: str
    transactional: bool
    in_transaction: str | None  # the form run inside a transaction on a new (empty) shard; None: skipped there
    concurrent_index: str | None = None  # the name a CREATE INDEX CONCURRENTLY builds (its leftover is checked)


@dataclass(frozen=True, slots=True)
class MigrationPlan:
    """A parsed migration file: its statements, and whether it runs in a transaction per shard."""

    statements: tuple[PlannedStatement, ...]
    transactional: bool


def _short(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _deparse(node: Any) -> str:
    from pglast.stream import RawStream

    return str(RawStream()(node))


def _classify(node: Any, text: str) -> PlannedStatement:
    """Whether a statement can run in a transaction, and its form for a new shard (CONCURRENTLY removed)."""
    kind = type(node).__name__
    if kind in ("IndexStmt", "DropStmt") and getattr(node, "concurrent", False):
        name = getattr(node, "idxname", None) if kind == "IndexStmt" else None
        node.concurrent = False
        return PlannedStatement(text, False, _deparse(node), name)
    if kind == "ReindexStmt" and any(getattr(p, "defname", "") == "concurrently" for p in node.params or ()):
        node.params = tuple(p for p in node.params if getattr(p, "defname", "") != "concurrently") or None
        return PlannedStatement(text, False, _deparse(node))
    if kind == "VacuumStmt" and node.is_vacuumcmd:
        return PlannedStatement(text, False, None)
    if kind in (
        "CreatedbStmt",
        "DropdbStmt",
        "AlterSystemStmt",
        "CreateTableSpaceStmt",
        "DropTableSpaceStmt",
        "CreateSubscriptionStmt",
        "DropSubscriptionStmt",
    ):
        return PlannedStatement(text, False, None)
    return PlannedStatement(text, True, text)


@functools.lru_cache(maxsize=256)
def _plan(filename: str, text: str) -> MigrationPlan:
    import pglast
    from pglast.parser import ParseError

    try:
        nodes = pglast.parse_sql(text)
        slices = pglast.split(text, with_parser=True, only_slices=True)
    except ParseError as exc:
        raise MigrationError(f"migration {filename}: {exc}", migration=filename) from None
    if not nodes:
        raise MigrationError(f"migration {filename} has no SQL statement", migration=filename)
    statements = []
    for number, (raw, part) in enumerate(zip(nodes, slices, strict=True), 1):
        stmt_text = text[part].strip()
        node = raw.stmt
        kind = type(node).__name__
        where = f"migration {filename}, statement {number} ({_short(stmt_text, 60)})"
        if kind == "TransactionStmt":
            raise MigrationError(
                f"{where}: transaction control is not allowed: each file runs in its own transaction in each shard",
                migration=filename,
                statement=stmt_text,
            )
        if kind == "IndexStmt" and getattr(node, "concurrent", False) and not getattr(node, "idxname", None):
            raise MigrationError(
                f"{where}: name the index (CREATE INDEX CONCURRENTLY IF NOT EXISTS name ON ...): an interrupted "
                "build is found again by its name",
                migration=filename,
                statement=stmt_text,
            )
        if kind == "VariableSetStmt" and getattr(node, "name", None) == "search_path":
            raise MigrationError(
                f"{where}: changing search_path is not allowed: each shard's schema is put first on it for you",
                migration=filename,
                statement=stmt_text,
            )
        statements.append(_classify(node, stmt_text))
    outside = [s for s in statements if not s.transactional]
    if outside and len(outside) < len(statements):
        first = outside[0]
        raise MigrationError(
            f"migration {filename} mixes statements that {_OUTSIDE} ({_short(first.text, 60)}) with others: "
            "put them in a migration file of their own (each file runs in one transaction per shard otherwise)",
            migration=filename,
            statement=first.text,
        )
    return MigrationPlan(tuple(statements), not outside)


def plan_migration(migration: Migration) -> MigrationPlan:
    """Parse a migration file (PostgreSQL's grammar, via pglast); `MigrationError` for what cannot be run."""
    return _plan(migration.filename, migration.sql)


ESCAPED_PATH = "ZHV02"  # SQLSTATE of the guard: a migration changed the search path it runs with
_PATH_SETTING = "hypervault.migration_search_path"


def path_capture() -> sql.Composed:
    """Right after ``SET LOCAL search_path``: remember it for `path_guard` (transaction-local)."""
    return sql.SQL("SELECT pg_catalog.set_config({}, pg_catalog.current_setting('search_path'), true)").format(
        sql.Literal(_PATH_SETTING)
    )


def path_guard(shard_id: int, what: str) -> sql.Composed:
    """Before the COMMIT of a shard's migration: raise ``ZHV02`` if the search path is no longer the shard's.

    Catches every spelling of the escape (``RESET ALL``, ``set_config('search_path', ...)``, a function or DO block
    doing either), which no parse of the file can list: the shard's objects would have gone to another schema."""
    message = (
        f"{what} changed search_path in shard {shard_id} (RESET ALL, set_config('search_path', ...) or the like): "
        "its statements would not have run in the shard's schema"
    )
    return sql.SQL(
        "DO $hv$BEGIN IF pg_catalog.current_setting('search_path') IS DISTINCT FROM "
        "pg_catalog.current_setting({setting}, true) THEN RAISE EXCEPTION USING ERRCODE = {code}, MESSAGE = {message}, "
        "DETAIL = 'search_path is ' || pg_catalog.current_setting('search_path'); END IF; END$hv$"
    ).format(setting=sql.Literal(_PATH_SETTING), code=sql.Literal(ESCAPED_PATH), message=sql.Literal(message))


def _version_row(shard_id: int, version: int) -> sql.Composed:
    return sql.SQL("INSERT INTO hypervault.shard_versions (shard, version) VALUES ({}, {})").format(
        sql.Literal(shard_id), sql.Literal(version)
    )


def _registry(conn: Conn) -> list[Migration]:
    if conn.execute("SELECT to_regclass('hypervault.migrations') IS NULL").fetchone() == (True,):
        return []
    rows = conn.execute("SELECT version, name, body, checksum FROM hypervault.migrations ORDER BY version").fetchall()
    out = []
    for version, filename, body, checksum in rows:
        name = filename.split("_", 1)[1].removesuffix(".sql") if "_" in filename else filename
        out.append(Migration(version=version, name=name, filename=filename, sql=body, checksum=checksum))
    return out


def _versions(conn: Conn, shard_ids: Sequence[int]) -> dict[int, set[int]]:
    if conn.execute("SELECT to_regclass('hypervault.shard_versions') IS NULL").fetchone() == (True,):
        return {}
    rows = conn.execute(
        "SELECT shard, version FROM hypervault.shard_versions WHERE shard = ANY(%s)", (list(shard_ids),)
    ).fetchall()
    found: dict[int, set[int]] = {}
    for shard, version in rows:
        found.setdefault(int(shard), set()).add(int(version))
    return found


_INT_MAX = 2**31 - 1  # the version columns of tables an earlier release made (int) that could not be widened


def _check_version(migration: Migration) -> None:
    if not 0 < migration.version <= BIGINT_MAX:
        raise MigrationError(
            f"migration {migration.filename} has version {migration.version}: versions are 1..{BIGINT_MAX:,} "
            "(a PostgreSQL bigint; a YYYYMMDDHHMMSS timestamp fits): renumber it",
            migration=migration.filename,
        )


def _record(conn: Conn, migrations: Sequence[Migration]) -> None:
    ensure_support(conn)  # widens the version columns an earlier release made int
    large = [m for m in migrations if m.version > _INT_MAX]
    narrow = narrow_version_tables(conn) if large else []
    if narrow:
        raise MigrationError(
            f"migration {large[0].filename} has version {large[0].version}, past what the int version columns of "
            f"{', '.join('hypervault.' + t for t in narrow)} hold ({_INT_MAX:,}); this role could not widen them "
            "(it does not own them): have their owner run ALTER TABLE hypervault.<table> ALTER COLUMN version TYPE "
            "bigint on each, or renumber the file. Nothing was applied",
            migration=large[0].filename,
        )
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))  # provisioning sees all of them or none
        for m in migrations:
            conn.execute(
                "INSERT INTO hypervault.migrations (version, name, checksum, body) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, checksum = EXCLUDED.checksum, "
                "body = EXCLUDED.body, recorded_at = now() WHERE hypervault.migrations.checksum <> EXCLUDED.checksum",
                (m.version, m.filename, m.checksum, m.sql),
            )


class PostgresMigrator:
    """The `Migrator` of one PostgreSQL server (``store.migrator()``): sessions of its own, blocking calls."""

    __module__ = "hvbackend_postgres"

    def __init__(self, store: SchemaEndpoint) -> None:
        self.store = store
        self._held: tuple[Conn, int] | None = None  # the lock's session and its thread: reused for the bookkeeping

    def __repr__(self) -> str:
        return f"<PostgresMigrator {self.store.label}>"

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Conn]:
        held = self._held
        if held is not None and held[1] == threading.get_ident():
            yield held[0]
            return
        conn = admin_connection(self.store)
        try:
            with refusals(self.store, conn, "migration bookkeeping (hypervault.migrations, hypervault.shard_versions)"):
                yield conn
        finally:
            conn.close()

    def check(self, migrations: Sequence[Migration]) -> list[tuple[bool, list[str]]]:
        """Parse every file before any SQL: per file (runs in a transaction?, its statements); `MigrationError`."""
        for migration in migrations:
            _check_version(migration)
        plans = [plan_migration(m) for m in migrations]
        return [(plan.transactional, [s.text for s in plan.statements]) for plan in plans]

    def lock(self, wait: float) -> contextlib.AbstractContextManager[None]:
        """Hold this server's schema-change lock (see `schema_lock`)."""

        @contextlib.contextmanager
        def held() -> Iterator[None]:
            with schema_lock(self.store, wait) as conn:
                self._held = (conn, threading.get_ident())
                try:
                    yield
                finally:
                    self._held = None

        return held()

    def registry(self) -> dict[int, tuple[str, str]]:
        """Migrations recorded on this server: version → (file name, checksum)."""
        with self._conn() as conn:
            return {m.version: (m.filename, m.checksum) for m in _registry(conn)}

    def recorded(self) -> list[Migration]:
        """Migrations recorded on this server with their text, in version order (what provisioning replays)."""
        with self._conn() as conn:
            return _registry(conn)

    def record(self, migrations: Sequence[Migration]) -> None:
        """Record these migrations on this server (a changed checksum is overwritten: the façade checked it)."""
        with self._conn() as conn:
            _record(conn, migrations)

    def forget(self, versions: Sequence[int]) -> None:
        """Remove recorded migrations (the façade checked that no shard applied them)."""
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
            conn.execute("DELETE FROM hypervault.migrations WHERE version = ANY(%s)", (list(versions),))

    def applied(self, shard_ids: Sequence[int]) -> dict[int, set[int]]:
        """Versions applied per shard, for the shards among ``shard_ids`` whose table lives here."""
        with self._conn() as conn:
            live = live_shards(conn, shard_ids)
            versions = _versions(conn, live)
        return {shard: versions.get(shard, set()) for shard in live}

    def apply(
        self,
        migration: Migration,
        shard_ids: Sequence[int],
        progress: Callable[[int], None],
        stop: Callable[[], bool],
    ) -> int:
        """Apply ``migration`` to these shards: one transaction each (two sessions), or one statement at a time
        outside a transaction for a non-transactional file (one session); returns the shards done."""
        plan = plan_migration(migration)
        queue = iter(shard_ids)
        lock = threading.Lock()
        done = [0]
        errors: list[BaseException] = []

        def work() -> None:
            try:
                with self._conn() as conn:
                    conn.execute("SET synchronous_commit = off")  # a crash loses a file and its record together
                    ext = ext_schema(conn, self.store)
                    while not errors and not stop():
                        with lock:
                            shard = next(queue, None)
                        if shard is None:
                            return
                        if plan.transactional:
                            self._apply_transactional(conn, migration, plan, shard, ext)
                        else:
                            self._apply_outside(conn, migration, plan, shard, ext)
                        with lock:
                            done[0] += 1
                        progress(1)
            except BaseException as exc:
                errors.append(exc)

        workers = PROVISION_WORKERS if plan.transactional else 1  # concurrent CONCURRENTLY builds wait on each other
        threads = [threading.Thread(target=work, name=f"hv-migrate-{i}") for i in range(workers - 1)]
        for thread in threads:
            thread.start()
        work()
        for thread in threads:
            thread.join()
        if errors:
            error = next((e for e in errors if isinstance(e, MigrationError)), errors[0])
            if isinstance(error, psycopg.OperationalError):
                raise self.store._unavailable(error) from None
            raise error
        return done[0]

    def _apply_transactional(
        self, conn: Conn, migration: Migration, plan: MigrationPlan, shard: int, ext: str | None
    ) -> None:
        parts: list[sql.Composable] = [sql.SQL("BEGIN"), shard_search_path(shard, ext), path_capture()]
        parts += [sql.SQL(s.text) for s in plan.statements]  # the file's own text: it is the migration
        parts += [path_guard(shard, f"migration {migration.filename}")]  # every shard's objects in its own schema
        parts += [_version_row(shard, migration.version), sql.SQL("COMMIT")]
        script = sql.SQL("\n;\n").join(parts)  # a newline first: a statement may end in a -- comment
        try:
            conn.execute(script)
        except psycopg.Error as exc:
            if conn.closed:
                raise
            self._rollback(conn)
            failure = self._failure(conn, migration, plan, shard, ext, exc)
            found = refused(exc, conn, self.store, self._where(migration, shard, failure.statement))
            raise (found or failure) from None

    @staticmethod
    def _where(migration: Migration, shard: int, statement: str | None) -> str:
        shown = f", statement `{_short(statement)}`" if statement else ""
        return (
            f"migration {migration.filename} in shard {shard}{shown} (rolled back in that shard; the shards done "
            "before it keep it, and hv migrate continues here once the server accepts it)"
        )

    @staticmethod
    def _rollback(conn: Conn) -> None:
        if conn.pgconn.transaction_status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR):
            conn.execute("ROLLBACK")

    def _failure(
        self, conn: Conn, migration: Migration, plan: MigrationPlan, shard: int, ext: str | None, exc: psycopg.Error
    ) -> MigrationError:
        """Find which statement fails (again one by one, rolled back) and describe the failure."""
        failing: tuple[int, PlannedStatement, psycopg.Error] | None = None

        class _Undo(Exception):
            """Leaves the diagnosing transaction rolled back."""

        escaped = exc.sqlstate == ESCAPED_PATH
        with contextlib.suppress(_Undo, psycopg.Error), shard_transaction(conn, shard, ext):
            path = conn.execute("SELECT pg_catalog.current_setting('search_path')").fetchone()
            for number, statement in enumerate(plan.statements, 1):
                try:
                    conn.execute(sql.SQL(statement.text))
                except psycopg.Error as again:
                    failing = (number, statement, again)
                    break
                if conn.execute("SELECT pg_catalog.current_setting('search_path')").fetchone() != path:
                    escaped, failing = True, (number, statement, exc)  # the cause of what failed after it, if any
                    break
            raise _Undo
        if escaped:
            shown = f", statement {failing[0]} of {len(plan.statements)} `{_short(failing[1].text)}`" if failing else ""
            return MigrationError(
                f"migration {migration.filename} changes search_path in shard {shard} on {self.store.label}{shown} "
                "(RESET ALL, set_config('search_path', ...) or the like): its objects would land outside the "
                f"shard's schema {shard_schema(shard)}. Shard {shard} was rolled back and nothing of this file is "
                "recorded for it. Each shard runs the file with its own schema first on search_path: remove that "
                "statement (qualify names only for objects outside the shard), then run hv migrate again",
                server=self.store.label,
                shard_id=shard,
                migration=migration.filename,
                statement=failing[1].text if failing else None,
            )
        if failing is None:
            where, statement_text, error = "", None, exc
        else:
            number, statement, error = failing
            where, statement_text = f", statement {number} of {len(plan.statements)}", statement.text
        detail = f" ({error.diag.message_detail})" if error.diag.message_detail else ""
        shown = f" `{_short(statement_text)}`" if statement_text else ""
        return MigrationError(
            f"migration {migration.filename} failed in shard {shard} on {self.store.label}{where}{shown}: "
            f"{error.diag.message_primary or error}{detail}. Shard {shard} was rolled back (none of this file is "
            "applied there); the other shards keep what they applied. Fix the cause and run hv migrate again: it "
            f"continues with shard {shard} and the shards not done yet",
            server=self.store.label,
            shard_id=shard,
            migration=migration.filename,
            statement=statement_text,
        )

    def _apply_outside(
        self, conn: Conn, migration: Migration, plan: MigrationPlan, shard: int, ext: str | None
    ) -> None:
        schema = shard_schema(shard)
        for number, statement in enumerate(plan.statements, 1):
            if statement.concurrent_index:
                state = index_states_by_name(conn, shard, statement.concurrent_index)
                if state is True:
                    continue  # built by an earlier, interrupted run
                if state is False:  # its INVALID leftover
                    conn.execute(
                        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                            sql.Identifier(schema), sql.Identifier(statement.concurrent_index)
                        )
                    )
            try:
                conn.execute(shard_search_path(shard, ext, local=False))
                conn.execute(sql.SQL(statement.text))
            except psycopg.Error as exc:
                if conn.closed:
                    raise
                self._rollback(conn)
                if statement.concurrent_index:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute(
                            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                                sql.Identifier(schema), sql.Identifier(statement.concurrent_index)
                            )
                        )
                found = refused(exc, conn, self.store, self._where(migration, shard, statement.text))
                if found is not None:
                    raise found from None
                detail = f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""
                raise MigrationError(
                    f"migration {migration.filename} failed in shard {shard} on {self.store.label}, statement "
                    f"{number} of {len(plan.statements)} `{_short(statement.text)}` (run outside a transaction): "
                    f"{exc.diag.message_primary or exc}{detail}. The shards done before it keep it; fix the cause and "
                    f"run hv migrate again: it continues with shard {shard}",
                    server=self.store.label,
                    shard_id=shard,
                    migration=migration.filename,
                    statement=statement.text,
                ) from None
            finally:
                if not conn.closed:
                    conn.execute("RESET search_path")
        conn.execute(_version_row(shard, migration.version))


def index_states_by_name(conn: Conn, shard: int, name: str) -> bool | None:
    """True/False if ``name`` exists in the shard's schema and is valid/INVALID; None if it does not exist."""
    row = conn.execute(
        "SELECT x.indisvalid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "JOIN pg_namespace n ON n.oid = i.relnamespace WHERE n.nspname = %s AND i.relname = %s",
        (shard_schema(shard), name),
    ).fetchone()
    return None if row is None else bool(row[0])


# -- provisioning: new shards get every recorded index and migration ------------------------------------------------


def _nothing(shard_id: int) -> str:
    return ""


def new_shard_ddl(store: SchemaEndpoint, ext: str | None, shard_ids: Sequence[int]) -> Callable[[int], str]:
    """What provisioning adds to a new shard's DDL: recorded migrations it lacks (with their version rows) and
    recorded indexes (plain CREATE INDEX: the table is new and empty), in the provisioning transaction.

    Reads the server's records once (blocking); returns ``extra(shard_id) -> SQL text`` (empty when nothing is
    recorded, the common case, which costs one catalog query).
    """
    with contextlib.closing(admin_connection(store)) as conn:
        if not has_support(conn):
            return _nothing
        indexes = [spec for spec in recorded_indexes(conn) if spec.state == "active"]
        registry = _registry(conn)
        applied = _versions(conn, shard_ids) if registry else {}
    if not indexes and not registry:
        return _nothing
    plans = [(m.version, plan_migration(m)) for m in registry]

    def extra(shard_id: int) -> str:
        parts: list[sql.Composable] = []
        have = applied.get(shard_id, set())
        missing = [(version, plan) for version, plan in plans if version not in have]
        if missing:
            parts += [shard_search_path(shard_id, ext), path_capture()]
            for version, plan in missing:
                parts += [sql.SQL(s.in_transaction) for s in plan.statements if s.in_transaction is not None]
                parts.append(path_guard(shard_id, f"recorded migration {version}, replayed while provisioning,"))
                parts.append(sql.SQL("{} ON CONFLICT DO NOTHING").format(_version_row(shard_id, version)))
        parts += [index_ddl(spec, shard_schema(shard_id), ext, concurrently=False) for spec in indexes]
        if not parts:
            return ""
        return sql.SQL("").join(sql.SQL("{}\n;").format(p) for p in parts).as_string(None)

    return extra


# -- shard moves: the target gets the shard's migrations, indexes and version rows ---------------------------------


def check_movable(conn: Conn, shard_id: int) -> None:
    """`MoveError` if the shard's schema holds data a move would not copy (moves copy entities' id, kind, body)."""
    schema = shard_schema(shard_id)
    columns = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
        "AND attname NOT IN ('id', 'kind', 'body') ORDER BY attnum",
        (f'"{schema}"."{TABLE}"',),
    ).fetchall()
    tables = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
        "AND c.relkind IN ('r', 'p', 'm') AND c.relname <> %s ORDER BY c.relname",
        (schema, TABLE),
    ).fetchall()
    holding = [
        str(name)
        for (name,) in tables
        if conn.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {}.{})").format(sql.Identifier(schema), sql.Identifier(name))
        ).fetchone()
        == (True,)
    ]
    problems = []
    if columns:
        problems.append(f"entities has columns besides id, kind and body ({', '.join(str(c[0]) for c in columns)})")
    if holding:
        problems.append(f"tables besides entities hold rows ({', '.join(holding)})")
    if problems:
        raise MoveError(
            f"shard {shard_id} cannot be moved: {'; '.join(problems)}, and a move copies entities (id, kind, body) "
            "only. Empty the other tables (or move their data yourself), then move it"
        )


def record_conflicts(ctl: Conn, dst: Conn) -> list[str]:
    """What the target records differently from the source (which a move would copy over it): an index the source
    has active being dropped on the target, another index on one of the source's indexed fields, another file under
    one of the source's migration versions. Empty when they agree (the target recording nothing agrees)."""
    problems: list[str] = []
    theirs = recorded_indexes(dst)
    for spec in recorded_indexes(ctl):
        if spec.state != "active":
            continue
        for other in theirs:
            if other.name == spec.name and other.state == "dropping":
                problems.append(f"index {spec.name} is active on the source but being dropped on the target")
            elif not spec.is_body and other.name != spec.name and (other.kind, other.field) == (spec.kind, spec.field):
                problems.append(
                    f"field {spec.field!r} of kind {spec.kind} has index {spec.name} ({spec.type}"
                    f"{', unique' if spec.unique else ''}) on the source but {other.name} ({other.type}"
                    f"{', unique' if other.unique else ''}) on the target"
                )
    recorded = {m.version: m for m in _registry(dst)}
    for migration in _registry(ctl):
        theirs_m = recorded.get(migration.version)
        if theirs_m is not None and (theirs_m.filename, theirs_m.checksum) != (migration.filename, migration.checksum):
            problems.append(
                f"migration version {migration.version} is {migration.filename} (checksum {migration.checksum[:12]}) "
                f"on the source but {theirs_m.filename} (checksum {theirs_m.checksum[:12]}) on the target"
            )
    return problems


def _upsert_records(ctl: Conn, dst: Conn) -> tuple[list[Any], list[Migration]]:
    """Copy the source's index definitions and migrations to the target (which may be a new server)."""
    indexes = [spec for spec in recorded_indexes(ctl) if spec.state == "active"]
    registry = _registry(ctl)
    if not indexes and not registry:
        return [], []
    ensure_support(dst)
    if registry:
        _record(dst, registry)
    for spec in indexes:
        if spec.is_body:
            record_body_index(dst, "active", replace=False)
            continue
        dst.execute(
            "INSERT INTO hypervault.indexes (name, kind, field, type, is_unique) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (name) DO NOTHING",
            (spec.name, spec.kind, spec.field, spec.type, spec.unique),
        )
    return indexes, registry


def _hstore_schema(dst: Conn, backend: str) -> str | None:
    if backend != "hstore":
        return None
    row = dst.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'hstore'"
    ).fetchone()
    return str(row[0]) if row else "public"


_REPLAYED = "hypervault: migrations replayed"  # the staging schema's comment once they are, then ": 1,2,..."


def _replayed(dst: Conn, staging: str) -> tuple[bool, set[int] | None]:
    """Whether the shard's migrations were replayed on the staging schema (its comment), and which versions.

    A comment written before the versions were listed (exactly `_REPLAYED`) gives (True, None): unknown, the
    caller counts the versions the source shard has as replayed (what such a move did)."""
    row = dst.execute("SELECT obj_description(to_regnamespace(%s), 'pg_namespace')", (staging,)).fetchone()
    text = row[0] if row is not None else None
    if not isinstance(text, str) or not text.startswith(_REPLAYED):
        return False, None
    if text == _REPLAYED:
        return True, None
    listed = text[len(_REPLAYED) :].lstrip(": ")
    return True, {int(v) for v in listed.split(",") if v.strip().isdigit()}


def _mark_replayed(dst: Conn, staging: str, versions: set[int]) -> None:
    text = f"{_REPLAYED}: {','.join(str(v) for v in sorted(versions))}"
    dst.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(sql.Identifier(staging), sql.Literal(text)))


def _replay(ctl: Conn, dst: Conn, shard_id: int, staging: str, backend: str, versions: set[int]) -> None:
    """Run the in-transaction form of these recorded migrations on the staging schema (in dst's transaction)."""
    replayed = [plan_migration(m) for m in _registry(ctl) if m.version in versions]
    if not replayed:
        return
    ext = _hstore_schema(dst, backend)
    dst.execute(
        sql.SQL("SET LOCAL search_path = {}, {}").format(sql.Identifier(staging), sql.Identifier(ext or "public"))
    )
    path = dst.execute("SELECT pg_catalog.current_setting('search_path')").fetchone()
    for plan in replayed:
        for statement in plan.statements:
            if statement.in_transaction is not None:
                dst.execute(sql.SQL(statement.in_transaction))
                if dst.execute("SELECT pg_catalog.current_setting('search_path')").fetchone() != path:
                    raise MoveError(
                        f"a migration of shard {shard_id} changes search_path (`{_short(statement.text)}`): "
                        "replayed on the target, its objects would land outside the shard's schema. The move "
                        "was refused (the target's copy is rolled back); write a migration that undoes that "
                        "file's effect outside the shard, then move again"
                    )
    dst.execute("RESET search_path")


def replay_migrations(ctl: Conn, dst: Conn, shard_id: int, staging: str, backend: str) -> None:
    """In the target's transaction that creates the staging table: copy the source's records (index definitions,
    migrations) to the target, and replay the shard's migrations once, with the staging schema first on the search
    path, while its entities table is still empty — the copy then brings the rows, which the migrations already
    changed on the source (a data migration is not applied twice). The versions replayed are listed in the
    staging schema's comment (`replay_new_migrations` adds those applied on the source during the move)."""
    if index_states_by_name(ctl, shard_id, BODY_INDEX) is not None:  # a shard of a release that gave every shard one
        adopt_body_index_on(ctl)  # recorded on the source (unless it says more), so the target records it too
    _upsert_records(ctl, dst)
    if _replayed(dst, staging)[0]:
        return  # a resumed move: replayed when the staging table was made
    versions = _versions(ctl, [shard_id]).get(shard_id, set())
    _replay(ctl, dst, shard_id, staging, backend, versions)
    _mark_replayed(dst, staging, versions)


def replay_new_migrations(ctl: Conn, dst: Conn, shard_id: int, staging: str, backend: str) -> list[int]:
    """Under the fence and the source's schema-change lock: replay on the staging schema the migrations the source
    shard got since the staging table was made (an ``hv migrate`` that ran during the move), in one transaction
    of the target; returns their versions.

    Run before the last changes are replayed: rows such a migration changed on the source were logged by the change
    capture, so the source's rows replace what the replay did to them (a data migration whose rows a catch-up round
    had already brought over changes them twice: the checksum then differs and the move stops before its switch;
    a resume copies again, with every migration replayed on the empty table)."""
    versions = _versions(ctl, [shard_id]).get(shard_id, set())
    replayed, done = _replayed(dst, staging)
    if not replayed or done is None:  # not prepared, or prepared by an earlier release: see `_replayed`
        return []
    new = versions - done
    if not new:
        return []
    with dst.transaction():
        _upsert_records(ctl, dst)
        _replay(ctl, dst, shard_id, staging, backend, new)
        _mark_replayed(dst, staging, done | new)
    return sorted(new)


def reconcile_indexes(ctl: Conn, dst: Conn, staging: str, backend: str) -> tuple[list[str], list[str]]:
    """Under the fence and the source's schema-change lock, once the staging copy equals the source: build the
    active recorded indexes the staging table lacks (created during the move), drop those no longer recorded as
    active (dropped during the move) or INVALID; returns (built, dropped) index names. The body index counts as
    one of them (`IndexSpec.body`)."""
    active = {spec.name: spec for spec in recorded_indexes(ctl) if spec.state == "active"}
    present = {
        str(name): bool(valid)
        for name, valid in dst.execute(
            "SELECT i.relname, x.indisvalid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "JOIN pg_namespace n ON n.oid = i.relnamespace WHERE n.nspname = %s "
            "AND (i.relname LIKE 'hv\\_k%%' OR i.relname = %s)",
            (staging, BODY_INDEX),
        ).fetchall()
    }
    dropped = sorted(name for name, valid in present.items() if name not in active or not valid)
    built = sorted(name for name in active if not present.get(name))
    if not dropped and not built:
        return [], []
    ext = _hstore_schema(dst, backend)
    with dst.transaction():
        for name in dropped:
            dst.execute(sql.SQL("DROP INDEX IF EXISTS {}.{}").format(sql.Identifier(staging), sql.Identifier(name)))
        for name in built:
            dst.execute(index_ddl(active[name], staging, ext, concurrently=False))
    return built, dropped


def carry_indexes(ctl: Conn, dst: Conn, staging: str, backend: str) -> sql.Composable:
    """The recorded secondary indexes as DDL for the staging table, run with the mover's own indexes after the copy."""
    indexes = [spec for spec in recorded_indexes(ctl) if spec.state == "active"]
    if not indexes:
        return sql.SQL("")
    ext = _hstore_schema(dst, backend)
    return sql.SQL("").join(
        sql.SQL("{}\n;").format(index_ddl(spec, staging, ext, concurrently=False)) for spec in indexes
    )


def _relations(conn: Conn, schema: str) -> list[tuple[str, str, int]]:
    """(name, relkind, rows-holding?) of a schema's relations a move handles; sequences owned by a table left out."""
    return [
        (str(r[0]), str(r[1]), int(r[2]))
        for r in conn.execute(
            "SELECT c.relname, c.relkind, c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'c') "
            "AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid "
            "AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))) "
            "ORDER BY c.relname <> 'entities', c.relkind, c.relname",
            (schema,),
        ).fetchall()
    ]


_ALTER = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "f": "FOREIGN TABLE", "S": "SEQUENCE"}


def _routines(conn: Conn, schema: str) -> list[tuple[str, str]]:
    return [
        (str(r[0]), str(r[1]))
        for r in conn.execute(
            "SELECT p.proname, pg_get_function_identity_arguments(p.oid) FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s ORDER BY p.proname",
            (schema,),
        ).fetchall()
    ]


def _types(conn: Conn, schema: str) -> list[tuple[str, str]]:
    """Standalone types (enums, domains, ranges); composite types of relations go with their relation."""
    return [
        (str(r[0]), str(r[1]))
        for r in conn.execute(
            "SELECT t.typname, t.typtype FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE n.nspname = %s AND t.typtype IN ('e', 'd', 'r') ORDER BY t.typname",
            (schema,),
        ).fetchall()
    ]


def _routine(schema: str, name: str, args: str) -> sql.Composed:
    # the argument list is the server's own rendering (pg_get_function_identity_arguments), not user input
    return sql.SQL("{}.{}({})").format(sql.Identifier(schema), sql.Identifier(name), sql.SQL(args))


def _clear_leftovers(dst: Conn, shard_id: int, target: str) -> None:
    """Drop what an earlier stay of the shard left in the target's schema (its forwarding stub is gone already)."""
    for name, relkind, _ in _relations(dst, target):
        if relkind in ("r", "p", "m") and dst.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {}.{})").format(sql.Identifier(target), sql.Identifier(name))
        ).fetchone() == (True,):
            raise MoveError(
                f"the target already has a table {target}.{name} with rows, left by an earlier stay of shard "
                f"{shard_id}: inspect and drop it, then resume the move"
            )
        keyword = "TYPE" if relkind == "c" else _ALTER[relkind]
        dst.execute(
            sql.SQL("DROP {} IF EXISTS {}.{} CASCADE").format(
                sql.SQL(keyword), sql.Identifier(target), sql.Identifier(name)
            )
        )
    for name, args in _routines(dst, target):
        dst.execute(sql.SQL("DROP ROUTINE IF EXISTS {} CASCADE").format(_routine(target, name, args)))
    for name, typtype in _types(dst, target):
        keyword = "DOMAIN" if typtype == "d" else "TYPE"
        dst.execute(
            sql.SQL("DROP {} IF EXISTS {}.{} CASCADE").format(
                sql.SQL(keyword), sql.Identifier(target), sql.Identifier(name)
            )
        )


def adopt_staging(ctl: Conn, dst: Conn, shard_id: int, staging: str) -> None:
    """At the switch, in the target's transaction: every object of the staging schema (the copied entities table
    first, then what the shard's migrations made) moves into the shard's schema, the staging schema goes, and the
    shard's version rows are copied from the source."""
    target = shard_schema(shard_id)
    _clear_leftovers(dst, shard_id, target)
    to = sql.Identifier(target)
    for name, relkind, _ in _relations(dst, staging):
        keyword = "TYPE" if relkind == "c" else _ALTER[relkind]
        dst.execute(
            sql.SQL("ALTER {} {}.{} SET SCHEMA {}").format(
                sql.SQL(keyword), sql.Identifier(staging), sql.Identifier(name), to
            )
        )
    for name, args in _routines(dst, staging):
        dst.execute(sql.SQL("ALTER ROUTINE {} SET SCHEMA {}").format(_routine(staging, name, args), to))
    for name, typtype in _types(dst, staging):
        keyword = "DOMAIN" if typtype == "d" else "TYPE"
        dst.execute(
            sql.SQL("ALTER {} {}.{} SET SCHEMA {}").format(
                sql.SQL(keyword), sql.Identifier(staging), sql.Identifier(name), to
            )
        )
    dst.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(staging)))
    versions = sorted(_versions(ctl, [shard_id]).get(shard_id, set()))
    if versions:
        ensure_support(dst)
    if dst.execute("SELECT to_regclass('hypervault.shard_versions') IS NOT NULL").fetchone() == (True,):
        dst.execute("DELETE FROM hypervault.shard_versions WHERE shard = %s", (shard_id,))
        for version in versions:
            dst.execute(_version_row(shard_id, version))
