"""Moving one logical shard to another PostgreSQL server while writes continue (``hv shard move``).

Phases (each recorded in ``hypervault.moves`` on the source, so an interrupted move can be resumed or rolled back):

1. **prepare** — on the source, a row trigger logs the id of every insert/update/delete of the shard into
   ``hv_src_NNNN.changes`` (TRUNCATE is refused during a move); on the target, an empty
   ``hv_dst_NNNN.entities`` (a staging schema no process routes to).
2. **copy** — ``COPY (SELECT …) TO STDOUT`` streamed into ``COPY … FROM STDIN`` on the target, in key order, one
   committed chunk of ``COPY_CHUNK`` rows at a time (an interrupted copy resumes after the last committed
   chunk); then the primary key and indexes are built (faster than maintaining them row by row).
3. **catchup** — rounds of: delete a batch of logged ids (``DELETE … RETURNING``, in a transaction that commits
   only after the target did), re-read those rows on the source, replace them on the target. Replaying an id
   twice is harmless, so a crash anywhere only replays more. Rounds stop once one finds few changes.
4. **fence** — first the source server's schema-change lock (``_indexes.SCHEMA_LOCK``, shared: ``hv migrate`` and
   index builds and drops hold it exclusively, so the move waits for one that runs, catching up meanwhile), then
   ``LOCK TABLE … IN EXCLUSIVE MODE`` on the source shard only: its writers wait (reads go on), other shards never
   notice. Under both: migrations the source shard got during the move are replayed on the copy, the last logged
   changes are replayed, and the copy gets the indexes recorded (or loses those dropped) during the move — so a
   schema change racing a move ends on the shard's final home. (A schema change reading placement just before the
   switch, and locking just after it, misses the shard on both servers: the `Datastore` runs it again there.)
5. **verify** — row count and a checksum of every row (sum of ``hashtextextended`` over ``id, kind, body::text``,
   order independent) on both sides, in parallel, under the lock. A mismatch aborts before the switch.
6. **switch** — still under the lock, the source table moves to ``hv_src_NNNN`` and ``shardNNNN.entities``
   becomes a forwarding stub (a view and INSTEAD OF trigger raising SQLSTATE ``ZHV01`` with the new server and
   placement version, read by the store as `ShardMoved`) and the source records ``hypervault.placement``
   (shard → server, version); the target renames its staging table into ``shardNNNN``. The target commits first,
   then the source, then the target records the placement too (the source's record is the authority). Writers
   blocked by the lock then see the stub, are refused, and the `Datastore` retries them on the new server —
   refused, never lost. Stale processes (old config) are forwarded the same way, for reads too.
7. **drop** (optional) — drop ``hv_src_NNNN`` with the old rows; the stub stays as the forwarding pointer.

Interrupted before the source's switch commit, the source still serves the shard (a target copy is never routed
to); resume goes on from where the copy stopped (after its last committed chunk; straight to the catch-up once the
copy is complete and indexed; the change log kept capturing all along), rollback removes trigger, log and target
copy. After it, the target serves the shard and only the drop is left. One mover per shard (advisory lock).

Measured here (2 cores, 3 local servers, 100,000 jsonb rows, 4 threads writing): see docs/moving-shards.md.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from hvbackend_postgres._bouncer import session_lock_refusal, transaction_pooled
from hvbackend_postgres._common import refusal_error
from hvbackend_postgres._indexes import SCHEMA_LOCK, lock_holder
from hvbackend_postgres._migrate import (
    adopt_staging,
    carry_indexes,
    check_movable,
    reconcile_indexes,
    record_conflicts,
    replay_migrations,
    replay_new_migrations,
)
from hvbackend_postgres._schema import KIND_INDEX, PKEY_INDEX, TABLE, drop_stub_sql, shard_schema, stub_sql
from hvcore._placement import MoveProgress, MoveReport
from hvcore.errors import HypervaultError, MoveError, PermissionDenied, ReadOnlyServer

__all__ = [
    "CATCHUP_BATCH",
    "COPY_CHUNK",
    "FENCE_BELOW",
    "LOCK_TIMEOUT",
    "MoveEndpoint",
    "PostgresMover",
    "database_identity",
    "same_database_refusal",
    "shard_state",
]

COPY_CHUNK = 50_000  # rows per committed chunk of the bulk copy: an interrupted move resumes after the last one
CATCHUP_BATCH = 20_000  # logged changes replayed per round
FENCE_BELOW = 2_000  # a round replaying fewer changes than this ends the catch-up: the rest is done fenced
MAX_CATCHUP_ROUNDS = 30
SCHEMA_WAIT = 600.0  # longest wait for a schema change on the source (hv migrate, an index build) before the fence
LOCK_TIMEOUT = "1s"  # longest wait for the fence's lock (and trigger DDL) before giving way and retrying
FENCE_ATTEMPTS = 5
_MOVE_LOCK = 0x68765F6D6F7665  # "hv_move": advisory lock (key, shard) held by the one mover of a shard
_META_LOCK = 0x68765F6D657461  # "hv_meta": serializes creating the hypervault schema
PRE_SWITCH = ("prepare", "copy", "catchup", "fence", "verify")

Conn = psycopg.Connection[Any]


class MoveEndpoint(Protocol):
    """What a mover needs of a server store (`PostgresServerStore` is one): a label, a backend, admin sessions."""

    @property
    def label(self) -> str:
        """``host:port/dbname`` of the server."""
        ...

    backend: str

    def _admin(self) -> Conn:
        """A new autocommit session on the server, outside the pool (the caller closes it)."""
        ...


def _src_schema(shard_id: int) -> str:
    return f"hv_src_{shard_id:04d}"


def _dst_schema(shard_id: int) -> str:
    return f"hv_dst_{shard_id:04d}"


_META_DDL = (
    "CREATE SCHEMA IF NOT EXISTS hypervault;"
    "CREATE TABLE IF NOT EXISTS hypervault.placement (shard int PRIMARY KEY, server text NOT NULL, "
    "version bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());"
    "CREATE TABLE IF NOT EXISTS hypervault.moves (shard int PRIMARY KEY, source text NOT NULL, target text NOT NULL, "
    "phase text NOT NULL, version bigint NOT NULL, started_at timestamptz NOT NULL DEFAULT now(), "
    "updated_at timestamptz NOT NULL DEFAULT now());"
)


# placement records name the server by the mover's label and, since, by its database identity (`_record_placement`)
_IDENTITY_COLUMN = "ALTER TABLE hypervault.placement ADD COLUMN IF NOT EXISTS identity text NOT NULL DEFAULT ''"
_META_READY_SQL = (
    "SELECT to_regclass('hypervault.moves') IS NOT NULL AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute "
    "WHERE attrelid = to_regclass('hypervault.placement') AND attname = 'identity' AND NOT attisdropped)"
)


def _ensure_meta(conn: Conn) -> None:
    if conn.execute(_META_READY_SQL).fetchone() == (True,):
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_META_LOCK,))
        conn.execute(_META_DDL)
        # a table made by an earlier release gets the column; a role not owning it leaves it as it is
        with contextlib.suppress(pg_errors.InsufficientPrivilege), conn.transaction():
            conn.execute(_IDENTITY_COLUMN)


def _has_identity_column(conn: Conn) -> bool:
    return conn.execute(_META_READY_SQL).fetchone() == (True,)


# Every part renders the same whatever the session's settings (an entry's options may set TimeZone, DateStyle,
# extra_float_digits, search_path...): the start time in UTC through to_char (which neither TimeZone nor DateStyle
# changes), names and oids as they are, each function and operator qualified with pg_catalog (a search_path naming
# pg_catalog after a schema of look-alikes cannot reroute them).
IDENTITY_SQL = (
    "SELECT pg_catalog.current_database(), (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname "
    "OPERATOR(pg_catalog.=) pg_catalog.current_database()), pg_catalog.to_char(pg_catalog.timezone('UTC', "
    'pg_catalog.pg_postmaster_start_time()), \'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\')'
)
SYSTEM_ID_SQL = "SELECT system_identifier FROM pg_catalog.pg_control_system()"


def identity_text(system: str, row: Any) -> str:
    """The identity string of `database_identity` from the system identifier and `IDENTITY_SQL`'s row:
    ``system/start/dbname/oid``, the start as ``2026-11-30T09:00:00.000001Z`` (UTC, microseconds).

    Stubs written before (the start in the session's TimeZone, ``...+01:00``) are still matched:
    `hvcore._placement.canonical_identity` rewrites that form to this one."""
    return f"{system}/{row[2]}/{row[0]}/{row[1]}"


def database_identity(conn: Conn) -> str:
    """Which database ``conn`` reaches, whatever host name or address led there: the cluster's system identifier,
    the server's start time and the database's name and oid.

    The system identifier alone is shared by a cluster and its clones (a promoted base backup keeps it), so the
    postmaster's start time, to the microsecond, tells a clone from its original; both are readable by any role
    (``pg_control_system()`` may be revoked: then the start time and database decide alone).
    """
    row = conn.execute(IDENTITY_SQL).fetchone()
    assert row is not None
    system = "?"
    with contextlib.suppress(pg_errors.InsufficientPrivilege), conn.transaction():
        found = conn.execute(SYSTEM_ID_SQL).fetchone()
        system = str(found[0]) if found else "?"
    return identity_text(system, row)


_CAN_MOVE_SQL = (
    "SELECT pg_catalog.pg_is_in_recovery() OR pg_catalog.current_setting('transaction_read_only') = 'on', "
    "pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE'), "
    "(SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c "
    "WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(%s)), current_user"
)


def move_refusal(conn: Conn, shard_id: int, label: str, side: str, *, owns_table: bool) -> HypervaultError | None:
    """`ReadOnlyServer` or `PermissionDenied` for a move side that cannot take it, before anything changes: the
    server refuses writes, the role lacks CREATE on the database (the move makes schemas on both sides) or, on the
    source (``owns_table``), does not own the shard's table (change capture triggers, the switch's ALTER)."""
    row = conn.execute(_CAN_MOVE_SQL, (f'"{shard_schema(shard_id)}"."{TABLE}"',)).fetchone()
    assert row is not None
    read_only, create, owner, role = bool(row[0]), bool(row[1]), row[2], str(row[3])
    what = f"cannot move shard {shard_id}: the {side} server {label}"
    if read_only:
        return ReadOnlyServer(
            f"{what} refuses writes (a standby, or a read-only database or role {role!r}); nothing was changed. "
            "Point the entry at the primary, or ALTER DATABASE/ROLE ... SET default_transaction_read_only = off"
        )
    if not create:
        return PermissionDenied(
            f"{what} does not let role {role!r} create schemas (a move makes its working schemas there); nothing "
            f"was changed. GRANT CREATE ON DATABASE <db> TO {role} (or move as the role that ran hv init)"
        )
    if owns_table and owner is False:
        return PermissionDenied(
            f"{what}: role {role!r} does not own {shard_schema(shard_id)}.{TABLE} (a move installs change capture "
            "on it and moves it aside at the switch); nothing was changed. Move as the role that ran hv init (the "
            "owner of the shard schemas), or GRANT <owner> TO " + role
        )
    return None


@contextlib.contextmanager
def _refusals(doing: str, labels: str, conn: Conn, after: str = "") -> Iterator[None]:
    """A privilege or read-only refusal (`_common.refusal_error`) inside becomes `PermissionDenied` /
    `ReadOnlyServer` saying ``doing`` and naming ``labels``; other errors pass."""
    try:
        yield
    except psycopg.Error as exc:
        role = ""
        with contextlib.suppress(Exception):
            role = conn.info.user
        found = refusal_error(exc, labels, role)
        if found is None:
            raise
        raise type(found)(f"{doing}: {found}{after}") from None


def same_database_refusal(shard_id: int, source: str, target: str) -> MoveError:
    """The refusal of a move whose target entry reaches the source's own database (nothing was changed)."""
    return MoveError(
        f"cannot move shard {shard_id} from {source} to {target}: both server entries reach the same database "
        "(same PostgreSQL server and database under two names, e.g. 127.0.0.1 and localhost, or an entry copied "
        "for a new server whose host/port/dbname were not changed). The shard was left as it was, and is already "
        "there. Give each [[servers]] entry its own database (or remove the duplicate entry), then run hv shard "
        "plan again"
    )


def shard_state(conn: Conn, shard_id: int) -> str:
    """What ``shardNNNN.entities`` is on this server: ``live`` (a table), ``stub`` (forwarding view) or ``none``."""
    row = conn.execute(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (shard_schema(shard_id), TABLE),
    ).fetchone()
    if row is None:
        return "none"
    return "live" if row[0] in ("r", "p") else "stub"


def _qualified(schema: str, name: str = TABLE) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def _checksum_sql(table: sql.Composable) -> sql.Composed:
    return sql.SQL(
        "SELECT count(*), coalesce(sum(hashtextextended(id::text || ' ' || kind::text || ' ' || body::text, 0)), 0)"
        "::text FROM {}"
    ).format(table)


def _record_placement(conn: Conn, shard_id: int, server: str, version: int, identity: str = "") -> None:
    """Record shard → server (label, and database identity so processes naming it otherwise match it)."""
    if identity and _has_identity_column(conn):
        conn.execute(
            "INSERT INTO hypervault.placement (shard, server, version, identity) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (shard) DO UPDATE SET server = EXCLUDED.server, version = EXCLUDED.version, "
            "identity = EXCLUDED.identity, updated_at = now() WHERE hypervault.placement.version < EXCLUDED.version",
            (shard_id, server, version, identity),
        )
        return
    conn.execute(
        "INSERT INTO hypervault.placement (shard, server, version) VALUES (%s, %s, %s) "
        "ON CONFLICT (shard) DO UPDATE SET server = EXCLUDED.server, version = EXCLUDED.version, updated_at = now() "
        "WHERE hypervault.placement.version < EXCLUDED.version",
        (shard_id, server, version),
    )


class PostgresMover:
    """Shard-move operations with one PostgreSQL server as the source (or holder of placement records)."""

    __module__ = "hvbackend_postgres"

    def __init__(self, store: MoveEndpoint) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"<PostgresMover {self.store.label}>"

    @contextlib.contextmanager
    def _conn(self, store: MoveEndpoint | None = None) -> Iterator[Conn]:
        conn = (store or self.store)._admin()
        try:
            yield conn
        finally:
            conn.close()

    # -- placement ------------------------------------------------------------------------------------------

    def placement(self) -> dict[int, tuple[str, int]]:
        """Shard → (server label, version) recorded on this server (empty if no shard moved in or out)."""
        return {shard: (label, version) for shard, (label, version, _) in self.placement_records().items()}

    def placement_records(self) -> dict[int, tuple[str, int, str]]:
        """Shard → (server label, version, database identity) recorded on this server; the identity is "" for
        records written before identities were (`hvcore._placement.match_identity` matches the others)."""
        with self._conn() as conn:
            if conn.execute("SELECT to_regclass('hypervault.placement') IS NULL").fetchone() == (True,):
                return {}
            column = "identity" if _has_identity_column(conn) else "''"
            rows = conn.execute(f"SELECT shard, server, version, {column} FROM hypervault.placement").fetchall()
        return {int(r[0]): (str(r[1]), int(r[2]), str(r[3] or "")) for r in rows}

    def record_placement(self, shard_id: int, server: str, version: int, identity: str = "") -> None:
        """Record that ``shard_id`` lives on ``server`` (whose database is ``identity``, if given) since ``version``
        (keeps the highest version)."""
        with self._conn() as conn:
            _ensure_meta(conn)
            _record_placement(conn, shard_id, server, version, identity)

    def move_state(self, shard_id: int) -> dict[str, Any] | None:
        """The move of ``shard_id`` recorded on this server as its source (phase, target, version), or None."""
        with self._conn() as conn:
            return self._state(conn, shard_id)

    @staticmethod
    def _state(conn: Conn, shard_id: int) -> dict[str, Any] | None:
        if conn.execute("SELECT to_regclass('hypervault.moves') IS NULL").fetchone() == (True,):
            return None
        row = conn.execute(
            "SELECT shard, source, target, phase, version, started_at, updated_at FROM hypervault.moves "
            "WHERE shard = %s",
            (shard_id,),
        ).fetchone()
        if row is None:
            return None
        names = ("shard", "source", "target", "phase", "version", "started_at", "updated_at")
        return dict(zip(names, row, strict=True))

    def database_identity(self) -> str:
        """Which database this server entry reaches (equal for two entries naming one database), see
        `database_identity`."""
        with self._conn() as conn:
            return database_identity(conn)

    def state_of(self, shard_id: int) -> str:
        """``live``, ``stub`` or ``none``: what this server holds as ``shardNNNN.entities``."""
        with self._conn() as conn:
            return shard_state(conn, shard_id)

    # -- the move -------------------------------------------------------------------------------------------

    def move_to(
        self,
        shard_id: int,
        target: MoveEndpoint,
        *,
        drop_source: bool = False,
        progress: MoveProgress | None = None,
    ) -> MoveReport:
        """Move ``shard_id`` from this server to ``target`` while writes continue (see the module docstring)."""
        started = time.perf_counter()
        source = self.store
        if target.backend != source.backend:
            raise MoveError(f"cannot move shard {shard_id} from a {source.backend} server to a {target.backend} one")
        report = MoveReport(shard_id=shard_id, source=source.label, target=target.label)
        step: MoveProgress = progress or (lambda phase, done, total: None)
        with self._conn() as ctl, self._conn(target) as dst:
            for endpoint, conn in ((source, ctl), (target, dst)):
                if transaction_pooled(endpoint, conn):
                    raise MoveError(session_lock_refusal(f"a move of shard {shard_id}", endpoint.label))
            for endpoint, conn, side in ((source, ctl, "source"), (target, dst, "target")):
                refusal = move_refusal(conn, shard_id, endpoint.label, side, owns_table=side == "source")
                if refusal is not None:
                    raise refusal
            # a privilege or read-only refusal past the checks above: typed, both servers named
            with _refusals(
                f"the move of shard {shard_id} stopped",
                f"{source.label} (source) or {target.label} (target)",
                ctl,
                ". Its state is recorded: run the move again once fixed (it resumes), or roll it back",
            ):
                self._move(ctl, dst, shard_id, target, report, step, drop_source=drop_source)
        report.seconds = time.perf_counter() - started
        return report

    def _move(
        self,
        ctl: Conn,
        dst: Conn,
        shard_id: int,
        target: MoveEndpoint,
        report: MoveReport,
        step: MoveProgress,
        *,
        drop_source: bool,
    ) -> None:
        source = self.store
        self._target_identity = database_identity(dst)  # also written into the stub (followed by identity)
        if database_identity(ctl) == self._target_identity:  # before anything changes on either side
            raise same_database_refusal(shard_id, source.label, target.label)
        conflicts = record_conflicts(ctl, dst)  # the move copies the source's records over the target's: not silently
        if conflicts:
            raise MoveError(
                f"shard {shard_id} cannot be moved from {source.label} to {target.label}: they record different "
                f"schema definitions ({'; '.join(conflicts)}), and the move would replace the target's with the "
                "source's. Make them agree first (hv migrate with the right files records them on every server; "
                "finish or undo an index drop), then move. Nothing was changed"
            )
        _ensure_meta(ctl)
        _ensure_meta(dst)
        got = ctl.execute("SELECT pg_try_advisory_lock(%s, %s)", (_MOVE_LOCK & 0x7FFFFFFF, shard_id)).fetchone()
        if got != (True,):
            raise MoveError(f"another process is moving shard {shard_id} from {source.label} right now")
        state = self._state(ctl, shard_id)
        if state is not None and state["phase"] == "switched":
            # a stale record of an older move out of here; the shard is live here again
            self._forget_old_source(ctl, shard_id)
            state = None
        if state is not None and state["target"] != target.label:
            raise MoveError(
                f"shard {shard_id} has an unfinished move to {state['target']} (phase {state['phase']}): "
                f"resume it with that target, or roll it back first (hv shard move {shard_id} --rollback)"
            )
        if shard_state(ctl, shard_id) != "live":
            raise MoveError(f"shard {shard_id} is not served by {source.label}: nothing to move from there")
        old = self._state(dst, shard_id)
        if old is not None and old["phase"] == "switched":
            self._forget_old_source(dst, shard_id)  # rows an older move out of the target left behind
        if state is not None:
            report.resumed_from = str(state["phase"])
            report.version = int(state["version"])
            self._undo_half_switch(ctl, dst, shard_id, target)
        else:
            self._check_target_free(dst, shard_id, target)
            report.version = 1 + max(self._placed_version(ctl, shard_id), self._placed_version(dst, shard_id), 0)
            ctl.execute(
                "INSERT INTO hypervault.moves (shard, source, target, phase, version) VALUES (%s, %s, %s, %s, %s)",
                (shard_id, source.label, target.label, "prepare", report.version),
            )
        body_type = self._body_type(dst, target)
        # a resumed move keeps what the target already has (a copy found wrong restarts from "prepare")
        keep = state is not None and state["phase"] != "prepare"
        step("prepare", 0, 1)
        self._prepare(ctl, dst, shard_id, body_type, keep_staging=keep)
        step("prepare", 1, 1)
        if keep and self._staging_indexed(dst, shard_id):
            report.notes.append("the bulk copy was complete: resumed at the catch-up")
        else:
            self._phase(ctl, shard_id, "copy")
            self._copy(ctl, dst, shard_id, report, step, resume=keep)
        self._phase(ctl, shard_id, "catchup")
        self._catchup(ctl, dst, shard_id, report, step)
        self._fence_and_switch(ctl, dst, shard_id, target, body_type, report, step)
        if drop_source:
            step("drop", 0, 1)
            report.dropped_source = self._drop_source(ctl, shard_id)
            step("drop", 1, 1)

    @staticmethod
    def _placed_version(conn: Conn, shard_id: int) -> int:
        row = conn.execute("SELECT version FROM hypervault.placement WHERE shard = %s", (shard_id,)).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _phase(conn: Conn, shard_id: int, phase: str) -> None:
        conn.execute("UPDATE hypervault.moves SET phase = %s, updated_at = now() WHERE shard = %s", (phase, shard_id))

    @staticmethod
    def _body_type(dst: Conn, target: MoveEndpoint) -> sql.Composable:
        if target.backend != "hstore":
            return sql.SQL("jsonb")
        dst.execute("CREATE EXTENSION IF NOT EXISTS hstore")
        row = dst.execute(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'hstore'"
        ).fetchone()
        assert row is not None
        return sql.SQL("{}.hstore").format(sql.Identifier(str(row[0])))

    def _forget_old_source(self, conn: Conn, shard_id: int) -> None:
        """Drop what an older, finished move out of this server left (the shard is live here again)."""
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(_src_schema(shard_id))))
        conn.execute("DELETE FROM hypervault.moves WHERE shard = %s", (shard_id,))

    @staticmethod
    def _check_target_free(dst: Conn, shard_id: int, target: MoveEndpoint) -> None:
        """A fresh move needs the target without live rows of the shard (an empty provisioned table is dropped)."""
        if shard_state(dst, shard_id) != "live":
            return
        table = _qualified(shard_schema(shard_id))
        if dst.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(table)).fetchone() == (True,):
            raise MoveError(
                f"{target.label} already holds rows of shard {shard_id} in {shard_schema(shard_id)}, and the source "
                f"serves the shard too: two copies, at most one of which your processes use (an earlier config? a "
                "restored backup?). The move was refused and changed nothing. Find which copy is routed to "
                f"(hv status, every process's config) before touching either; to move the unused one out of the "
                f"way, rename it (ALTER SCHEMA {shard_schema(shard_id)} RENAME TO ...) on the server that does not "
                "serve the shard, then move again"
            )
        dst.execute(sql.SQL("DROP TABLE {}").format(table))

    def _undo_half_switch(self, ctl: Conn, dst: Conn, shard_id: int, target: MoveEndpoint) -> None:
        """The target committed its switch but the source did not: its copy is unrouted; put a stub back."""
        if shard_state(dst, shard_id) != "live":
            return
        with dst.transaction():
            dst.execute(sql.SQL("DROP TABLE {}").format(_qualified(shard_schema(shard_id))))
            version = self._placed_version(ctl, shard_id)
            if version > 0:  # it forwarded here before: forward again to where the shard really is
                source = database_identity(ctl)
                dst.execute(stub_sql(shard_id, self._body_type(dst, target), self.store.label, version, source))
                _record_placement(dst, shard_id, self.store.label, version, source)

    def _retry_lock(self, conn: Conn, statement: sql.Composed, what: str) -> None:
        """Run DDL that needs a table lock with a short lock timeout, retrying while writers hold the table."""
        for attempt in range(FENCE_ATTEMPTS * 4):
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
                    conn.execute(statement)
                return
            except pg_errors.LockNotAvailable:
                time.sleep(0.05 * (attempt + 1))
        raise MoveError(f"could not lock the shard's table to {what}: long transactions keep holding it")

    def _prepare(self, ctl: Conn, dst: Conn, shard_id: int, body_type: sql.Composable, *, keep_staging: bool) -> None:
        check_movable(ctl, shard_id)  # data outside entities (id, kind, body) would not be copied: refuse (_migrate)
        table = _qualified(shard_schema(shard_id))
        src = sql.Identifier(_src_schema(shard_id))
        capture = sql.SQL(
            "CREATE SCHEMA IF NOT EXISTS {src};"
            "CREATE TABLE IF NOT EXISTS {src}.changes (seq bigserial PRIMARY KEY, id bigint NOT NULL);"
            "CREATE OR REPLACE FUNCTION {src}.capture() RETURNS trigger LANGUAGE plpgsql AS $hv$BEGIN "
            "IF TG_OP = 'DELETE' THEN INSERT INTO {src}.changes (id) VALUES (OLD.id); "
            "ELSE INSERT INTO {src}.changes (id) VALUES (NEW.id); "
            "IF TG_OP = 'UPDATE' AND OLD.id <> NEW.id THEN INSERT INTO {src}.changes (id) VALUES (OLD.id); END IF; "
            "END IF; RETURN NULL; END$hv$;"
            "CREATE OR REPLACE FUNCTION {src}.no_truncate() RETURNS trigger LANGUAGE plpgsql AS $hv$BEGIN "
            "RAISE EXCEPTION 'shard {shard} is being moved: TRUNCATE is refused until the move ends'; END$hv$;"
            "CREATE OR REPLACE TRIGGER hv_capture AFTER INSERT OR UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION {src}.capture();"
            "CREATE OR REPLACE TRIGGER hv_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION {src}.no_truncate();"
        ).format(src=src, table=table, shard=sql.SQL(str(int(shard_id))))
        self._retry_lock(ctl, capture, "install change capture")
        dst_schema = sql.Identifier(_dst_schema(shard_id))
        with dst.transaction():
            if not keep_staging:
                dst.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(dst_schema))
            dst.execute(
                sql.SQL(
                    "CREATE SCHEMA IF NOT EXISTS {s}; CREATE TABLE IF NOT EXISTS {s}.{t} (id bigint NOT NULL, "
                    "kind smallint NOT NULL, body {body} NOT NULL)"
                ).format(s=dst_schema, t=sql.Identifier(TABLE), body=body_type)
            )
            # the shard's migrations, replayed once on the empty staging table: the copy brings the data (_migrate)
            replay_migrations(ctl, dst, shard_id, _dst_schema(shard_id), self.store.backend)

    @staticmethod
    def _staging_indexed(dst: Conn, shard_id: int) -> bool:
        """Whether the target's staging copy is complete: its primary key is built only after the last chunk."""
        row = dst.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
            "WHERE n.nspname = %s AND c.contype = 'p')",
            (_dst_schema(shard_id),),
        ).fetchone()
        return row == (True,)

    def _copy(
        self, ctl: Conn, dst: Conn, shard_id: int, report: MoveReport, step: MoveProgress, *, resume: bool
    ) -> None:
        t0 = time.perf_counter()
        source_table = _qualified(shard_schema(shard_id))
        staging = _qualified(_dst_schema(shard_id))
        row = ctl.execute(sql.SQL("SELECT count(*) FROM {}").format(source_table)).fetchone()
        total = int(row[0]) if row else 0
        done, last = 0, -1
        if resume:  # chunks committed before the interruption stay: go on after the highest key copied
            row = dst.execute(sql.SQL("SELECT count(*), coalesce(max(id), -1) FROM {}").format(staging)).fetchone()
            assert row is not None
            done, last = int(row[0]), int(row[1])
            if done:
                report.notes.append(f"the bulk copy resumed after {done:,} rows already on the target")
        step("copy", done, max(total, done))
        in_sql = sql.SQL("COPY {} (id, kind, body) FROM STDIN").format(staging)
        while True:
            out_sql = sql.SQL(
                "COPY (SELECT id, kind, body FROM {} WHERE id > {} ORDER BY id LIMIT {}) TO STDOUT"
            ).format(source_table, sql.Literal(last), sql.Literal(COPY_CHUNK))
            lines, tail = 0, b""
            with (
                dst.transaction(),
                ctl.cursor() as out_cur,
                dst.cursor() as in_cur,
                out_cur.copy(out_sql) as out,
                in_cur.copy(in_sql) as into,
            ):
                for block in out:
                    data = bytes(block)
                    into.write(data)
                    lines += data.count(b"\n")
                    joined = tail + data  # keep the last row: its key is where the next chunk starts
                    tail = joined[joined.rfind(b"\n", 0, len(joined) - 1) + 1 :]
                    step("copy", done + lines, max(total, done + lines))
            done += lines
            if lines < COPY_CHUNK:
                break
            last = int(tail.split(b"\t", 1)[0])
        report.rows = done
        schema = sql.Identifier(_dst_schema(shard_id))
        indexes = sql.SQL(
            "ALTER TABLE {s}.{t} ADD CONSTRAINT {pkey} PRIMARY KEY (id);CREATE INDEX {kind_idx} ON {s}.{t} (kind, id);"
        ).format(
            s=schema, t=sql.Identifier(TABLE), pkey=sql.Identifier(PKEY_INDEX), kind_idx=sql.Identifier(KIND_INDEX)
        )
        # the recorded secondary indexes and the body index if recorded, built with the mover's own (_migrate)
        indexes += carry_indexes(ctl, dst, _dst_schema(shard_id), self.store.backend)
        dst.execute(indexes)
        report.copy_seconds = time.perf_counter() - t0

    def _replay(self, src: Conn, dst: Conn, shard_id: int, limit: int) -> int:
        """One catch-up round: replay up to ``limit`` logged changes; the log rows go only once the target commits."""
        changes = _qualified(_src_schema(shard_id), "changes")
        with src.transaction():
            rows = src.execute(
                sql.SQL("DELETE FROM {c} WHERE seq IN (SELECT seq FROM {c} ORDER BY seq LIMIT %s) RETURNING id").format(
                    c=changes
                ),
                (limit,),
            ).fetchall()
            if not rows:
                return 0
            ids = sorted({int(r[0]) for r in rows})
            staging = _qualified(_dst_schema(shard_id))
            out_sql = sql.SQL("COPY (SELECT id, kind, body FROM {} WHERE id = ANY({}::bigint[])) TO STDOUT").format(
                _qualified(shard_schema(shard_id)), sql.Literal(ids)
            )
            with dst.transaction():
                dst.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(staging), (ids,))
                with (
                    src.cursor() as out_cur,
                    dst.cursor() as in_cur,
                    out_cur.copy(out_sql) as out,
                    in_cur.copy(sql.SQL("COPY {} (id, kind, body) FROM STDIN").format(staging)) as into,
                ):
                    for block in out:
                        into.write(block)
            return len(rows)

    def _catchup(self, ctl: Conn, dst: Conn, shard_id: int, report: MoveReport, step: MoveProgress) -> None:
        step("catchup", 0, MAX_CATCHUP_ROUNDS)
        for round_no in range(1, MAX_CATCHUP_ROUNDS + 1):
            replayed = self._replay(ctl, dst, shard_id, CATCHUP_BATCH)
            report.catchup_rounds += 1
            report.catchup_rows += replayed
            step("catchup", round_no, MAX_CATCHUP_ROUNDS)
            if replayed < FENCE_BELOW:
                return
        report.notes.append(f"catch-up did not settle in {MAX_CATCHUP_ROUNDS} rounds: fencing anyway")

    def _checksums(self, ctl: Conn, dst: Conn, shard_id: int) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """Count and checksum of the source (under the lock, on ``ctl``) and the staging copy, in parallel."""
        found: dict[str, Any] = {}

        def target_side() -> None:
            try:
                found["dst"] = dst.execute(_checksum_sql(_qualified(_dst_schema(shard_id)))).fetchone()
            except BaseException as exc:
                found["error"] = exc

        thread = threading.Thread(target=target_side, name="hv-move-verify")
        thread.start()
        try:
            source = ctl.execute(_checksum_sql(_qualified(shard_schema(shard_id)))).fetchone()
        finally:
            thread.join()
        if "error" in found:
            raise found["error"]
        assert source is not None and found.get("dst") is not None
        return tuple(source), tuple(found["dst"])

    def _fence_and_switch(
        self,
        ctl: Conn,
        dst: Conn,
        shard_id: int,
        target: MoveEndpoint,
        body_type: sql.Composable,
        report: MoveReport,
        step: MoveProgress,
    ) -> None:
        self._hold_schema_lock(ctl, dst, shard_id)
        try:
            self._fence_attempts(ctl, dst, shard_id, target, body_type, report, step)
        finally:
            with contextlib.suppress(psycopg.Error):  # a lost session released it already
                ctl.execute("SELECT pg_advisory_unlock_shared(%s)", (SCHEMA_LOCK,))

    def _hold_schema_lock(self, ctl: Conn, dst: Conn, shard_id: int) -> None:
        """Take the source server's schema-change lock (shared: moves of other shards go on; `schema_lock`'s
        holders, hv migrate and index builds and drops, exclude it), replaying changes while one runs: from the
        fence to the switch no schema change lands on the source shard, and what landed before is on the copy."""
        deadline = time.monotonic() + SCHEMA_WAIT
        while ctl.execute("SELECT pg_try_advisory_lock_shared(%s)", (SCHEMA_LOCK,)).fetchone() != (True,):
            if time.monotonic() >= deadline:
                raise MoveError(
                    f"shard {shard_id}: a schema change (hv migrate, an index build or drop) on {self.store.label} "
                    f"held by {lock_holder(ctl, SCHEMA_LOCK)} did not end within {SCHEMA_WAIT:g} s; the source still "
                    "serves the shard: resume the move once it is done"
                )
            self._replay(ctl, dst, shard_id, CATCHUP_BATCH)
            time.sleep(0.2)

    def _fence_attempts(
        self,
        ctl: Conn,
        dst: Conn,
        shard_id: int,
        target: MoveEndpoint,
        body_type: sql.Composable,
        report: MoveReport,
        step: MoveProgress,
    ) -> None:
        table = _qualified(shard_schema(shard_id))
        staging = _dst_schema(shard_id)
        mismatch = False
        for attempt in range(1, FENCE_ATTEMPTS + 1):
            report.fence_attempts = attempt
            self._phase(ctl, shard_id, "fence")
            step("fence", 0, 1)
            t0 = time.perf_counter()
            try:
                with ctl.transaction():
                    ctl.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
                    ctl.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(table))
                    t_locked = time.perf_counter()
                    # what hv migrate and index builds did to the source shard during the move, on the copy too
                    check_movable(ctl, shard_id)  # a migration may have added data a move does not copy
                    new = replay_new_migrations(ctl, dst, shard_id, staging, self.store.backend)
                    while self._replay(ctl, dst, shard_id, CATCHUP_BATCH):
                        pass
                    built, dropped = reconcile_indexes(ctl, dst, staging, self.store.backend)
                    t_replayed = time.perf_counter()
                    step("fence", 1, 1)
                    step("verify", 0, 1)
                    source_sum, target_sum = self._checksums(ctl, dst, shard_id)
                    if source_sum != target_sum:
                        mismatch = True
                        raise MoveError(
                            f"shard {shard_id}: the copy on {target.label} does not match the source "
                            f"(rows/checksum {source_sum} vs {target_sum}); the source still serves it, resume to "
                            "copy again"
                        )
                    report.checksum = f"{source_sum[0]} rows, sum {source_sum[1]}"
                    step("verify", 1, 1)
                    t_verified = time.perf_counter()
                    step("switch", 0, 2)
                    self._switch_source(ctl, shard_id, target.label, body_type, report.version)
                    with dst.transaction():
                        dst.execute(
                            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(shard_schema(shard_id)))
                        )
                        dst.execute(drop_stub_sql(shard_id))
                        # every staging object (entities, what migrations made) into the shard's schema (_migrate)
                        adopt_staging(ctl, dst, shard_id, _dst_schema(shard_id))
                    step("switch", 1, 2)  # the target committed; the source commits when this block ends
            except MoveError:
                if mismatch:  # the copy is not to be trusted: a resume copies again from scratch
                    self._phase(ctl, shard_id, "prepare")
                raise
            except pg_errors.LockNotAvailable:
                report.notes.append(f"fence attempt {attempt}: lock not granted within {LOCK_TIMEOUT}")
                self._phase(ctl, shard_id, "catchup")
                self._replay(ctl, dst, shard_id, CATCHUP_BATCH)
                continue
            report.pause_seconds = time.perf_counter() - t0
            if new or built or dropped:
                report.notes.append(
                    "schema changes made during the move, applied to the copy under the fence: "
                    + "; ".join(
                        part
                        for part in (
                            f"migrations {', '.join(map(str, new))}" if new else "",
                            f"indexes built {', '.join(built)}" if built else "",
                            f"indexes dropped {', '.join(dropped)}" if dropped else "",
                        )
                        if part
                    )
                )
            # only now (the source's record is the authority): a crash before this leaves the target unrecorded
            _record_placement(dst, shard_id, target.label, report.version, self._target_identity)
            report.notes.append(
                f"pause: lock {1000 * (t_locked - t0):.0f} ms, last changes {1000 * (t_replayed - t_locked):.0f} ms, "
                f"verify {1000 * (t_verified - t_replayed):.0f} ms, "
                f"switch {1000 * (time.perf_counter() - t_verified):.0f} ms"
            )
            step("switch", 2, 2)
            return
        raise MoveError(
            f"shard {shard_id}: could not fence writes in {FENCE_ATTEMPTS} attempts (long transactions hold its "
            "table); the source still serves it: resume later"
        )

    def _switch_source(self, ctl: Conn, shard_id: int, server: str, body_type: sql.Composable, version: int) -> None:
        """Under the fence: move the source table aside, leave the forwarding stub, record placement and phase."""
        ctl.execute(
            sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                _qualified(shard_schema(shard_id)), sql.Identifier(_src_schema(shard_id))
            )
        )
        ctl.execute(stub_sql(shard_id, body_type, server, version, getattr(self, "_target_identity", "")))
        _record_placement(ctl, shard_id, server, version, getattr(self, "_target_identity", ""))
        self._phase(ctl, shard_id, "switched")

    def _drop_source(self, conn: Conn, shard_id: int) -> bool:
        state = self._state(conn, shard_id)
        if state is None or state["phase"] != "switched":
            return False
        with conn.transaction():
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(_src_schema(shard_id))))
            conn.execute("DELETE FROM hypervault.moves WHERE shard = %s", (shard_id,))
        return True

    def drop_source(self, shard_id: int) -> bool:
        """Drop the old rows a finished move out of this server left (the forwarding stub stays)."""
        with self._conn() as conn, _refusals(f"dropping the old rows of shard {shard_id}", self.store.label, conn):
            return self._drop_source(conn, shard_id)

    def rollback(self, shard_id: int, target: MoveEndpoint | None) -> str:
        """Undo an unfinished move before its switch: capture trigger, change log and target copy go."""
        labels = self.store.label + (f" (source) or {target.label} (target)" if target is not None else "")
        with self._conn() as ctl, _refusals(f"the rollback of the move of shard {shard_id} stopped", labels, ctl):
            if transaction_pooled(self.store, ctl):
                raise MoveError(session_lock_refusal(f"a rollback of the move of shard {shard_id}", self.store.label))
            got = ctl.execute("SELECT pg_try_advisory_lock(%s, %s)", (_MOVE_LOCK & 0x7FFFFFFF, shard_id)).fetchone()
            if got != (True,):
                raise MoveError(f"another process is moving shard {shard_id} right now: stop it first")
            state = self._state(ctl, shard_id)
            if state is None:
                return f"no unfinished move of shard {shard_id} on {self.store.label}"
            if state["phase"] not in PRE_SWITCH:
                raise MoveError(
                    f"the move of shard {shard_id} to {state['target']} already switched: move the shard back instead"
                )
            if target is not None:
                with self._conn(target) as dst:
                    self._undo_half_switch(ctl, dst, shard_id, target)
                    dst.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(_dst_schema(shard_id)))
                    )
            table = _qualified(shard_schema(shard_id))
            self._retry_lock(
                ctl,
                sql.SQL(
                    "DROP TRIGGER IF EXISTS hv_capture ON {t}; DROP TRIGGER IF EXISTS hv_no_truncate ON {t};"
                    "DROP SCHEMA IF EXISTS {s} CASCADE; DELETE FROM hypervault.moves WHERE shard = {shard};"
                ).format(t=table, s=sql.Identifier(_src_schema(shard_id)), shard=sql.Literal(shard_id)),
                "remove change capture",
            )
        return (
            f"rolled back the move of shard {shard_id} to {state['target']} (was in phase {state['phase']}); "
            f"{self.store.label} serves it"
        )
