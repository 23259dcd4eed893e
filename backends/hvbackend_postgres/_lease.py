"""Worker numbers leased from PostgreSQL: keys unique by construction across hosts, no Redis, no round trip per id.

`lease_worker` takes libpq connection settings and returns a started `PostgresWorkerLease`: a free worker number
(of ``2**bits``) held in a table of the database, renewed by a background thread, released by `close`. Give it
to a generator, ``KeyGenerator(worker=lease)``, and that generator uses only its slice of the sequence bits
(hvcore/_worker.py), so no other generator holding another number of the same table ever makes the same key.

The table, ``{schema}.{table}`` (``hypervault.worker_leases``, made on first use), has one row per (namespace,
worker): the holding lease's random token, and ``horizon_ms``: the last millisecond (Unix ms, as keys carry it)
the holder may use. Every step is one short statement in its own transaction, judged by the server's clock:

- acquire: the row of a number that is free (released, or its horizon passed by the server's clock) is taken,
  with ``FOR UPDATE SKIP LOCKED`` (concurrent acquirers get different rows); its old horizon becomes the new
  holder's floor (its keys start after it) and its horizon becomes the server's now + ``ttl``;
- renew (every ``ttl / 4``): ``horizon_ms = greatest(horizon_ms, now + ttl) WHERE holder = our token``; only a
  value the server returned after commit ever extends what the generator may use;
- release (`close`): the token is cleared and the horizon lowered to this host's clock + 1 s (the generator
  refuses keys by then; kept whole after a fork, as children may go on): the next holder starts after it.

Why this is safe even when the holder is cut off without knowing (a dead connection, a stopped process, a
network split): the old holder makes keys only up to the last horizon the server confirmed to it, and a new
holder takes the row only once the server's clock has passed that horizon, then starts after it. The two never
share a millisecond, whatever their clocks say, so they never share a key. What the holder sees when its lease
is lost: if renewals fail (server unreachable), the generator goes on until the confirmed horizon and then
raises `WorkerLeaseLost` for every key; a later successful renewal (the row is still ours: nobody could take it)
resumes it. If the row was taken meanwhile, the next renewal finds another token, the lease is revoked for good
and every key raises `WorkerLeaseLost`. A killed process frees its number ``ttl`` after its last renewal.

Why a table rather than a session advisory lock (which dies with its connection and frees the number at once):
the lock frees the number while a cut-off holder may still be making keys with it, so the next holder would still
have to wait out a horizon; the table states that horizon, needs no session to stay open (it works through
PgBouncer in transaction mode), and survives a server restart. The cost: a dead holder's number stays taken up
to ``ttl``; acquire prefers the numbers free the longest.

The async helper, `alease_worker`, acquires in a worker thread and returns the same lease: renewals run on their
own thread, so an event loop that is busy for a while does not make the lease lapse.

Needs durable commits on the lease table (``synchronous_commit`` is set on for its statements); a failover to an
asynchronous replica that lost the last renewals could hand out a number with too low a floor, as for Redis
without ``wait_replicas``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from hvbackend_postgres._common import bounded_connection_class, scrub
from hvcore._attempts import earlier_failure, failed_attempt
from hvcore._worker import WorkerGrant, WorkerSlice, lease_option_problems
from hvcore.errors import ConfigError, NoFreeWorker, ServerUnavailable, WorkerLeaseError

__all__ = ["DEFAULT_SCHEMA", "DEFAULT_TABLE", "LeaseOptions", "PostgresWorkerLease", "alease_worker", "lease_worker"]

DEFAULT_SCHEMA: Final = "hypervault"
DEFAULT_TABLE: Final = "worker_leases"
_DDL_LOCK: Final = 0x68765F6C65617365  # "hv_lease": one process creates the table at a time
_NOW_MS: Final = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
LEASE_FIELDS: Final = ("bits", "namespace", "schema", "table", "ttl", "acquire_timeout", "connect_timeout")
_RELEASE_MARGIN_MS: Final = 1000  # a released number's horizon: this host's clock at release + this


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseOptions:
    """How a worker number is leased: its table, its namespace, its bits, and how long a lease lasts unrenewed.

    ``bits`` (1..8, default 4: 16 workers × 64 ids per shard per millisecond) must be the same for every lease of
    a ``namespace`` (a `ConfigError` names the one in use); namespaces are separate number spaces, for
    generators that never share shards (or tests). ``ttl`` (seconds, 0.5..3600, default 10) is how far ahead a
    renewal confirms the lease; it is renewed every ``ttl / 4``, so it survives a server unreachable for about
    three quarters of ``ttl``, and a killed holder's number is free ``ttl`` after its last renewal.
    ``acquire_timeout`` (s, default 0) is how long `lease_worker` retries while every number is held before it
    raises `NoFreeWorker`; ``connect_timeout`` (s, default 5) bounds each connection attempt and statement.
    """

    bits: int = 4
    namespace: str = "default"
    schema: str = DEFAULT_SCHEMA
    table: str = DEFAULT_TABLE
    ttl: float = 10.0
    acquire_timeout: float = 0.0
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        problems = lease_option_problems({name: getattr(self, name) for name in LEASE_FIELDS})
        if problems:
            raise ConfigError("invalid worker lease options: " + "; ".join(problems))

    @property
    def ttl_ms(self) -> int:
        """``ttl`` in milliseconds."""
        return math.ceil(self.ttl * 1000)


class _Statements:
    """The lease's SQL, composed once with `psycopg.sql` (identifiers quoted, values always bound)."""

    def __init__(self, options: LeaseOptions) -> None:
        table = sql.Identifier(options.schema, options.table)
        self.qualified = table.as_string()  # the quoted name, for to_regclass
        self.exists = sql.SQL("SELECT pg_catalog.to_regclass(%(name)s) IS NOT NULL")
        self.ddl = [
            sql.SQL("SELECT pg_catalog.pg_advisory_xact_lock({})").format(sql.Literal(_DDL_LOCK)),
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(options.schema)),
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " namespace text NOT NULL,"
                " worker integer NOT NULL,"
                " bits smallint NOT NULL,"
                " holder text,"
                " horizon_ms bigint NOT NULL DEFAULT 0,"
                " holder_info text,"
                " acquired_at timestamptz,"
                " renewed_at timestamptz,"
                " PRIMARY KEY (namespace, worker))"
            ).format(table),
        ]
        self.bits_in_use = sql.SQL("SELECT DISTINCT bits FROM {} WHERE namespace = %(ns)s").format(table)
        self.rows = sql.SQL(
            "INSERT INTO {} (namespace, worker, bits) SELECT %(ns)s, w, %(bits)s"
            " FROM generate_series(0, %(workers)s - 1) AS w ON CONFLICT DO NOTHING"
        ).format(table)
        self.acquire = sql.SQL(
            "WITH now AS (SELECT " + _NOW_MS + " AS ms),"
            " pick AS (SELECT l.worker, l.horizon_ms FROM {t} AS l, now"
            "  WHERE l.namespace = %(ns)s AND (l.holder IS NULL OR l.horizon_ms < now.ms)"
            "  ORDER BY l.horizon_ms, l.worker LIMIT 1 FOR UPDATE OF l SKIP LOCKED)"
            " UPDATE {t} AS l SET holder = %(token)s, holder_info = %(info)s,"
            "  horizon_ms = greatest(l.horizon_ms, now.ms + %(ttl_ms)s),"
            "  acquired_at = clock_timestamp(), renewed_at = clock_timestamp()"
            " FROM pick, now WHERE l.namespace = %(ns)s AND l.worker = pick.worker"
            " RETURNING l.worker, pick.horizon_ms, l.horizon_ms, now.ms"
        ).format(t=table)
        self.soonest = sql.SQL(
            "SELECT min(horizon_ms), " + _NOW_MS + ", count(*) FROM {} WHERE namespace = %(ns)s"
        ).format(table)
        self.renew = sql.SQL(
            "UPDATE {} SET horizon_ms = greatest(horizon_ms, " + _NOW_MS + " + %(ttl_ms)s),"
            " renewed_at = clock_timestamp()"
            " WHERE namespace = %(ns)s AND worker = %(worker)s AND holder = %(token)s"
            " RETURNING horizon_ms, " + _NOW_MS
        ).format(table)
        # ``last_ms``: this host's clock (+ 1 s) once its generator refuses keys; NULL after a fork (children may
        # go on to the horizon). The next holder starts after it instead of waiting out the whole ttl.
        self.release = sql.SQL(
            "UPDATE {} SET holder = NULL, holder_info = NULL,"
            " horizon_ms = least(horizon_ms, coalesce(%(last_ms)s, horizon_ms))"
            " WHERE namespace = %(ns)s AND worker = %(worker)s AND holder = %(token)s"
        ).format(table)


def _parse_settings(settings: Mapping[str, Any] | str) -> tuple[str, dict[str, Any], str, str | None]:
    """(conninfo, keyword arguments, ``host:port/dbname`` label, password) from libpq settings, checked offline."""
    if isinstance(settings, str):
        conninfo, kwargs = settings, {}
    elif isinstance(settings, Mapping):
        raw = dict(settings)
        raw.pop("shards", None)  # a Datastore server entry may be given as it is
        raw.pop("replicas", None)
        conninfo = raw.pop("conninfo", "") or ""
        if not isinstance(conninfo, str):
            raise ConfigError(f"conninfo must be a string, got {type(conninfo).__name__}")
        kwargs = {k: v for k, v in raw.items() if v is not None}
    else:
        raise ConfigError(
            "settings must be libpq connection settings: a dict such as dict(host=..., dbname=...) or a conninfo "
            f"string, got {type(settings).__name__}"
        )
    secret = str(kwargs["password"]) if kwargs.get("password") else None
    try:
        params = conninfo_to_dict(make_conninfo(conninfo, **kwargs))
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"invalid PostgreSQL connection settings: {scrub(str(exc), secret)}") from None
    secret = str(params["password"]) if params.get("password") else secret
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    dbname = str(params.get("dbname") or params.get("user") or "postgres")
    kwargs.setdefault("application_name", "hypervault-lease")
    return conninfo, kwargs, f"{host}:{port}/{dbname}", secret


def _unix_ms() -> int:
    return time.time_ns() // 1_000_000


class PostgresWorkerLease(WorkerGrant):
    """A worker number leased from PostgreSQL and kept by a background thread; a `WorkerGrant` for generators.

    Made by `lease_worker` (or `alease_worker`); give it to one generator: ``KeyGenerator(worker=lease)``. It
    renews every ``ttl / 4`` seconds on its own connection (reconnecting after a failure); `close` stops the
    renewals, makes the generator refuse keys and releases the number. A forked child renews the same row on a
    connection of its own (and its `close` does not release the parent's number). ``label`` names the server,
    never a password. Losing the lease is described in this module's docstring: never a repeated key, a
    `WorkerLeaseLost` for every key past the confirmed horizon or after the row was taken over.
    """

    def __init__(
        self,
        *,
        worker: WorkerSlice,
        floor_ms: int,
        horizon_ms: int,
        options: LeaseOptions,
        connection: psycopg.Connection[Any],
        connect: Any,
        label: str,
        secret: str | None,
        token: str,
    ) -> None:
        scope = f"postgres {label} {options.schema}.{options.table} namespace={options.namespace!r}"
        super().__init__(worker, floor_ms=floor_ms, horizon_ms=horizon_ms, scope=scope)
        self.options = options
        self.label = label
        self._secret = secret
        self._token = token
        self._sql = _Statements(options)
        self._connect = connect  # () -> a new connection
        self._conn: psycopg.Connection[Any] | None = connection
        self._owner_pid = os.getpid()
        self._forked = False  # set in the parent at a fork: its children may use the number up to the horizon
        self._keep_connection = True  # False: a connection per statement (behind a pooler, none is held idle)
        self._closed = False
        self._renewed_at = time.monotonic()
        self._lock = threading.Lock()  # the connection: the renewal thread and close()
        self._stopping = threading.Event()
        self._thread = self._start_thread()
        _LEASES.add(self)

    @property
    def namespace(self) -> str:
        """The namespace the worker number belongs to."""
        return self.options.namespace

    def __repr__(self) -> str:
        state = "closed" if self._closed else (f"lost: {self.lost}" if self.lost else f"horizon_ms={self.horizon_ms}")
        return (
            f"<PostgresWorkerLease worker={self.worker.id}/{self.worker.workers} on {self.label} "
            f"{self.options.schema}.{self.options.table} namespace={self.namespace!r} {state}>"
        )

    # -- renewing -------------------------------------------------------------------------------------------------

    def _start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name=f"hypervault-lease-{self.worker.id}", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        interval = self.options.ttl / 4
        wait = interval
        while not self._stopping.wait(wait):
            wait = interval if self.renew() else min(interval, 0.25)  # after a failure, try again soon

    def renew(self) -> bool:
        """Renew now (the background thread does it every ``ttl / 4``): True if the server confirmed a new horizon.

        A failure to reach the server is recorded (it shows in the `WorkerLeaseLost` message once the horizon
        passes) and returns False; finding the number held by another lease revokes this one for good.
        """
        if self._closed or self.lost is not None:
            return False
        params = {"ns": self.namespace, "worker": self.worker.id, "token": self._token, "ttl_ms": self.options.ttl_ms}
        try:
            with self._lock:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                with self._conn.transaction():
                    self._conn.execute("SET LOCAL synchronous_commit = on")
                    row = self._conn.execute(self._sql.renew, params).fetchone()
            if not self._keep_connection:
                self._drop_connection()
        except (psycopg.Error, OSError) as exc:
            self._drop_connection()
            ago = time.monotonic() - self._renewed_at
            self._note = f"renewals have failed for {ago:.1f} s: {scrub(str(exc).strip(), self._secret)}"
            return False
        if row is None:
            self.revoke(
                f"worker {self.worker.id} of namespace {self.namespace!r} on {self.label} is now held by another "
                f"lease: ours lapsed (horizon Unix ms {self.horizon_ms}) before it could be renewed"
            )
            self._stopping.set()
            return False
        self._renewed_at = time.monotonic()
        self._note = ""
        self.extend(int(row[0]))
        return True

    def _drop_connection(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # -- closing ----------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop renewing, make the generator refuse keys (`WorkerLeaseLost`), release the number (in the process
        that leased it; a forked child only stops its own renewals). Idempotent; errors releasing are ignored:
        the number then frees itself ``ttl`` after the last renewal."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        if self._thread is not threading.current_thread():
            self._thread.join(self.options.connect_timeout + 1)
        self.revoke("the lease was closed")
        if os.getpid() == self._owner_pid and not self._thread.is_alive():
            # The generators following the grant refuse keys from now on: none uses a millisecond after this
            # reading (1 s of margin for a clock stepped back); after a fork, children may, up to the horizon.
            last_ms = None if self._forked else _unix_ms() + _RELEASE_MARGIN_MS
            params = {"ns": self.namespace, "worker": self.worker.id, "token": self._token, "last_ms": last_ms}
            with contextlib.suppress(psycopg.Error, OSError), self._lock:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                with self._conn.transaction():
                    self._conn.execute("SET LOCAL synchronous_commit = on")
                    self._conn.execute(self._sql.release, params)
        self._drop_connection()
        _LEASES.discard(self)

    async def aclose(self) -> None:
        """`close`, run in a worker thread so that the event loop does not wait on the server."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> PostgresWorkerLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> PostgresWorkerLease:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- fork -----------------------------------------------------------------------------------------------------

    def _after_fork_child(self) -> None:
        """In a child: the parent's thread is gone and its connection is the parent's; renew on our own."""
        _INHERITED.append(self._conn)  # never closed or collected here: its socket is the parent's session
        self._conn = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._state_lock = threading.Lock()
        if not self._closed and self.lost is None:
            self._thread = self._start_thread()


_LEASES: weakref.WeakSet[PostgresWorkerLease] = weakref.WeakSet()
_INHERITED: list[object] = []


def _before_fork() -> None:
    for lease in list(_LEASES):
        lease._forked = True


def _after_fork_in_child() -> None:
    for lease in list(_LEASES):
        with contextlib.suppress(Exception):  # a fork hook must not raise
            lease._after_fork_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def lease_worker(
    settings: Mapping[str, Any] | str,
    *,
    bits: int = 4,
    namespace: str = "default",
    schema: str = DEFAULT_SCHEMA,
    table: str = DEFAULT_TABLE,
    ttl: float = 10.0,
    acquire_timeout: float = 0.0,
    connect_timeout: float = 5.0,
    keep_connection: bool = True,
) -> PostgresWorkerLease:
    """Lease a free worker number from the PostgreSQL server at ``settings`` and keep it until `close`.

    ``settings``: libpq connection settings (a dict of keywords, a ``conninfo`` entry, or a conninfo string/URL;
    a Datastore server entry's ``shards`` is ignored). The options are `LeaseOptions`'. Makes the table on first
    use, takes the number free the longest, waits until this host's clock passes the previous holder's last
    millisecond, and starts renewing in a background thread. Returns the started lease, a `WorkerGrant`:
    ``KeyGenerator(worker=lease)``. ``keep_connection=False`` connects anew for each renewal instead of holding a
    connection idle between them (behind a session pooler an idle client holds a server session).

    Raises `ConfigError` (bad settings or options, or ``bits`` other than the namespace's), `ServerUnavailable`
    (the server cannot be reached), `NoFreeWorker` (every number held, after ``acquire_timeout``), or
    `WorkerLeaseError` (the table cannot be made or read, or this host's clock is more than ``ttl / 2`` off the
    server's). Every message names the server without its password.
    """
    options = LeaseOptions(
        bits=bits,
        namespace=namespace,
        schema=schema,
        table=table,
        ttl=ttl,
        acquire_timeout=acquire_timeout,
        connect_timeout=connect_timeout,
    )
    conninfo, kwargs, label, secret = _parse_settings(settings)
    statement_bound = min(options.connect_timeout, max(options.ttl / 2, 0.5))
    connection_class = bounded_connection_class(statement_bound)
    connect_kwargs = {**kwargs, "autocommit": True, "connect_timeout": max(1, math.ceil(options.connect_timeout))}

    def connect() -> psycopg.Connection[Any]:
        return connection_class.connect(conninfo, **connect_kwargs)

    earlier = earlier_failure(label)  # the server did not answer earlier in the running call: not tried again
    if earlier is not None:
        raise ServerUnavailable(f"cannot lease a worker number: {earlier}") from None
    try:
        conn = connect()
    except psycopg.Error as exc:
        text = scrub(str(exc).strip(), secret)
        if isinstance(exc, psycopg.errors.ConnectionTimeout):
            bound = connect_kwargs["connect_timeout"]
            text += f" (no answer to the connection start-up within connect_timeout={bound} s)"
        failed_attempt(label, ServerUnavailable(f"PostgreSQL server {label} is unavailable: {text}"))
        raise ServerUnavailable(
            f"cannot lease a worker number: PostgreSQL server {label} is unavailable: {text}"
        ) from None
    try:
        lease = _acquire(conn, connect, options, label, secret)
    except BaseException:
        with contextlib.suppress(Exception):
            conn.close()
        raise
    if not keep_connection:
        lease._keep_connection = False
        lease._drop_connection()
    return lease


def _acquire(
    conn: psycopg.Connection[Any], connect: Any, options: LeaseOptions, label: str, secret: str | None
) -> PostgresWorkerLease:
    statements = _Statements(options)
    where = f"{options.schema}.{options.table} namespace {options.namespace!r} on {label}"
    token = secrets.token_hex(16)
    info = f"{socket.gethostname()} pid {os.getpid()}"
    workers = 1 << options.bits
    params = {
        "ns": options.namespace,
        "bits": options.bits,
        "workers": workers,
        "token": token,
        "info": info,
        "ttl_ms": options.ttl_ms,
    }
    deadline = time.monotonic() + options.acquire_timeout
    try:
        row = conn.execute(statements.exists, {"name": statements.qualified}).fetchone()
        if not (row and row[0]):
            with conn.transaction():
                for statement in statements.ddl:
                    conn.execute(statement)
        while True:
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = on")
                in_use = [r[0] for r in conn.execute(statements.bits_in_use, params).fetchall()]
                if any(b != options.bits for b in in_use):
                    raise ConfigError(
                        f"the worker numbers of {where} are leased with bits={in_use[0]}, not bits={options.bits}: "
                        "every generator sharing shards must use the same bits (use that value, or another namespace)"
                    )
                conn.execute(statements.rows, params)
                before = _unix_ms()
                got = conn.execute(statements.acquire, params).fetchone()
                after = _unix_ms()
            if got is not None:
                break
            soonest, now_ms, count = conn.execute(statements.soonest, params).fetchone() or (None, None, 0)
            if time.monotonic() >= deadline:
                frees = f"; the soonest may free in {max(0, soonest - now_ms) / 1000:.1f} s" if soonest else ""
                raise NoFreeWorker(
                    f"all {count} worker numbers of {where} are held{frees} (unless renewed): wait and retry "
                    f"(acquire_timeout), raise bits (more workers, fewer ids each), or close idle leases"
                )
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
    except (ConfigError, NoFreeWorker):
        raise
    except psycopg.OperationalError as exc:
        raise ServerUnavailable(
            f"cannot lease a worker number: PostgreSQL server {label} failed: {scrub(str(exc).strip(), secret)}"
        ) from None
    except psycopg.Error as exc:
        raise WorkerLeaseError(f"cannot lease a worker number in {where}: {scrub(str(exc).strip(), secret)}") from None
    worker_id, floor_ms, horizon_ms, server_ms = (int(v) for v in got)
    lease = PostgresWorkerLease(
        worker=WorkerSlice(id=worker_id, bits=options.bits),
        floor_ms=floor_ms,
        horizon_ms=horizon_ms,
        options=options,
        connection=conn,
        connect=connect,
        label=label,
        secret=secret,
        token=token,
    )
    skew = (before + after) // 2 - server_ms  # this host's clock minus the server's, give or take a round trip
    if abs(skew) > options.ttl_ms // 2:
        lease.close()
        raise WorkerLeaseError(
            f"this host's clock is {skew} ms {'ahead of' if skew > 0 else 'behind'} the clock of {label}: a worker "
            f"lease of ttl={options.ttl} s needs them within {options.ttl_ms // 2} ms (fix the clocks: NTP)"
        )
    while (ahead := floor_ms - _unix_ms()) >= 0:  # the previous holder's last millisecond is still to come here
        time.sleep(min(ahead + 1, 50) / 1000)
    return lease


async def alease_worker(
    settings: Mapping[str, Any] | str,
    *,
    bits: int = 4,
    namespace: str = "default",
    schema: str = DEFAULT_SCHEMA,
    table: str = DEFAULT_TABLE,
    ttl: float = 10.0,
    acquire_timeout: float = 0.0,
    connect_timeout: float = 5.0,
    keep_connection: bool = True,
) -> PostgresWorkerLease:
    """`lease_worker` for asyncio code: acquires in a worker thread and returns the same started lease.

    Its renewals run on their own thread, not on the event loop, so a loop busy for longer than ``ttl`` does not
    make it lapse; close it with ``await lease.aclose()`` (or ``async with``). Same arguments and errors.
    """
    return await asyncio.to_thread(
        lease_worker,
        settings,
        bits=bits,
        namespace=namespace,
        schema=schema,
        table=table,
        ttl=ttl,
        acquire_timeout=acquire_timeout,
        connect_timeout=connect_timeout,
        keep_connection=keep_connection,
    )
