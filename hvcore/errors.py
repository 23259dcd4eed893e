"""Every error hypervault raises, in one tree.

::

    HypervaultError
    ├── ConfigError (ValueError)            bad settings, a bad config file
    │   └── ShardMapError                   every problem of a connection list, listed at once
    ├── InvalidKey (ValueError)             not a valid 64-bit key, or key parts out of range
    ├── InvalidShard (ValueError)           a shard id of the wrong type or out of 0..8191
    ├── ShardNotFound (LookupError)         a valid shard id no server owns
    ├── ShardMoved (LookupError)            the shard now lives on another server (followed by `Datastore`)
    ├── MoveError (RuntimeError)            a shard move cannot start, resume, verify or roll back
    ├── MigrationError (RuntimeError)       a migration or index build cannot start, or failed on one shard
    ├── InvalidKind (ValueError)            a kind outside 0..32767
    ├── InvalidData (ValueError)            a body the backend cannot store as given
    ├── InvalidQuery (ValueError)           query arguments that cannot mean anything (since > until, ...)
    ├── InvalidToken (ValueError)           a timeline token that is malformed, or forged / signed otherwise
    ├── ClockMovedBackwards (RuntimeError)  the clock went back further than the tolerated skew
    ├── LayoutExhausted (OverflowError)     the time part would reach the sign bit
    ├── PluginError (LookupError)           unknown or duplicate backend / sequence names
    ├── ConnectionMisuse (ValueError)       a connection returned twice, or not from this store
    ├── StoreClosed (RuntimeError)          used after ``disconnect()``
    ├── WrongEventLoop (RuntimeError)       an AsyncDatastore used from a second running event loop
    ├── PoolTimeout (TimeoutError)          no connection free within ``pool_block_timeout``
    ├── ServerUnavailable (OSError)         a server cannot be reached (named without its password)
    │   └── WriteOutcomeUnknown             a write's connection was lost and the server cannot tell yet if it committed
    ├── ServerLimitReached (RuntimeError)   a healthy server refused a statement at one of its limits
    ├── ServerError (RuntimeError)          a trigger of the database raised in a statement (keeps SQLSTATE, message)
    │   └── ConstraintViolation (ValueError)  a CHECK, NOT NULL, foreign key or exclusion constraint refused the data
    ├── StatementTimeout (TimeoutError)     the server cancelled a statement at its statement_timeout / lock_timeout
    ├── PermissionDenied (PermissionError)  the connecting role lacks a privilege (names the GRANT to run)
    │   └── LoginRefused                    the role's or database's settings refuse every session (CONNECTION LIMIT...)
    ├── ReadOnlyServer (RuntimeError)       the server refuses writes: read-only database or role, or a standby
    ├── NotProvisioned (RuntimeError)       schemas or extensions missing: run ``hv init``
    ├── DuplicateKey (RuntimeError)         a key already stored (retried with a fresh key by ``put``)
    ├── DuplicateValue (ValueError)         a body value a unique index of the shard already holds
    ├── SequenceUnavailable (OSError)       the shared sequence source (Redis) cannot be reached in time
    ├── TransactionError (RuntimeError)     a transaction cannot go on (ended, aborted, read-only)
    │   ├── TransactionConflict             refused to keep transactions isolated: run it again
    │   └── SelfDeadlock                    a plain call waited for a lock its caller's own open transaction holds
    └── WorkerLeaseError (RuntimeError)     a leased worker number cannot be had or kept
        ├── NoFreeWorker                    every worker number of the lease table is held
        └── WorkerLeaseLost                 the lease ended or lapsed: no key is made with it
"""

from __future__ import annotations

from typing import Any, cast

__all__ = [
    "ClockMovedBackwards",
    "ConfigError",
    "ConnectionMisuse",
    "ConstraintViolation",
    "DuplicateKey",
    "DuplicateValue",
    "HypervaultError",
    "InvalidArgument",
    "InvalidData",
    "InvalidKey",
    "InvalidKind",
    "InvalidQuery",
    "InvalidShard",
    "InvalidToken",
    "LayoutExhausted",
    "LoginRefused",
    "MigrationError",
    "MoveError",
    "NoFreeWorker",
    "NotProvisioned",
    "PermissionDenied",
    "PluginError",
    "PoolTimeout",
    "ReadOnlyServer",
    "SelfDeadlock",
    "SequenceUnavailable",
    "ServerError",
    "ServerLimitReached",
    "ServerUnavailable",
    "ShardMapError",
    "ShardMoved",
    "ShardNotFound",
    "StatementTimeout",
    "StoreClosed",
    "TransactionConflict",
    "TransactionError",
    "WorkerLeaseError",
    "WorkerLeaseLost",
    "WriteOutcomeUnknown",
    "WrongEventLoop",
]


class HypervaultError(Exception):
    """Base of every error raised by hypervault.

    Every error pickles and copies (``copy.copy``, ``copy.deepcopy``) as itself: same class, ``args``, message and
    attributes (``shard_id``, ``server``, ``limit``, ... and notes of ``add_note``), so it crosses a process
    boundary (``ProcessPoolExecutor``, ``multiprocessing``) intact, whatever its ``__init__`` takes. As for every
    Python exception, ``__cause__``, ``__context__`` and ``__traceback__`` are not pickled.
    """

    __module__ = "hvcore"

    def __reduce__(self) -> str | tuple[Any, ...]:
        # Exception's own __reduce__ rebuilds by calling cls(*args), which fails for an __init__ with keyword-only
        # arguments and misreads one that builds its message from other arguments (ShardMapError): rebuild without
        # __init__ instead, from args (OSError's include its filenames) and a copy of the instance's __dict__ (a
        # copy: psycopg.Error.__reduce__, first in OperationTimeout's MRO, edits the state it gets from here).
        cls, args = cast(tuple[Any, ...], super().__reduce__())[:2]  # Exception's: (cls, args[, state])
        return _rebuild_error, (cls, args), dict(self.__dict__)


def _rebuild_error(cls: type[HypervaultError], args: tuple[Any, ...]) -> HypervaultError:
    """Unpickle a `HypervaultError` without calling its ``__init__`` (then ``__setstate__`` restores __dict__)."""
    error = cls.__new__(cls, *args)
    if isinstance(error, OSError):
        OSError.__init__(error, *args)  # errno, strerror, filename(s), when OSError.__new__ left them to __init__
    return error


class ConfigError(HypervaultError, ValueError):
    """A setting or a config file is invalid."""

    __module__ = "hvcore"


class ShardMapError(ConfigError):
    """A connection list maps shards badly; ``problems`` lists every problem found."""

    __module__ = "hvcore"

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid shard map ({len(self.problems)} problem(s)):\n{lines}")


class InvalidArgument(HypervaultError, ValueError, TypeError):
    """An argument of the wrong type or out of range (e.g. a negative count); names what was given and what is
    accepted. Both a ``ValueError`` and a ``TypeError``, so ``except`` clauses written for either still catch it."""

    __module__ = "hvcore"


class InvalidKey(HypervaultError, ValueError):
    """A value is not a valid key, or key parts are out of range."""

    __module__ = "hvcore"


class InvalidShard(HypervaultError, ValueError):
    """A shard id is of the wrong type or outside the layout's range."""

    __module__ = "hvcore"


class ShardNotFound(HypervaultError, LookupError):
    """A valid shard id that no configured server owns."""

    __module__ = "hvcore"


class ShardMoved(HypervaultError, LookupError):
    """The server reached no longer serves the shard: ``server`` (a label) does since placement ``version``;
    ``identity`` names that server's database whatever it is called ("" when the stub predates identities)."""

    __module__ = "hvcore"

    def __init__(self, message: str, *, shard_id: int, server: str, version: int, identity: str = "") -> None:
        super().__init__(message)
        self.shard_id = shard_id
        self.server = server
        self.version = version
        self.identity = identity


class MoveError(HypervaultError, RuntimeError):
    """A shard move cannot start, resume, verify or roll back; the message says what state the shard is in."""

    __module__ = "hvcore"


class MigrationError(HypervaultError, RuntimeError):
    """A schema change (``migrate``, ``create_index``, ``drop_index``) cannot start, or failed on one shard.

    Bad migration files are refused before any SQL runs. A failure on a shard names the server, the shard and, for
    a migration, the file and statement (``server``, ``shard_id``, ``migration``, ``statement``, None when not
    known); that shard's transaction was rolled back and the shards done before it keep the change, so a rerun
    continues where this one stopped.
    """

    __module__ = "hvcore"

    def __init__(
        self,
        message: str,
        *,
        server: str | None = None,
        shard_id: int | None = None,
        migration: str | None = None,
        statement: str | None = None,
    ) -> None:
        super().__init__(message)
        self.server = server
        self.shard_id = shard_id
        self.migration = migration
        self.statement = statement


class InvalidKind(HypervaultError, ValueError):
    """A ``kind`` outside the stored range (0..32767, a PostgreSQL smallint)."""

    __module__ = "hvcore"


class InvalidData(HypervaultError, ValueError):
    """An entity body the backend cannot store as given (checked before any SQL)."""

    __module__ = "hvcore"


class InvalidQuery(HypervaultError, ValueError):
    """Query arguments that cannot mean anything: ``since`` after ``until``, a negative limit, a bad filter."""

    __module__ = "hvcore"


class InvalidToken(HypervaultError, ValueError):
    """A read-your-writes timeline token that is not one, or whose signature does not match (forged or edited)."""

    __module__ = "hvcore"


class ClockMovedBackwards(HypervaultError, RuntimeError):
    """The wall clock went back further than the generator tolerates."""

    __module__ = "hvcore"


class LayoutExhausted(HypervaultError, OverflowError):
    """The key's time part would reach the sign bit: no more ids in this layout."""

    __module__ = "hvcore"


class PluginError(HypervaultError, LookupError):
    """A backend or sequence name is unknown, or registered twice."""

    __module__ = "hvcore"


class ConnectionMisuse(HypervaultError, ValueError):
    """A connection returned twice, or returned to a store it did not come from, or used after its return; or user
    SQL on a lent connection behind a transaction-mode pooler that would leave state in one of the pooler's server
    sessions (a session advisory lock, a ``SET`` in autocommit mode)."""

    __module__ = "hvcore"


class StoreClosed(HypervaultError, RuntimeError):
    """The datastore was used after ``disconnect()`` (call ``reinstantiate()``)."""

    __module__ = "hvcore"


class WrongEventLoop(HypervaultError, RuntimeError):
    """An `AsyncDatastore` used from an event loop other than the running one its pools belong to (two threads,
    each with its own loop): make one per event loop (per thread). Once that loop has ended (an earlier
    ``asyncio.run()``), the next loop takes the store over instead."""

    __module__ = "hvcore"


class PoolTimeout(HypervaultError, TimeoutError):
    """No connection became free within ``pool_block_timeout`` seconds."""

    __module__ = "hvcore"


class ServerUnavailable(HypervaultError, OSError):
    """A server could not be reached or refused the connection.

    ``timed_out`` is True when the call was cut off by ``operation_timeout`` (the time it was allowed is spent).
    """

    __module__ = "hvcore"
    timed_out: bool = False


class ServerLimitReached(HypervaultError, RuntimeError):
    """A healthy server refused a statement at one of PostgreSQL's limits; the server itself is fine.

    ``limit`` names it: ``"max_locks_per_transaction"`` (the shared lock table is full: "out of shared memory"),
    ``"max_stack_depth"`` (a statement too deeply nested), ``"bind parameters"`` (more than 65,535 values in one
    statement) or ``"statement size"`` (a statement or value over PostgreSQL's 1 GB). The message says what to do.
    hypervault's own multi-shard statements stay far below these limits (see docs/fanout.md); this error comes
    from raw ``cursor()`` statements, or from other sessions filling the server's shared lock table.
    """

    __module__ = "hvcore"

    def __init__(self, message: str, *, limit: str, server: str | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.server = server


class ServerError(HypervaultError, RuntimeError):
    """The server refused a statement of a hypervault operation for a reason of the database's own making: a trigger
    the user added raised (PL/pgSQL ``RAISE EXCEPTION``, SQLSTATE class P0; a data exception in it, class 22, such as
    a failed cast or a division by zero; no RETURN, class 2F; and the other classes a routine raises: 09, 20, 21,
    27, 38, 39). The statement was rolled back.

    The message keeps the server's (with its detail and hint) and names the server, the shard and its schema;
    ``sqlstate``, ``server`` (``host:port/dbname``), ``shard_id`` (None when not known) and ``server_message``
    hold them; the psycopg error is the ``__cause__``.
    """

    __module__ = "hvcore"

    def __init__(
        self, message: str, *, sqlstate: str, server: str, shard_id: int | None, server_message: str = ""
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.server = server
        self.shard_id = shard_id
        self.server_message = server_message


class ConstraintViolation(ServerError, ValueError):
    """A constraint the user added to a shard's table refused the data (SQLSTATE class 23: CHECK, NOT NULL,
    foreign key, exclusion). A unique violation is `DuplicateKey` / `DuplicateValue` instead."""

    __module__ = "hvcore"


class StatementTimeout(HypervaultError, TimeoutError):
    """The server cancelled a statement at one of its own time limits: ``setting`` is ``"statement_timeout"``
    (SQLSTATE 57014) or ``"lock_timeout"`` (55P03), set for the role, the database or the connection. The statement
    was rolled back; the server is fine (not `ServerUnavailable`). ``sqlstate``, ``server`` and ``shard_id`` as for
    `ServerError`; the psycopg error is the ``__cause__``. hypervault's own limit is ``operation_timeout``
    (`ServerUnavailable`)."""

    __module__ = "hvcore"

    def __init__(self, message: str, *, setting: str, sqlstate: str, server: str, shard_id: int | None) -> None:
        super().__init__(message)
        self.setting = setting
        self.sqlstate = sqlstate
        self.server = server
        self.shard_id = shard_id


class PermissionDenied(HypervaultError, PermissionError):
    """The server refused a statement: the connecting role lacks a privilege (SQLSTATE 42501).

    The message names the server, the role and what PostgreSQL said (the object), and the GRANT that fixes it: the
    role running ``hv init`` needs CREATE on the database; an application role needs USAGE on the shard schemas
    and SELECT, INSERT, UPDATE, DELETE on their tables.
    """

    __module__ = "hvcore"


class LoginRefused(PermissionDenied):
    """The server answers but refuses this login: the role's or the database's ``CONNECTION LIMIT`` (0, or every
    allowed session taken), ``ALLOW_CONNECTIONS false``, no CONNECT privilege on the database, a ``NOLOGIN`` role, a
    wrong password (or another authentication failure), no ``pg_hba.conf`` line for it, or a role or database that
    does not exist. Not a `ServerUnavailable`: the server is fine, and retrying or failing over does not help until
    the connection settings or the server's configuration change; the message says which.

    ``server`` is the entry's ``host:port/dbname`` (never a password), ``role`` the role refused ("" when not
    known), ``database`` the database, ``setting`` what refused it (``"role CONNECTION LIMIT"``, ``"database
    CONNECTION LIMIT"``, ``"ALLOW_CONNECTIONS"``, ``"CONNECT privilege"``, ``"LOGIN"``, ``"password"``,
    ``"authentication"``, ``"pg_hba.conf"``, ``"role missing"``, ``"database missing"``).
    """

    __module__ = "hvcore"

    def __init__(self, message: str, *, server: str, role: str, database: str, setting: str) -> None:
        super().__init__(message)
        self.server = server
        self.role = role
        self.database = database
        self.setting = setting


class ReadOnlyServer(HypervaultError, RuntimeError):
    """The server refused a write (SQLSTATE 25006): a read-only database or role (``default_transaction_read_only``)
    or a standby. Nothing was written."""

    __module__ = "hvcore"


class NotProvisioned(HypervaultError, RuntimeError):
    """The shard's schema, table or extension is missing: run ``hv init``."""

    __module__ = "hvcore"


class WriteOutcomeUnknown(ServerUnavailable):
    """A write lost its connection and PostgreSQL could not say, within the wait, whether it committed.

    Raised when the write's transaction was still in progress on the server (an orphaned session) for longer than
    the settle wait, or when no server answered the question. ``keys`` are the keys the write used: each either
    holds this write's row or no row, never another writer's (a retry never assumes success).
    """

    __module__ = "hvcore"

    def __init__(self, message: str, *, keys: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.keys = keys


class DuplicateKey(HypervaultError, RuntimeError):
    """A key that is already stored was inserted again (another writer holds it).

    ``keys`` are the keys found taken, when the backend knows them (a batch names every one of its taken keys),
    so `Datastore.put_many` redraws only those; empty when unknown.
    """

    __module__ = "hvcore"

    def __init__(self, message: str, *, keys: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.keys = keys


class DuplicateValue(HypervaultError, ValueError):
    """A write refused by a unique index: the shard already holds a record of that kind with that field value.

    Unique secondary indexes (``create_index(..., unique=True)``) are unique within each shard. Nothing was written.
    """

    __module__ = "hvcore"


class SequenceUnavailable(HypervaultError, OSError):
    """The shared sequence source could not be reached within its timeout."""

    __module__ = "hvcore"


class TransactionError(HypervaultError, RuntimeError):
    """A transaction of ``Datastore.transaction()`` cannot go on: it has ended, an error aborted it, or it is read-only.

    An error from the server inside a transaction aborts it, as PostgreSQL does: every later call raises this error
    until its ``with`` block (or the enclosing savepoint's, ``with tx.transaction():``) ends, which rolls it back.
    """

    __module__ = "hvcore"


class TransactionConflict(TransactionError):
    """The transaction was refused to keep transactions isolated (PostgreSQL's serialization failure or deadlock, a
    write-write conflict on the memory backend); it was rolled back: run it again."""

    __module__ = "hvcore"


class WorkerLeaseError(HypervaultError, RuntimeError):
    """A worker number leased from a shared table (PostgreSQL) cannot be had or kept."""

    __module__ = "hvcore"


class NoFreeWorker(WorkerLeaseError):
    """Every worker number of the lease table is held by a live lease: none is free to lease."""

    __module__ = "hvcore"


class WorkerLeaseLost(WorkerLeaseError):
    """The worker lease ended (closed, taken over) or lapsed (not renewed in time): no key is made with it."""

    __module__ = "hvcore"


class SelfDeadlock(TransactionError):
    """A plain call (``db.update``, ``db.delete``, ``db.put``...) made inside an open ``db.transaction()`` (or a
    ``cursor()`` block, or while a ``get_connection()`` connection is out) on the same server waited for a lock that
    transaction holds.

    The transaction's session sits idle until its caller goes on, and the caller waits for the call: a deadlock the
    server cannot see. The call is cancelled on the server (nothing of it is stored) soon after it starts waiting,
    instead of after ``operation_timeout``; the transaction stays open. "Inside" follows the caller's contextvars
    context: the call's pieces on fan-out threads or tasks, and tasks started inside the block, count; another
    thread, or a task started before the block, waits as for anyone's lock. The message names the transaction's
    shard and the operation: run it as ``tx.<operation>`` inside the block, or after the block ends.
    """

    __module__ = "hvcore"
