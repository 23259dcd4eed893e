"""Multi-shard statements in bounded pieces, and PostgreSQL's limits as typed errors (no I/O).

A statement reading many shards locks every relation it plans: each shard's table and its two indexes
(`_schema.required_relations`), plus the body index if built and one per secondary index. PostgreSQL keeps those
locks in one lock table shared by every session of the server, sized ``max_locks_per_transaction × (max_connections
+ max_prepared_transactions)``: 6,400 entries on default settings (64 × 100). One statement over 4,096 shards takes
16,384 locks and fails with ``out of shared memory``, and every other session needing a lock at that moment fails
with it. A long ``UNION ALL`` also runs into ``max_stack_depth`` (about 5,700 shards with the default 2 MB) and,
when each member binds its own values, into the protocol's 65,535 bind parameters.

So every multi-shard statement hypervault sends covers at most `SHARDS_PER_STATEMENT` shards (16 × 4 relations = 64
locks with the body index, 48 without: one session's ``max_locks_per_transaction`` on stock settings, so a full pool
of 10 sessions per server holds at most a tenth of the table, leaving the rest to other work) and binds at most
`PARAMETER_BUDGET` values; each piece runs in a transaction of its own, so its locks are released before the next
piece takes any. The pieces of one call go to a server together in one pipeline
(`psycopg.AsyncConnection.pipeline`): one round trip, however many pieces. Whatever limit a statement can still
reach (raw ``cursor()`` SQL, other sessions filling the lock table) is reported as `ServerLimitReached` by
`limit_error`, never as `ServerUnavailable`.

A store can ask for smaller pieces (its ``shards_per_statement``, passed as ``per_statement``): on a Citus node whose
shard schemas are distributed it is 1, since Citus routes a statement naming one schema to the worker holding it
but plans one naming several as a distributed subplan per schema (see `hvbackend_postgres._citus`); those pieces
then share transactions, `pieces_per_transaction` of them each, so a transaction still locks what one full piece
would.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg

from hvcore._backend import Record
from hvcore.errors import InvalidQuery, ServerLimitReached

__all__ = [
    "AUTO_PLANS_SQL",
    "FIRST_FILL_ROWS",
    "GENERIC_PLANS",
    "GENERIC_POINT_PLANS",
    "LOCKS_PER_SHARD",
    "MAX_BIND_PARAMETERS",
    "PARAMETER_BUDGET",
    "PIPELINE_PIECES",
    "POINT_PLANS_SQL",
    "PREPARED_MAX",
    "PREPARE_HOT",
    "SHARDS_PER_STATEMENT",
    "SHARD_AFFINITY",
    "QueryPiece",
    "affinity_rank",
    "bring_preferred_forward",
    "check_parameters",
    "configure_preparation",
    "group_pieces",
    "item_shard",
    "limit_error",
    "mark_session",
    "pieces_per_transaction",
    "plans_generic",
    "preferred_shard",
    "prepare_hot",
    "session_options",
    "shard_pieces",
]

LOCKS_PER_SHARD = 4  # at most: the table, its primary key, the (kind, id) index and the body index (if built)
SHARDS_PER_STATEMENT = 16  # 16 × 4 = 64 relations locked: the default max_locks_per_transaction
MAX_BIND_PARAMETERS = 65_535  # the extended protocol's limit (a 16-bit count in the Bind message)
PARAMETER_BUDGET = 4_096  # values bound by one multi-shard statement of ours: far below the limit
PIPELINE_PIECES = 256  # statements per pipeline when refilling a query's pieces or counting rows
FIRST_FILL_ROWS = 10_000  # rows a query's first round trip over many pieces asks for in all (≥ 10 per piece)

# Statement preparation (see docs/fanout.md for the measurements). Each shard has its own statements (its schema
# is in their text), so psycopg's defaults (prepare a text after 5 runs, counting only the last 100 texts) never
# prepare anything on a map of thousands of shards: every put and get is parsed and planned, and planning reopens
# the shard's relation files (a backend keeps max_files_per_process = 1,000 open against ~16,000 relation files per
# server with 4,096 shards). So the stores prepare their per-shard point statements (insert, fetch) on their first
# run in a session and keep up to PREPARED_MAX of them per session; other statements (the user's, multi-shard
# pieces) keep psycopg's rules. Read when used, so a benchmark can change them.
PREPARE_HOT = True  # prepare each shard's insert/fetch statement on first use (unless preparing is disabled)
PREPARED_MAX = 16_384  # prepared statements kept per session (psycopg's prepared_max; its default is 100)
GENERIC_PLANS = False  # plan_cache_mode = force_generic_plan for everything in every session (the bench's "generic")

# Generic plans for the stores' own point statements (see docs/fanout.md, "Generic plans for point statements").
# PostgreSQL plans a prepared statement anew for each of its first five runs in a session (plan_cache_mode = auto),
# and planning a shard's fetch asks the sizes of its table and indexes, reopening their files: a get at 8192 shards
# paid that until its shard had run five times in that session. A pooled session connected directly to its server
# therefore runs with plan_cache_mode = force_generic_plan while it serves the stores' own statements; whatever may
# depend on the values bound gets the session's own value back (auto, unless the role, database or connection options
# set another): a lent connection (get_connection(), cursor()) gets it when lent (in the statement that sets its
# search path) and generic plans again when returned (after RESET ALL); a transaction() and each piece of a
# multi-shard query or filter write run SET LOCAL plan_cache_mode TO DEFAULT after BEGIN (same round trip).
# Behind a pooler (PgBouncer), or with preparing disabled, nothing changes. Read when used.
GENERIC_POINT_PLANS = True
POINT_PLANS_SQL = "SET plan_cache_mode = force_generic_plan"
AUTO_PLANS_SQL = "SET LOCAL plan_cache_mode TO DEFAULT"  # the session's own value: auto, or the role's/database's

# Shard-affine sessions (see docs/fanout.md, "Shard-affine sessions"). Left to psycopg_pool's order (first in, first
# out), every pooled session serves every shard of its server, so each backend's relation cache, plan cache and
# ~1,000 open files (max_files_per_process) cover all of its 4,096+ shards' ~16,000 relation files, and a shard's
# prepared statement runs in each session only 1/n of the time (so it stays in PostgreSQL's first five, custom-planned
# runs n times longer). A single-shard operation instead takes, among the idle sessions, the one its shard ranks
# highest (rendezvous hashing: a per-session random line over shard ids), so each shard keeps to one session while
# that session is free and to the next in its own order when it is busy: nobody waits for a particular session, and a
# session coming or going moves only the shards it ranked first. Read when used, so a benchmark can turn it off.
SHARD_AFFINITY = True
_RANK_PRIME = 2_147_483_647  # 2^31 - 1: ranks are (shard * a + b) mod this, with a session's own random a and b
preferred_shard: ContextVar[int | None] = ContextVar("hv_preferred_shard", default=None)
"""The shard of the single-shard operation now asking its pool for a session (set around ``getconn``)."""

_T = TypeVar("_T")
_K = TypeVar("_K", bound=Hashable)

_TOO_MANY_PARAMETERS = "number of parameters must be between"  # libpq's message, raised before anything is sent


@dataclass(slots=True, eq=False)
class QueryPiece:
    """One piece of a multi-piece query stream: its shards, the page sizes left, the records read and not yet
    yielded, the last key read, and whether it has no more rows."""

    shards: list[int]
    sizes: Iterator[int]
    rows: deque[Record] = field(default_factory=deque)
    last: int | None = None
    done: bool = False


def configure_preparation(conn: Any) -> None:
    """Let a new pooled session keep `PREPARED_MAX` prepared statements (if the stores prepare theirs).

    A session whose settings disabled preparing (``prepare_threshold=None``: PgBouncer in transaction mode) is left
    alone. Memory: a prepared point statement costs its server session ~7 KiB of plan cache, ~10 KiB once it ran 5
    times and PostgreSQL keeps its generic plan (measured: benchmarks/bench_fanout.py), for the statements the
    session actually ran.
    """
    if PREPARE_HOT and conn.prepare_threshold is not None:
        conn.prepared_max = max(conn.prepared_max, PREPARED_MAX)


def plans_generic(conn: Any) -> bool:
    """Whether ``conn`` is a pooled session in generic-plan mode (`GENERIC_POINT_PLANS`): then anything of the
    user's, and the stores' statements whose plans depend on values, run with `AUTO_PLANS_SQL` first."""
    return bool(getattr(conn, "hv_generic", False))


def prepare_hot(conn: Any) -> bool | None:
    """``prepare=`` for a per-shard point statement on ``conn``: True (prepare now), or None (psycopg's rules)."""
    return True if PREPARE_HOT and conn.prepare_threshold is not None else None


def session_options(options: str | None) -> str | None:
    """The libpq ``options`` of pooled sessions: the given ones, plus forced generic plans if `GENERIC_PLANS`."""
    if not GENERIC_PLANS:
        return options
    return " ".join(part for part in (options, "-c plan_cache_mode=force_generic_plan") if part)


def mark_session(conn: Any) -> None:
    """Give a new pooled session its random line over shard ids (`affinity_rank`)."""
    conn.hv_rank = (random.randrange(1, _RANK_PRIME), random.randrange(_RANK_PRIME))


def affinity_rank(shard: int, conn: Any) -> int:
    """How much ``shard`` prefers session ``conn`` (higher first; -1 for a session without a line)."""
    line: tuple[int, int] | None = getattr(conn, "hv_rank", None)
    return -1 if line is None else (shard * line[0] + line[1]) % _RANK_PRIME


def bring_preferred_forward(idle: deque[Any]) -> None:
    """Move the idle session the asking shard ranks highest (`preferred_shard`) to the front of psycopg_pool's queue
    of idle sessions, which hands out its front one; nothing to do without a shard, with one session or less, or
    with `SHARD_AFFINITY` off."""
    shard = preferred_shard.get()
    if shard is None or len(idle) < 2 or not SHARD_AFFINITY:
        return
    at = max(range(len(idle)), key=lambda index: affinity_rank(shard, idle[index]))
    if at:
        conn = idle[at]
        del idle[at]
        idle.appendleft(conn)


def item_shard(item: tuple[int, Any]) -> int:
    """The shard of a ``(shard, key)`` pair (`group_pieces` of `fetch_many`)."""
    return item[0]


def shard_pieces(
    shard_ids: Sequence[int], params_per_shard: int = 0, *, per_statement: int | None = None
) -> list[list[int]]:
    """``shard_ids`` cut into pieces of at most `SHARDS_PER_STATEMENT` shards and `PARAMETER_BUDGET` values.

    ``params_per_shard`` is how many values each shard's part of the statement binds. Order is kept. A filter
    that alone needs more than the protocol's 65,535 values is refused by `check_parameters` first.
    ``per_statement`` caps the shards of a piece lower (a store's ``shards_per_statement``: 1 on Citus).
    """
    size = min(SHARDS_PER_STATEMENT, per_statement or SHARDS_PER_STATEMENT)
    if params_per_shard > 0:
        size = max(1, min(size, PARAMETER_BUDGET // params_per_shard))
    return [list(shard_ids[i : i + size]) for i in range(0, len(shard_ids), size)]


def group_pieces(
    items: Iterable[_T], shard_of: Callable[[_T], _K], *, per_statement: int | None = None
) -> list[list[_T]]:
    """``items`` grouped so that each group spans at most `SHARDS_PER_STATEMENT` distinct shards (first-seen order),
    or ``per_statement`` if lower (a store's ``shards_per_statement``: 1 on Citus)."""
    size = min(SHARDS_PER_STATEMENT, per_statement or SHARDS_PER_STATEMENT)
    groups: list[list[_T]] = []
    seen: dict[_K, int] = {}
    in_last = 0  # distinct shards of the last group
    for item in items:
        shard = shard_of(item)
        index = seen.get(shard)
        if index is None:
            if not groups or in_last >= size:
                groups.append([])
                in_last = 0
            index = seen[shard] = len(groups) - 1
            in_last += 1
        groups[index].append(item)
    return groups


def pieces_per_transaction(per_statement: int | None) -> int:
    """How many statements of a pipeline share one transaction: 1 for pieces of `SHARDS_PER_STATEMENT` shards; for
    smaller pieces (``per_statement``, a store's ``shards_per_statement``) as many as keep a transaction within
    `SHARDS_PER_STATEMENT` shards' locks (16 one-schema statements on Citus)."""
    return max(1, SHARDS_PER_STATEMENT // min(SHARDS_PER_STATEMENT, per_statement or SHARDS_PER_STATEMENT))


def check_parameters(count: int, what: str) -> None:
    """`InvalidQuery` before any SQL when one shard's part of a statement would bind more values than allowed."""
    if count > MAX_BIND_PARAMETERS:
        raise InvalidQuery(
            f"{what} needs {count:,} bound values in each statement, but PostgreSQL accepts at most "
            f"{MAX_BIND_PARAMETERS:,}: filter on fewer fields (or fewer list values) per query"
        )


def limit_error(exc: BaseException, server: str) -> ServerLimitReached | None:
    """`ServerLimitReached` for an error that is one of PostgreSQL's limits, else None.

    SQLSTATE 53200 (``out of shared memory``: the shared lock table is full), 54001 (``stack depth limit
    exceeded``), 54000 (program limit exceeded, e.g. a value or statement over 1 GB), and libpq's refusal to send
    more than 65,535 parameters (no SQLSTATE: psycopg raises it as an `OperationalError`, which used to be reported
    as `ServerUnavailable` although the server was fine).
    """
    if not isinstance(exc, psycopg.Error):
        return None
    state = exc.sqlstate
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if state == "53200":
        return ServerLimitReached(
            f"{server} ran out of lock table entries ({text}): the shared lock table holds "
            "max_locks_per_transaction × (max_connections + max_prepared_transactions) locks and a statement or "
            "transaction locking many tables filled it; hypervault's own statements lock at most "
            f"{SHARDS_PER_STATEMENT * LOCKS_PER_SHARD} relations each, so split your own multi-shard SQL, or raise "
            "max_locks_per_transaction on the server (a restart)",
            limit="max_locks_per_transaction",
            server=server,
        )
    if state == "54001":
        return ServerLimitReached(
            f"{server} refused a statement nested too deeply ({text}): split it (hypervault's own statements "
            f"cover at most {SHARDS_PER_STATEMENT} shards each), or raise max_stack_depth",
            limit="max_stack_depth",
            server=server,
        )
    if state == "54000":
        return ServerLimitReached(
            f"{server} refused a statement at a size limit ({text}): send smaller statements or values "
            "(PostgreSQL caps a statement and a field at 1 GB and a jsonb object at 256 MiB: the server's words "
            "above name the limit reached)",
            limit="statement size",
            server=server,
        )
    if isinstance(exc, psycopg.OperationalError) and _TOO_MANY_PARAMETERS in str(exc):
        return ServerLimitReached(
            f"a statement for {server} binds more than {MAX_BIND_PARAMETERS:,} values ({text}): the protocol "
            "allows at most that many per statement; bind arrays (= ANY(%s)) or split the statement",
            limit="bind parameters",
            server=server,
        )
    return None
