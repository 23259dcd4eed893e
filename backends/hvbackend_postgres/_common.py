"""What the sync and asyncio PostgreSQL stores share: settings, data checks, SQL building, error mapping (no I/O)."""

from __future__ import annotations

import contextlib
import json
import json.scanner
import logging
import math
import re
import select
import threading
import time
import types
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq, sql
from psycopg.rows import RowMaker, dict_row, tuple_row
from psycopg.types import TypeInfo
from psycopg.types.json import Jsonb
from psycopg.waiting import Wait

from hvbackend_postgres import _fanout
from hvbackend_postgres._fanout import check_parameters, group_pieces, item_shard, limit_error, shard_pieces
from hvbackend_postgres._indexsql import typed_conditions
from hvbackend_postgres._schema import (
    BODY_INDEX_UNSET,
    BODY_TYPES,
    MOVED_SQLSTATE,
    TABLE,
    ShardSQL,
    moved_error,
    required_relations,
    shard_schema,
)
from hvbackend_postgres._selflock import SelfLocks
from hvcore._attempts import earlier_failure, failed_attempt
from hvcore._backend import BackendOptions, QuerySpec, Record, check_body, check_json, json_default
from hvcore._config import libpq_settings, redact_conninfo
from hvcore._holdings import Holdings, current_owner, pool_timeout
from hvcore._key import Key
from hvcore._row import Row
from hvcore._show import show_value
from hvcore.errors import (
    ConfigError,
    ConstraintViolation,
    DuplicateKey,
    HypervaultError,
    LoginRefused,
    NotProvisioned,
    PermissionDenied,
    PoolTimeout,
    ReadOnlyServer,
    ServerError,
    ServerUnavailable,
    StatementTimeout,
    TransactionError,
    WriteOutcomeUnknown,
)

_E = TypeVar("_E", bound=BaseException)

__all__ = [
    "ADVISORY_LOCK",
    "BACKEND_CHECK_SQL",
    "DENIED_SHARD_SQL",
    "HSTORE_SCHEMA_SQL",
    "PIPELINE_GRACE",
    "PROVISION_BATCH",
    "PROVISION_WORKERS",
    "QUERY_FETCH_FIRST",
    "QUERY_FETCH_GROWTH",
    "QUERY_FETCH_MAX",
    "SEARCH_PATH_SQL",
    "USER_ROW_FACTORIES",
    "OperationTimeout",
    "PipelineTimeout",
    "StoreCore",
    "chained",
    "check_json",
    "idle_socket_state",
    "load_json",
    "log_statement",
    "log_statements",
    "login_refusal",
    "named_shard",
    "query_fetch_sizes",
    "query_records",
    "refusal_error",
    "resumed",
    "row_factory",
    "scrub",
    "session_clean",
    "statement_error",
    "statement_text",
    "timeout_in",
]

# Shards per provisioning transaction: each shard's DDL holds about 6 relation locks until COMMIT (table, TOAST
# table and index, 3 indexes), so 16 shards keep a transaction near the default max_locks_per_transaction (64), like
# every multi-shard statement (_fanout). 200 per transaction held ~1,200 of the 6,400 shared lock entries per worker.
PROVISION_BATCH = 16
PROVISION_WORKERS = 2  # parallel provisioning sessions per server
# A query stream's round trips: a small first fetch (the first record comes quickly), then each one asks for
# QUERY_FETCH_GROWTH times more rows, up to QUERY_FETCH_MAX (memory holds one batch of decoded rows at a time).
# The cap is measured: on loopback a 100,000-row stream got slower with every larger cap tried (best of 15:
# cap 400 277 ms, 800 298 ms, 1600 342 ms; 10,000 about 410 ms), while the extra round trips of a small cap cost
# little (likely cause: a fetch larger than the socket buffer makes server and client take turns filling it).
# A distant server, where round trips are dear, may want a larger cap.
QUERY_FETCH_FIRST = 100
QUERY_FETCH_GROWTH = 4
QUERY_FETCH_MAX = 500
ADVISORY_LOCK = 0x68765F70726F76  # "hv_prov": one provisioner per database at a time
HSTORE_SCHEMA_SQL = (
    "SELECT n.nspname FROM pg_catalog.pg_extension e "
    "JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'hstore'"
)
BACKEND_CHECK_SQL = (
    f"SELECT ({HSTORE_SCHEMA_SQL}), (SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) "
    "FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relname = 'entities' AND c.relkind = 'r' AND a.attname = 'body' AND n.nspname ~ '^shard[0-9]{4,}$' "
    "LIMIT 1), EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus')"
)
"""The hstore extension's schema (or NULL), the body type of one shard table (or NULL if none exists), and whether
Citus is installed in the database (then `hvbackend_postgres._citus.CITUS_SHARD_SCHEMAS_SQL` says more)."""
SEARCH_PATH_SQL = "SELECT pg_catalog.set_config('search_path', %s, false), pg_catalog.to_regnamespace(%s) IS NOT NULL"
SEARCH_PATH_AUTO_PLANS_SQL = (
    SEARCH_PATH_SQL + ", pg_catalog.set_config('plan_cache_mode', (SELECT s.reset_val FROM pg_catalog.pg_settings s "
    "WHERE s.name = 'plan_cache_mode'), false)"
)
"""`SEARCH_PATH_SQL` for a session in generic-plan mode: the lent connection gets the session's own plan_cache_mode
back (``auto`` unless the role, database or connection options set another), as ``RESET`` would give it."""
_NOT_PROVISIONED_STATES = frozenset({"42P01", "3F000"})  # undefined table, invalid schema name
PRIVILEGE_SQLSTATE = "42501"  # insufficient_privilege: PermissionDenied
READ_ONLY_SQLSTATE = "25006"  # read_only_sql_transaction: ReadOnlyServer
_MISSING_TYPE_STATES = frozenset({"42704", "42883"})  # undefined object (type), undefined function


def scrub(text: str, secret: str | None) -> str:
    """``text`` with passwords masked (conninfo syntax and the literal password, if any)."""
    text = redact_conninfo(text)
    if secret:
        text = text.replace(secret, "***")
    return text


class OperationTimeout(psycopg.errors._WaitTimeout, ServerUnavailable):
    """``operation_timeout`` expired while waiting for the server: a `ServerUnavailable` (and, for the store's own
    handling, the psycopg error its ``wait(timeout=)`` raises). A cancel request for the statement was sent, so a
    statement that was only waiting (a lock, a slow plan) stops on the server instead of completing later."""

    timed_out = True


def _timed_out(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], limit: float) -> OperationTimeout:
    """The error for a wait that ran past ``limit`` seconds, after starting a cancel request for the statement.

    libpq's non-blocking cancel connection (``PQcancelStart``, libpq 17+) is started here and finished on a thread,
    bounded by ``limit``: a frozen server must hold neither the caller nor, as the blocking ``PQcancel`` would (it
    keeps the GIL), the whole process.
    """
    info = conn.info
    where = f"{info.host}:{info.port}/{info.dbname}"
    if conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE and _CANCEL_CONN:
        with contextlib.suppress(psycopg.Error):
            cancel = conn.pgconn.cancel_conn()
            cancel.start()
            deadline = time.monotonic() + max(limit, 1.0)
            threading.Thread(target=_finish_cancel, args=(cancel, deadline), name="hv-cancel", daemon=True).start()
    return OperationTimeout(
        f"PostgreSQL server {where} did not answer within operation_timeout={limit} s: a cancel request was sent "
        "for the statement, and the connection is not reused (a statement that had already committed stays "
        "committed)"
    )


class PipelineTimeout(OperationTimeout):
    """`OperationTimeout` of a pipeline (a fan-out's pieces, see the store's ``_pipelined``): ``settled`` is True if
    every result of the pipeline arrived after the cancel (each cursor then says whether its statement ran), False
    if the session was closed with results still due (what the cursors say is a lower bound)."""

    settled: bool = False


PIPELINE_GRACE = 0.5
"""Seconds a pipeline cut off by ``operation_timeout`` is given, after the cancel request, for its remaining results
(the cancelled statement's error, the aborted ones after it: milliseconds on a server that answers); at most a
quarter of the timeout (0.25 s for 1 s). Past it the session is closed unread."""


def timeout_in(exc: BaseException) -> OperationTimeout | None:
    """The `OperationTimeout` that ``exc`` is or replaced (psycopg's exit from a pipeline cut off by it fails with
    "cannot exit pipeline mode while busy", the timeout as its context), else None."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        if isinstance(seen, OperationTimeout):
            return seen
        seen = seen.__context__
    return None


def resumed(gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """``gen``, a psycopg generator a timed-out wait left suspended, driven on from where it was: the first wait is
    for reading or writing (what it last asked for is not known), and it is never sent None (psycopg's C generators
    store the readiness they are sent in an int)."""
    ready = yield Wait.RW
    try:
        state = gen.send(ready)
        while True:
            state = gen.send((yield state))
    except StopIteration as stop:
        return stop.value


_CANCEL_CONN = psycopg.pq.version() >= 170000  # PQcancelStart/PQcancelPoll: libpq 17 (psycopg-binary bundles 17+)


def _finish_cancel(cancel: Any, deadline: float) -> None:
    """Drive a started cancel connection to its end (or ``deadline``, monotonic s), waiting in ``select``."""
    try:
        while (left := deadline - time.monotonic()) > 0:
            status = cancel.poll()
            if status == pq.PollingStatus.READING:
                select.select([cancel.socket], [], [], left)
            elif status == pq.PollingStatus.WRITING:
                select.select([], [cancel.socket], [], left)
            else:  # OK (sent) or FAILED: either way nothing more to do
                return
    except (psycopg.Error, OSError, ValueError):
        pass  # the cancel is best effort: the statement's connection is discarded anyway
    finally:
        cancel.finish()


def bounded_connection_class(timeout: float | None) -> type[psycopg.Connection[Any]]:
    """A `psycopg.Connection` whose every wait on the server gives up after ``timeout`` seconds.

    A server that is frozen (or its host gone without a reset) keeps TCP open, so no socket timeout fires;
    psycopg's ``wait(timeout=…)`` raises instead: `OperationTimeout` (a `ServerUnavailable`, even for a raw
    ``cursor()`` statement), after a cancel request for the statement; the pool discards the connection (left
    mid-statement).
    """
    if timeout is None:
        return psycopg.Connection

    class BoundedConnection(psycopg.Connection[Any]):
        hv_cut: Any = None  # the generator a wait cut off by the timeout left suspended

        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            try:
                return super().wait(gen, interval, limit if timeout is None else timeout)
            except psycopg.errors._WaitTimeout as exc:
                if isinstance(exc, OperationTimeout):
                    raise
                self.hv_cut = gen  # left where it waited: a pipeline's results can still be read (_pipelined)
                raise _timed_out(self, limit if timeout is None else timeout) from None

        @contextlib.contextmanager
        def pipeline(self) -> Iterator[psycopg.Pipeline]:
            """psycopg's pipeline; cut off by the timeout, its exit raises the timeout (`timeout_in`), not psycopg's
            "cannot exit pipeline mode while busy" (the session stays unusable: it is not reused)."""
            try:
                with super().pipeline() as pipeline:
                    yield pipeline
            except psycopg.OperationalError as exc:
                cut = timeout_in(exc)
                if cut is None or cut is exc:
                    raise
                raise cut from None

    limit = timeout
    return BoundedConnection


def bounded_async_connection_class(timeout: float | None) -> type[psycopg.AsyncConnection[Any]]:
    """The asyncio form of `bounded_connection_class`."""
    if timeout is None:
        return psycopg.AsyncConnection

    class BoundedAsyncConnection(psycopg.AsyncConnection[Any]):
        hv_cut: Any = None  # the generator a wait cut off by the timeout left suspended

        async def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            try:
                return await super().wait(gen, interval, limit if timeout is None else timeout)
            except psycopg.errors._WaitTimeout as exc:
                if isinstance(exc, OperationTimeout):
                    raise
                self.hv_cut = gen  # left where it waited: a pipeline's results can still be read (_pipelined)
                raise _timed_out(self, limit if timeout is None else timeout) from None

        @contextlib.asynccontextmanager
        async def pipeline(self) -> AsyncIterator[psycopg.AsyncPipeline]:
            """As `BoundedConnection.pipeline`: a pipeline cut off by the timeout raises the timeout on its exit."""
            try:
                async with super().pipeline() as pipeline:
                    yield pipeline
            except psycopg.OperationalError as exc:
                cut = timeout_in(exc)
                if cut is None or cut is exc:
                    raise
                raise cut from None

    limit = timeout
    return BoundedAsyncConnection


ENDS_TRANSACTION = re.compile(
    r"(?:^|;)\s*(?:COMMIT|END|ABORT|ROLLBACK(?!\s+(?:WORK\s+|TRANSACTION\s+)?TO\b)|PREPARE\s+TRANSACTION)\b",
    re.IGNORECASE,
)
"""A statement (or one of several) that ends the transaction it runs in: COMMIT, END, ABORT, ROLLBACK (not ROLLBACK
TO a savepoint), PREPARE TRANSACTION."""


STATEMENT_START = r"(?:^|[;\n]|\*/)\s*"
"""What comes before a statement's first word, whatever is between statements: the start, a semicolon, the end of
a comment (``*/`` or the newline ending ``--``), then blanks. A prefilter sound on raw text (`MAY_END`)."""
MAY_END = re.compile(STATEMENT_START + r"(?:COMMIT|END|ABORT|ROLLBACK|PREPARE)\b", re.IGNORECASE)
"""Raw text that may hold a statement ending the transaction: only such text is lexed (`sql_words`); ~0.5 µs."""
_LITERAL_TOKENS = frozenset({"SCONST", "USCONST", "BCONST", "XCONST"})
_COMMENT_TOKENS = frozenset({"C_COMMENT", "SQL_COMMENT"})
_PLAIN_NAME = re.compile(r"\w+")


def sql_words(text: str) -> str | None:
    """``text`` (SQL, one statement or several) as PostgreSQL's own lexer reads it (`pglast.parser.scan`), keeping
    only the statements' own words: string literals (dollar-quoted bodies included) become ``''``, comments go,
    a quoted identifier becomes its name (``"_"`` unless a plain word), and a semicolon separates top-level
    statements only: inside the ``BEGIN ATOMIC ... END`` body of ``CREATE FUNCTION``/``PROCEDURE`` it is left out,
    as psql does (it counts BEGIN/CASE against END there). None if the lexer refuses the text (an unterminated
    literal): the server's lexer, the same, refuses it too. psycopg placeholders (``%s``, ``%(name)s``) lex as
    operators and names."""
    from pglast.parser import ParseError, scan  # loaded with the first lexed statement

    try:
        tokens = scan(text)
    except ParseError:
        return None
    words: list[str] = []
    head: list[str] = []  # the statement's first words, to tell CREATE [OR REPLACE] FUNCTION/PROCEDURE
    depth = parens = 0
    for token in tokens:
        name = token.name
        if name in _COMMENT_TOKENS:
            continue
        if name in _LITERAL_TOKENS:
            words.append("''")
            continue
        word = text[token.start : token.end + 1]
        if name == "ASCII_59" and depth == 0:  # ';'
            words.append(";")
            head = []
            parens = 0
            continue
        if name in ("ASCII_59",):
            continue  # a semicolon inside a BEGIN ATOMIC body
        if name == "ASCII_40":
            parens += 1
        elif name == "ASCII_41":
            parens -= 1
        elif word[:1] == '"' or name == "UIDENT":
            inner = word.strip('"') if word[:1] == '"' else ""
            word = inner if _PLAIN_NAME.fullmatch(inner) else '"_"'
        elif token.kind != "NO_KEYWORD" or name == "IDENT":
            if len(head) < 4:
                head.append(word.lower())
            if parens == 0 and _defines_routine(head):
                if name == "BEGIN_P" or (name == "CASE" and depth):
                    depth += 1
                elif name == "END_P" and depth:
                    depth -= 1
        words.append(word)
    return " ".join(words)


def _defines_routine(head: list[str]) -> bool:
    """Whether a statement's first words are CREATE [OR REPLACE] FUNCTION/PROCEDURE."""
    if head[:1] != ["create"] or len(head) < 2:
        return False
    if head[1] in ("function", "procedure"):
        return True
    return head[1:3] == ["or", "replace"] and len(head) > 3 and head[3] in ("function", "procedure")


def check_not_ending(query: Any, conn: Any, shard_id: int) -> None:
    """`TransactionError` before anything is sent if ``query``, run by user code inside ``db.transaction(shard_id)``,
    would end that transaction: a COMMIT there would store its first half and leave the rest to run outside it.
    (``connection.commit()``/``rollback()`` are refused by psycopg itself there: see the transaction's cursor.)
    Judged on the statements as PostgreSQL's lexer reads them (`sql_words`: literals, comments and a ``BEGIN ATOMIC``
    body are no statements), lexed only when `MAY_END` finds one in the raw text."""
    text = statement_text(query, conn)
    if not MAY_END.search(text):
        return
    words = sql_words(text)
    if words is not None and ENDS_TRANSACTION.search(words):
        raise TransactionError(
            f"a statement ending the transaction ({show_value(text)}) was sent through tx.cursor() inside "
            f"db.transaction({shard_id}): the block commits when it ends and rolls back on an exception; raise an "
            "exception to roll back, or open separate transactions"
        )


def statement_text(query: Any, context: Any) -> str:
    """A statement as text for the log (composed SQL rendered, bytes decoded)."""
    if isinstance(query, sql.Composable):
        return query.as_string(context)
    if isinstance(query, bytes):
        return query.decode("utf-8", "replace")
    return str(query)


_decoder = json.JSONDecoder()
_scan: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(cast(Any, _decoder))


def load_json(data: str | bytes) -> Any:
    """Decode a json/jsonb value sent by the server: the C scanner straight away (PostgreSQL sends no padding).

    About 4× faster than ``json.loads`` on bytes, which dominated get_many's client time; anything the scanner
    does not consume entirely goes through the full decoder.
    """
    text = data if isinstance(data, str) else data.decode("utf-8")
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return _decoder.decode(text)
    return value if end == len(text) else _decoder.decode(text)


def query_fetch_sizes(limit: int | None, first: int | None = None) -> Iterator[int]:
    """Rows to ask for in each round trip of a query stream: 100, 400, then 500 each time (with the defaults).

    With a ``limit`` the sizes add up to exactly the limit and then end, so no round trip asks for more rows than
    the stream can still yield. ``first`` (at most `QUERY_FETCH_FIRST`) starts smaller: the pieces of a query over
    thousands of shards share one first round trip. The module's constants are read on every call (tests change
    them).
    """
    size = max(1, min(QUERY_FETCH_FIRST if first is None else min(first, QUERY_FETCH_FIRST), QUERY_FETCH_MAX))
    remaining = limit
    while remaining is None or remaining > 0:
        if remaining is not None:
            size = min(size, remaining)
            remaining -= size
        yield size
        size = min(size * QUERY_FETCH_GROWTH, QUERY_FETCH_MAX)


def _record_slots() -> tuple[Callable[[Record, Any], None], ...] | None:
    """The setters of `Record`'s three slots, if it is still the plain slotted (key, kind, data) dataclass."""
    names = ("key", "kind", "data")
    slots = [vars(Record).get(name) for name in names]
    if tuple(Record.__dataclass_fields__) != names or hasattr(Record, "__post_init__"):
        return None
    if not all(isinstance(slot, types.MemberDescriptorType) for slot in slots):
        return None
    return tuple(cast(Any, slot).__set__ for slot in slots)


_RECORD_SLOTS = _record_slots()


def query_records(rows: Sequence[Sequence[Any]], key_type: type[Key]) -> list[Record]:
    """Rows ``(id, kind, body)`` of a query stream as Records (a batch at a time: the per-row cost is the point).

    Ids are bigints, so a non-negative one is always a valid key and skips `Key`'s checks; a negative one goes
    through them (and is refused as before).
    """
    new_int = int.__new__
    return make_records((new_int(key_type, key) if key >= 0 else key_type(key), kind, data) for key, kind, data in rows)


def make_records(triples: Iterable[tuple[Key, int, Any]]) -> list[Record]:
    """Records of ``(key, kind, body)`` triples read from the server.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, which cost more than
    decoding the row; the slots are filled directly instead (`_record_slots` checks that `Record` still has
    exactly these three slots, else ``Record(...)`` is called). Bodies are fresh dicts from the JSON or hstore
    loader and are not copied again (anything else becomes a dict).
    """
    if _RECORD_SLOTS is None:
        return [Record(key, kind, data if type(data) is dict else dict(data)) for key, kind, data in triples]
    set_key, set_kind, set_data = _RECORD_SLOTS
    new = object.__new__
    records: list[Record] = []
    append = records.append
    for key, kind, data in triples:
        record = new(Record)
        set_key(record, key)
        set_kind(record, kind)
        set_data(record, data if type(data) is dict else dict(data))
        append(record)
    return records


# admin_shutdown, crash_shutdown, cannot_connect_now, and class 08 (connection exceptions): the server went away
_SERVER_GONE_STATES = frozenset({"57P01", "57P02", "57P03", "08000", "08003", "08006", "08001", "08004", "08P01"})


def _keep_floats(value: Any, big: list[float]) -> Any:
    """``value`` with every float whose repr has a positive exponent swapped for a placeholder string."""
    if isinstance(value, float):
        if "e+" in repr(value):
            big.append(value)
            return f"\x00{len(big) - 1}\x00"  # NUL: impossible in checked bodies (check_text rejects it)
        return value
    if isinstance(value, list | tuple):
        return [_keep_floats(v, big) for v in value]
    if isinstance(value, Mapping):
        return {k: _keep_floats(v, big) for k, v in value.items()}
    return value


def dump_json(obj: Any) -> str:
    """Encode a body for jsonb so that floats come back as the same floats.

    jsonb reads ``3.333473927924339e+16`` as the numeric 33334739279243390 and sends it back as an integer of
    another value; written as the float's exact decimal with ``.0`` (``33334739279243392.0``) it keeps its scale
    and is read back as that float. Only bodies whose text holds ``e+`` take the slow path.
    """
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, default=json_default)
    if "e+" not in text:
        return text
    big: list[float] = []
    text = json.dumps(_keep_floats(obj, big), ensure_ascii=False, allow_nan=False, default=json_default)
    for index, value in enumerate(big):
        text = text.replace(f'"\\u0000{index}\\u0000"', f"{int(value)}.0", 1)
    return text


def session_clean(conn: Any) -> bool:
    """True if ``conn`` is in the state a pooled session is handed out in: open, autocommit, idle (no transaction, no
    statement running, no result pending: libpq's ``IDLE``) and out of pipeline mode, libpq's and psycopg's (its
    ``_pipeline`` object, which a cancellation inside ``AsyncPipeline.__aenter__`` leaves set at level 1, so that
    later pipelines nest into it and plain statements go out with the extended protocol).

    Anything else is what an interruption left behind (a cancellation, a signal, a statement cut off): unknown
    state, closed and replaced by the pool, never reused.
    """
    if conn.closed or not conn.autocommit:
        return False
    pgconn = conn.pgconn
    return (
        pgconn.transaction_status == pq.TransactionStatus.IDLE
        and pgconn.pipeline_status == pq.PipelineStatus.OFF
        and getattr(conn, "_pipeline", None) is None
    )


def idle_socket_state(pgconn: pq.abc.PGconn) -> bool | None:
    """Cheap checkout check, no round trip: False if unusable, True if idle and quiet, None if a round trip must tell.

    A dead socket shows up as readable while idle (a termination notice, EOF, or just a notification).
    """
    if (
        pgconn.status != pq.ConnStatus.OK
        or pgconn.transaction_status != pq.TransactionStatus.IDLE
        or pgconn.pipeline_status != pq.PipelineStatus.OFF
    ):
        return False
    try:
        readable = select.select([pgconn.socket], [], [], 0)[0]
    except (OSError, ValueError, psycopg.OperationalError):
        return False
    return None if readable else True


def row_factory(cursor: Any) -> RowMaker[Row]:
    """psycopg row factory of `hvcore.Row`: rows indexable by position and by column name (psycopg2's DictRow)."""
    description = cursor.description
    if description is None:
        return tuple_row(cursor)  # type: ignore[return-value]  # no result: psycopg never calls the maker
    index = {column.name: i for i, column in enumerate(description)}

    def make(values: Sequence[Any]) -> Row:
        return Row(values, index)

    return make


USER_ROW_FACTORIES: dict[str, Any] = {"row": row_factory, "dict": dict_row, "tuple": tuple_row}
"""The ``row_factory`` option → psycopg row factory of connections lent by ``get_connection()``/``cursor()``."""


def log_statement(logger: logging.Logger | None, log_values: bool, query: Any, params: Any, context: Any) -> None:
    """Log one statement at DEBUG; its bound values (user data) only if ``log_values``."""
    if logger is None or not logger.isEnabledFor(logging.DEBUG):
        return
    text = statement_text(query, context)
    if log_values and params is not None:
        logger.debug("statement: %s | values: %r", text, params)
    else:
        logger.debug("statement: %s", text)


def log_statements(
    logger: logging.Logger | None, log_values: bool, query: Any, params_seq: Sequence[Any], context: Any
) -> None:
    """Log a statement run for many parameter sets at DEBUG; the values only if ``log_values``."""
    if logger is None or not logger.isEnabledFor(logging.DEBUG):
        return
    text = statement_text(query, context)
    if log_values:
        logger.debug("statement: %s | values (%d rows): %r", text, len(params_seq), list(params_seq))
    else:
        logger.debug("statement: %s | %d parameter sets", text, len(params_seq))


class StoreCore:
    """The I/O-free half of a PostgreSQL server store: parsed settings, checks, statements, errors, decoding.

    `PostgresServerStore` and `AsyncPostgresServerStore` subclass it and add only the I/O, mirroring each other.
    """

    def __init__(self, settings: Mapping[str, Any], options: BackendOptions, *, backend: str = "jsonb") -> None:
        if backend not in BODY_TYPES:
            raise ConfigError(f"unknown PostgreSQL body type {backend!r}: expected 'hstore' or 'jsonb'")
        self.backend = backend
        self.text_only = backend == "hstore"
        self._options = options
        parsed = libpq_settings(settings)  # psycopg2 spellings resolved, libpq's checks, no connection
        kwargs = dict(parsed.keywords)
        params = parsed.params
        self._secret: str | None = parsed.password
        host = str(params.get("host") or params.get("hostaddr") or "localhost")
        port = str(params.get("port") or "5432")
        dbname = str(params.get("dbname") or params.get("user") or "postgres")
        self._label = f"{host}:{port}/{dbname}"
        self._role = str(params.get("user") or "")  # named in PermissionDenied
        self._dbname = dbname
        self._conninfo = parsed.conninfo
        # each connection attempt (TCP, TLS, login) is bounded like every other exchange: by the smaller of
        # pool_block_timeout and operation_timeout, at least 2 s (libpq's least), unless the settings say otherwise
        bound = min(options.pool_block_timeout, options.operation_timeout or options.pool_block_timeout)
        kwargs.setdefault("connect_timeout", max(2, math.ceil(bound)))
        kwargs.setdefault("application_name", "hypervault")
        self._kwargs = kwargs
        self._user_row_factory: Any = USER_ROW_FACTORIES.get(options.row_factory, row_factory)
        self._lent = 0
        self._waiting = 0  # callers waiting for a connection of the pool right now (see _checkout)
        self._holdings = Holdings()  # what each thread / task holds of the pool (for the PoolTimeout's note)
        self._self_locks = SelfLocks()  # sessions callers hold: a plain call waiting for its own (_selflock)
        self._borrower: dict[int, object] = {}  # id(conn) of a get_connection() connection → who borrowed it
        self._sql: dict[int, ShardSQL] = {}
        self._fetch_parts: dict[int, str] = {}
        self.insert_groups = True  # overlapping puts may share multi-row INSERTs (False once the server refuses them)
        self.shards_per_statement: int | None = None  # None: SHARDS_PER_STATEMENT; 1 on Citus (see _check_backend)
        self._ext_schema: str | None = None
        self._hstore_info: TypeInfo | None = None
        self._backend_checked = False  # see _check_backend: shards of this database store our body type

    # -- identity and messages -------------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """``host:port/dbname``, never a password."""
        return self._label

    def _log(self, message: str, *args: object) -> None:
        """Log at DEBUG (statements and connection events: never user data unless ``log_values``)."""
        logger = self._options.logger
        if logger is not None:
            logger.debug(message, *args)

    def _unavailable(self, exc: BaseException) -> ServerUnavailable | LoginRefused:
        """The error for a failed connection or a lost session: `LoginRefused` when the server's configuration
        refuses this role's or database's sessions (`login_refusal`), else `ServerUnavailable`."""
        text = scrub(str(exc).strip(), self._secret)
        refused = login_refusal(text, self._label, self._role, self._dbname)
        if refused is not None:
            return refused
        if "authentication failed" in text:  # another method than password (ident, peer, cert...)
            return LoginRefused(
                f"PostgreSQL server {self._label} refused the login: {text} (check user and the authentication "
                "method pg_hba.conf asks of it)",
                server=self._label,
                role=self._role,
                database=self._dbname,
                setting="authentication",
            )
        if isinstance(exc, OperationTimeout):  # its message names the server and the bound already
            error = ServerUnavailable(text)
            error.timed_out = True
            return error
        if isinstance(exc, psycopg.errors.ConnectionTimeout):  # "connection timeout expired": say which bound
            text += (
                f" (no answer to the connection start-up within connect_timeout={self._kwargs.get('connect_timeout')}"
                " s: a server that is down, frozen or overloaded, or an address where no PostgreSQL answers)"
            )
        return ServerUnavailable(f"PostgreSQL server {self._label} is unavailable: {text}")

    def _no_second_attempt(self) -> None:
        """Raise at once the error of a connection attempt to this server that failed earlier in the running call
        (inside `hvcore._attempts.one_attempt_per_server`: one ``connect_timeout`` per silent server, not one per
        step of the call)."""
        error = earlier_failure(self._label)
        if error is not None:
            raise error

    def _attempt_failed(self, error: _E) -> _E:
        """``error``, the failure of a connection attempt to this server, remembered for the running call (see
        `_no_second_attempt`)."""
        failed_attempt(self._label, error)
        return error

    def _no_session(self) -> ServerUnavailable:
        """The error of a caller that waited ``pool_block_timeout`` for a connection while none was open or in use:
        the pool's attempt to open one has had no answer from the server (not a full pool: no advice to raise
        ``pool_max``)."""
        return ServerUnavailable(
            f"PostgreSQL server {self._label} did not accept a session within pool_block_timeout="
            f"{self._options.pool_block_timeout} s: none of its connections is open or lent, and the connection "
            "attempt under way has had no answer to its start-up (TCP connect, TLS negotiation, login; connect_timeout="
            f"{self._kwargs.get('connect_timeout')} s per attempt): a server that is down, frozen or overloaded, or an "
            "address where no PostgreSQL answers"
        )

    def _pool_timeout(self, *, connecting: bool = False) -> PoolTimeout:
        """The `PoolTimeout` of this store's pool, noting what the waiting thread or task holds itself.
        ``connecting``: the pool was opening a new connection meanwhile, which the server has not answered."""
        options = self._options
        bound = self._kwargs.get("connect_timeout")
        return pool_timeout(
            self._label,
            options.pool_block_timeout,
            options.pool_max,
            self._holdings.mine(),
            lent=self._lent,
            connecting=float(bound) if connecting and bound is not None else None,
        )

    def _shard_missing(self, shard_id: int) -> NotProvisioned:
        schema = shard_schema(shard_id)
        return NotProvisioned(
            f"shard {shard_id} is not provisioned on {self._label} (no schema {schema}): run `hv init`"
        )

    def _hstore_missing(self) -> NotProvisioned:
        return NotProvisioned(
            f"the hstore extension is not installed in {self._label}: run `hv init --config FILE` "
            "(Datastore.provision()) to create it and the shards' schemas"
        )

    def _backend_mismatch(self, body_type: str | None) -> ConfigError | None:
        """The error for a database whose shard bodies are ``body_type`` when this backend wants another type."""
        if body_type is None:
            return None
        found = body_type.rsplit(".", 1)[-1]
        if found == BODY_TYPES[self.backend]:
            return None
        other = next((name for name, kind in BODY_TYPES.items() if kind == found), None)
        hint = f"open it with backend={other!r}" if other else "it was not provisioned by hypervault"
        return ConfigError(
            f"{self._label} was provisioned for the {other or found} backend (shard bodies are {body_type}), but this "
            f"datastore uses backend={self.backend!r}: {hint}"
        )

    def _duplicate(self, shard_id: int, key: Key) -> DuplicateKey:
        return DuplicateKey(f"key {int(key)} already exists in shard {shard_id} on {self._label}")

    def _outcome_unknown(self, xid: int | None, keys: Sequence[Key], why: str) -> WriteOutcomeUnknown:
        shown = ", ".join(str(int(k)) for k in keys[:3]) + (" ..." if len(keys) > 3 else "")
        which = f"its transaction {xid}" if xid is not None else "it"
        return WriteOutcomeUnknown(
            f"a write to {self._label} lost its connection and whether {which} committed is not known: {why}. "
            f"Read its keys ({shown}) to know: a new key holds this write's row or none, never another writer's; a "
            "key it updated, replaced or deleted holds the row as before or as this write left it",
            keys=tuple(int(k) for k in keys),
        )

    def _taken_sql(self, shard_id: int) -> sql.Composed:
        """The keys of a list (``%s``: bigint[]) that a shard holds: which keys of a refused batch are taken."""
        return sql.SQL("SELECT id FROM {}.{} WHERE id = ANY(%s::bigint[])").format(
            sql.Identifier(shard_schema(shard_id)), sql.Identifier(TABLE)
        )

    def _duplicate_batch(self, shard_id: int, count: int) -> DuplicateKey:
        return DuplicateKey(f"a key of this batch of {count} already exists in shard {shard_id} on {self._label}")

    def _translate(self, exc: psycopg.Error, shard_id: int, shards: Sequence[int] = ()) -> Exception:
        """``exc`` as a hypervault error where one fits (else ``exc`` itself), naming the shard it is about:
        the shard whose schema the server names (a statement over several shards fails on one of them), else
        ``shard_id``. ``shards``: all the shards the failed statement(s) covered, named when the server names
        none of them (a privilege on a table, whose name alone is given)."""
        if self._self_locks.open and isinstance(
            exc, pg_errors.QueryCanceled
        ):  # cancelled waiting for its own transaction?
            found = self._self_locks.error(current_owner(), shard_id, self._label)
            if found is not None:
                return found
        state = exc.sqlstate
        named = named_shard(exc)
        if named is not None:
            shard_id, shards = named, ()
        if state == MOVED_SQLSTATE:  # the forwarding stub a moved shard leaves on its old server (see _schema.stub_sql)
            return moved_error(exc)
        if state in _NOT_PROVISIONED_STATES:
            return NotProvisioned(
                f"shard {shard_id} is not provisioned on {self._label} ({exc.diag.message_primary}): "
                "run `hv init --config FILE` (Datastore.provision())"
            )
        if state in _MISSING_TYPE_STATES and "hstore" in str(exc):
            self._ext_schema = None
            self._hstore_info = None
            self._sql.clear()
            self._fetch_parts.clear()
            return NotProvisioned(f"the hstore extension is missing in {self._label}: run `hv init --config FILE`")
        limit = limit_error(exc, self._label)  # lock table, stack depth, parameters, size (_fanout)
        if limit is not None:
            return limit
        refused = refusal_error(exc, self._label, self._role, shard_id, shards)
        if refused is not None:
            return refused
        typed = statement_error(exc, self._label, shard_id, shards)
        if typed is not None:
            return typed
        if isinstance(exc, psycopg.OperationalError) and (state is None or state in _SERVER_GONE_STATES):
            return self._unavailable(exc)
        return exc

    def _refusal(self, exc: psycopg.Error) -> HypervaultError | None:
        """`refusal_error` for this server and role."""
        return refusal_error(exc, self._label, self._role)

    def _pool_kwargs(self) -> dict[str, Any]:
        """Arguments of the psycopg_pool pool (sync or async) of this server."""
        kwargs = {**self._kwargs, "autocommit": True}
        options = _fanout.session_options(kwargs.get("options"))
        if options is not None:
            kwargs["options"] = options
        return {
            "kwargs": kwargs,
            "min_size": 0,
            "max_size": self._options.pool_max,
            "timeout": self._options.pool_block_timeout,
            "name": self._label,
            "num_workers": 2,
        }

    # -- data ------------------------------------------------------------------------------------------------

    def check_data(self, data: Mapping[str, Any]) -> None:
        """hstore: text values (or None) only; jsonb: what round-trips through jsonb (`hvcore._backend.check_body`).

        The memory backend applies the same function, so a body it accepts is one PostgreSQL stores exactly.
        """
        check_body(data, text_only=self.text_only)

    def _body_params(self, data: Mapping[str, Any]) -> tuple[Any, ...]:
        if self.text_only:
            return (list(data.keys()), list(data.values()))
        return (Jsonb(data),)

    @staticmethod
    def _group_insert_sql(statements: ShardSQL, count: int) -> str:
        """``count`` rows of the shard's single-row INSERT in one statement, conflicts skipped; returns the stored
        ids, each row with the transaction id last (`_commit`: a lost connection is settled by asking the server)."""
        head, row = statements.insert.split(" VALUES ", 1)
        return (
            f"{head} VALUES {', '.join([row] * count)} ON CONFLICT DO NOTHING RETURNING id, pg_current_xact_id()::text"
        )

    def _insert_params(self, key: Key, kind: int, data: Mapping[str, Any]) -> tuple[Any, ...]:
        if self.text_only:
            return (key, kind, list(data.keys()), list(data.values()))
        return (key, kind, Jsonb(data))

    # -- statements ------------------------------------------------------------------------------------------

    def _search_path(self, shard_id: int) -> tuple[sql.Composed, str]:
        """The search path of a borrowed connection (the shard's schema, then the extension's) and the schema."""
        schema = shard_schema(shard_id)
        path = sql.SQL("{}, {}").format(sql.Identifier(schema), sql.Identifier(self._ext_schema or "public"))
        return path, schema

    @staticmethod
    def _hstore_type_name(ext: str) -> sql.Identifier:
        return sql.Identifier(ext, "hstore")

    def _copy_sql(self, shard_id: int) -> sql.Composed:
        """Binary COPY into one shard's table: put_many's single round trip (measured faster than executemany)."""
        return sql.SQL("COPY {}.{} (id, kind, body) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(shard_schema(shard_id)), sql.Identifier(TABLE)
        )

    def _copy_types(self) -> list[int | str]:
        if self.text_only:
            assert self._hstore_info is not None
            return ["int8", "int2", self._hstore_info.oid]
        return ["int8", "int2", "jsonb"]

    def _copy_rows(self, rows: Sequence[tuple[Key, int, Mapping[str, Any]]]) -> Iterable[tuple[Any, ...]]:
        if self.text_only:
            return ((key, kind, dict(data)) for key, kind, data in rows)
        return ((key, kind, Jsonb(data)) for key, kind, data in rows)

    def _log_copy(self, statement: sql.Composed, rows: Sequence[tuple[Key, int, Mapping[str, Any]]]) -> None:
        logger = self._options.logger
        if logger is None or not logger.isEnabledFor(logging.DEBUG):
            return
        if self._options.log_values:
            values = [(int(key), kind, dict(data)) for key, kind, data in rows]
            logger.debug("statement: %s | values (%d rows): %r", statement.as_string(None), len(rows), values)
        else:
            logger.debug("statement: %s | %d rows", statement.as_string(None), len(rows))

    def _log_statement(self, query: Any, params: Any, context: Any = None) -> None:
        """Log a statement at DEBUG, with its bound values only when ``log_values=True`` was asked for."""
        log_statement(self._options.logger, self._options.log_values, query, params, context)

    def _select_shards(self, parts: Sequence[tuple[int, sql.Composable]], ext: str | None) -> sql.Composed:
        body = sql.SQL("{}.hstore_to_json(body)").format(sql.Identifier(ext)) if ext is not None else sql.SQL("body")
        return sql.SQL(" UNION ALL ").join(
            sql.SQL("(SELECT id, kind, {body} FROM {schema}.{table}{cond})").format(
                body=body, schema=sql.Identifier(shard_schema(shard)), table=sql.Identifier(TABLE), cond=cond
            )
            for shard, cond in parts
        )

    def _fetch_many_sql(self, items: Sequence[tuple[int, Key]], ext: str | None) -> tuple[str, list[list[int]], int]:
        """One statement reading these (shard, key) pairs, its parameters (a key array per shard), a shard for errors.

        The per-shard parts are rendered once and the keys are bound as arrays: rendering 1000 keys as literals
        cost more client time than the whole server round trip.
        """
        by_shard: dict[int, list[int]] = {}
        for shard, key in items:
            by_shard.setdefault(shard, []).append(int(key))
        parts = self._fetch_parts
        text = " UNION ALL ".join(parts.get(shard) or self._fetch_part(shard, ext) for shard in by_shard)
        return text, list(by_shard.values()), next(iter(by_shard))

    def _fetch_many_statements(
        self, items: Sequence[tuple[int, Key]], ext: str | None
    ) -> list[tuple[str, list[list[int]]]]:
        """`_fetch_many_sql` per piece of at most `SHARDS_PER_STATEMENT` shards (`_fanout`): bounded locks."""
        pieces = group_pieces(items, item_shard, per_statement=self.shards_per_statement)
        return [self._fetch_many_sql(piece, ext)[:2] for piece in pieces]

    def _query_pieces_of(self, shard_ids: Sequence[int], spec: QuerySpec, ext: str | None) -> list[list[int]]:
        """The pieces of shards a query's statements cover: bounded relations and bound values per statement.

        `InvalidQuery` (before any SQL) if the filter alone binds more values than one statement may.
        """
        _, params = self._query_sql(shard_ids[:1], spec, ext)
        check_parameters(len(params), "this query's filter")
        return shard_pieces(shard_ids, len(params), per_statement=self.shards_per_statement)

    def _fetch_part(self, shard_id: int, ext: str | None) -> str:
        part = self._select_shards([(shard_id, sql.SQL(" WHERE id = ANY(%s::bigint[])"))], ext).as_string(None)
        self._fetch_parts[shard_id] = part
        return part

    @staticmethod
    def _records(items: Sequence[tuple[int, Key]], rows: Iterable[Sequence[Any]]) -> list[Record]:
        keys = {int(k): k for _, k in items}  # the caller's own Key objects come back
        return make_records((keys[r[0]], r[1], r[2]) for r in rows)

    def _update_sql(self, shard_id: int, ext: str | None, *, merge: bool) -> sql.Composed:
        target = sql.SQL("{}.{}").format(sql.Identifier(shard_schema(shard_id)), sql.Identifier(TABLE))
        if ext is not None:
            value: sql.Composable = sql.SQL("{}.hstore(%s::text[], %s::text[])").format(sql.Identifier(ext))
        else:
            value = sql.SQL("%s")
        new_body = sql.SQL("body || {}").format(value) if merge else value
        return sql.SQL("UPDATE {target} SET body = {body} WHERE id = %s").format(target=target, body=new_body)

    @staticmethod
    def _delete_sql(shard_id: int) -> sql.Composed:
        return sql.SQL("DELETE FROM {}.{} WHERE id = %s").format(
            sql.Identifier(shard_schema(shard_id)), sql.Identifier(TABLE)
        )

    def _query_sql(self, shard_ids: Sequence[int], spec: QuerySpec, ext: str | None) -> tuple[sql.Composed, list[Any]]:
        """The statement a query stream runs: each shard's key range (index scans) merged in key order."""
        cond, params = self._filter_sql(spec, ext)
        # Each shard orders (and limits) its own rows, so the planner merges per-shard primary-key index scans
        # (Merge Append) and the first rows come without sorting the range: a UNION ALL member with a WHERE
        # but no ORDER BY is planned alone, unordered, and the whole union is then sorted.
        order: sql.Composable = sql.SQL(" ORDER BY id")
        if spec.limit is not None:
            order = sql.SQL(" ORDER BY id LIMIT {}").format(sql.Literal(spec.limit))
        per_shard = [(s, cond + order) for s in shard_ids]
        query = sql.SQL("SELECT * FROM ({}) AS hv{}").format(self._select_shards(per_shard, ext), order)
        return query, params * len(shard_ids)

    def _write_where_sql(
        self, shard_id: int, spec: QuerySpec, ext: str | None, data: Mapping[str, Any] | None
    ) -> tuple[str, list[Any]]:
        """One shard's part of `update_where` (``data`` merged into each matching body) or `delete_where` (None).

        The filter is `_query_sql`'s (kind, key range, ``where``, typed filters on indexed fields), so a filter
        write touches exactly the rows the same query reads. Returns the statement and its parameters.
        """
        statements, _ = self._write_where_pieces([shard_id], spec, ext, data)
        return statements[shard_id]

    def _write_where_pieces(
        self, shard_ids: Sequence[int], spec: QuerySpec, ext: str | None, data: Mapping[str, Any] | None
    ) -> tuple[dict[int, tuple[str, list[Any]]], list[list[int]]]:
        """Each shard's filter-write statement (`_write_where_sql`) and the pieces of shards that run together
        (`_fanout.shard_pieces`: one transaction each). The filter is rendered once (its text and values are the
        same for every shard). `InvalidQuery` (before any SQL) if one statement would bind more values than the
        protocol allows."""
        cond, params = self._filter_sql(spec, ext)
        value: sql.Composable = sql.SQL("")
        if data is None:
            head = sql.SQL("DELETE FROM {schema}.{table}")
        else:
            value = sql.SQL("{}.hstore(%s::text[], %s::text[])").format(sql.Identifier(ext)) if ext else sql.SQL("%s")
            head = sql.SQL("UPDATE {schema}.{table} SET body = body || {value}")
            params = [*self._body_params(data), *params]
        check_parameters(len(params), "this filter write")
        tail = cond.as_string(None)
        table = sql.Identifier(TABLE)

        def text(shard: int) -> str:
            return head.format(schema=sql.Identifier(shard_schema(shard)), table=table, value=value).as_string(None)

        statements = {shard: (text(shard) + tail, params) for shard in shard_ids}
        return statements, shard_pieces(list(statements))

    def _filter_sql(self, spec: QuerySpec, ext: str | None) -> tuple[sql.Composed, list[Any]]:
        """``spec``'s filter as one shard's ``WHERE`` clause (empty without a filter) and its parameters."""
        conds: list[sql.Composable] = []
        params: list[Any] = []
        if spec.kind is not None:
            conds.append(sql.SQL("kind = %s"))
            params.append(spec.kind)
        if spec.low is not None:
            conds.append(sql.SQL("id >= %s"))
            params.append(spec.low)
        if spec.high is not None:
            conds.append(sql.SQL("id <= %s"))
            params.append(spec.high)
        if spec.where:
            if ext is not None:
                # the same expression as the body index (_schema.body_index_ddl), when built: text values, exact match
                conds.append(sql.SQL("{}.hstore_to_jsonb(body) @> %s").format(sql.Identifier(ext)))
                params.append(Jsonb(dict(spec.where)))
            else:
                conds.append(sql.SQL("body @> %s"))  # the body index narrows, when built; exact equality below
                params.append(Jsonb(dict(spec.where)))
                for name, value in spec.where.items():
                    if isinstance(value, list | tuple | Mapping):
                        conds.append(sql.SQL("body -> %s = %s"))
                        params += [name, Jsonb(value)]
        if spec.filters:  # typed filters on indexed fields: the index's own expression (hvbackend_postgres._indexes)
            typed, typed_params = typed_conditions(spec, ext, self.text_only)
            conds += typed
            params += typed_params
        if not conds:
            return sql.Composed([]), params
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds), params

    # -- provisioning ----------------------------------------------------------------------------------------

    def _todo(self, shard_ids: Sequence[int], existing: Mapping[int, tuple[set[str], str | None]]) -> list[int]:
        """The shards still missing a relation (or holding a body index to give ``fastupdate = off``, see
        `_schema.catalog_query`); `ConfigError` if a shard holds another backend's bodies."""
        todo: list[int] = []
        wanted = BODY_TYPES[self.backend]
        for shard in shard_ids:
            relations, body_type = existing.get(shard, (set(), None))
            if body_type is not None and body_type.rsplit(".", 1)[-1] != wanted:
                raise ConfigError(
                    f"shard {shard} on {self._label} stores bodies as {body_type}, not {wanted}: "
                    f"this database belongs to another backend"
                )
            if not relations >= required_relations(self.backend) or BODY_INDEX_UNSET in relations:
                todo.append(shard)  # a relation missing, or an earlier release's body index (fastupdate turned off)
        return todo

    def _cannot_create_hstore(self, exc: BaseException) -> NotProvisioned:
        return NotProvisioned(
            f"cannot create the hstore extension in {self._label}: {scrub(str(exc), self._secret)} "
            "(install it as a superuser: CREATE EXTENSION hstore)"
        )

    def _stats(self, raw: Mapping[str, int]) -> dict[str, Any]:
        return {
            "pool_max": self._options.pool_max,
            "size": raw.get("pool_size", 0),
            "available": raw.get("pool_available", 0),
            "borrowed": self._lent,
            "waiting": self._waiting,  # callers in a checkout now (psycopg_pool's count keeps those that gave up)
            "connection_errors": raw.get("connections_errors", 0),
            "connections_lost": raw.get("connections_lost", 0) + raw.get("returns_bad", 0),
        }


_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_$]*")
_LOGIN_REFUSALS = (
    # (the server's FATAL text at login (libpq passes no SQLSTATE on), the setting, whose name it quotes)
    (re.compile(r'too many connections for role "((?:[^"]|"")*)"'), "role CONNECTION LIMIT", "role"),
    (re.compile(r'too many connections for database "((?:[^"]|"")*)"'), "database CONNECTION LIMIT", "database"),
    (re.compile(r'database "((?:[^"]|"")*)" is not currently accepting connections'), "ALLOW_CONNECTIONS", "database"),
    (re.compile(r'permission denied for database "((?:[^"]|"")*)"'), "CONNECT privilege", "database"),
    (re.compile(r'role "((?:[^"]|"")*)" is not permitted to log in'), "LOGIN", "role"),
    (re.compile(r'password authentication failed for user "((?:[^"]|"")*)"'), "password", "role"),
    (re.compile(r'no pg_hba\.conf entry for host "[^"]*", user "((?:[^"]|"")*)"'), "pg_hba.conf", "role"),
    (re.compile(r'role "((?:[^"]|"")*)" does not exist'), "role missing", "role"),
    (re.compile(r'database "((?:[^"]|"")*)" does not exist'), "database missing", "database"),
)


def _sql_name(name: str) -> str:
    """``name`` as it is written in SQL: as is when it needs no quotes, else a quoted identifier."""
    if _PLAIN_NAME.fullmatch(name):
        return name
    return sql.Identifier(name).as_string(None)


def login_refusal(text: str, label: str, role: str, dbname: str) -> LoginRefused | None:
    """`LoginRefused` if ``text`` (a failed connection's message, password already masked) says the server's
    configuration refuses sessions of this role or database, else None.

    At login libpq passes on the server's FATAL text alone (no SQLSTATE), so its texts are matched: the role's or
    database's CONNECTION LIMIT (53300; this pool has no session of its own then: see ``_Pool._connect``),
    ``ALLOW_CONNECTIONS false``, no CONNECT privilege, a NOLOGIN role, a wrong password, no pg_hba.conf line, a role
    or database that does not exist. ``role`` is the configured user ("" for
    libpq's default, then the name the server gives, if any); the message names the statement that lifts it.
    """
    for pattern, setting, subject in _LOGIN_REFUSALS:
        found = pattern.search(text)
        if found is None:
            continue
        named = found.group(1).replace('""', '"')
        who = named if subject == "role" else role
        database = named if subject == "database" else dbname
        role_sql = _sql_name(who) if who else "<role>"
        db_sql = _sql_name(database)
        said = text[found.start() :].split("\n")[0].strip()
        fix = {
            "role CONNECTION LIMIT": (
                f"the role's CONNECTION LIMIT is 0, or all the sessions it allows are taken (by every process "
                f"logging in as {who!r}). As a superuser: ALTER ROLE {role_sql} CONNECTION LIMIT <n> (-1: no limit), "
                "or lower pool_max of the processes sharing the role"
            ),
            "database CONNECTION LIMIT": (
                f"the database's CONNECTION LIMIT is 0, or all the sessions it allows are taken. As a superuser: "
                f"ALTER DATABASE {db_sql} CONNECTION LIMIT <n> (-1: no limit), or lower pool_max of its clients"
            ),
            "ALLOW_CONNECTIONS": (
                f"the database does not allow connections. As a superuser: ALTER DATABASE {db_sql} "
                "ALLOW_CONNECTIONS true (or point the entry at another database)"
            ),
            "CONNECT privilege": (
                f"the role lacks the CONNECT privilege on the database. As its owner: GRANT CONNECT ON DATABASE "
                f"{db_sql} TO {role_sql}"
            ),
            "LOGIN": f"the role may not log in. As a superuser: ALTER ROLE {role_sql} LOGIN (or use a login role)",
            "password": (
                "the password is wrong for this role, or it has none: correct the entry's password (or the "
                f"PGPASSFILE line libpq reads); as a superuser, ALTER ROLE {role_sql} PASSWORD '...' sets one"
            ),
            "pg_hba.conf": (
                "the server's pg_hba.conf has no line admitting this host, role and database: add one and reload "
                "the server (SELECT pg_reload_conf()), or connect as a role it admits"
            ),
            "role missing": (
                f"no such role on this server: check user in the connection settings, or create it as a superuser "
                f"(CREATE ROLE {role_sql} LOGIN PASSWORD '...'); hypervault creates schemas, not databases or roles"
            ),
            "database missing": (
                f"no such database on this server: check dbname in the connection settings, or create it "
                f"(CREATE DATABASE {db_sql}); hypervault creates schemas, not databases or roles"
            ),
        }[setting]
        shown_role = f"role {who!r}" if who else "the connecting role (libpq's default user)"
        return LoginRefused(
            f"PostgreSQL server {label} refuses every session of {shown_role} on database {database!r} ({said}): {fix}",
            server=label,
            role=who,
            database=database,
            setting=setting,
        )
    return None


_SHARD_SCHEMA = re.compile(r"\bshard(\d{4,})\b")


def named_shard(exc: psycopg.Error) -> int | None:
    """The shard whose schema a server error names (its schema field, else its message: ``relation
    "shard0003.entities" does not exist``, ``permission denied for schema shard0003``), or None."""
    diag = exc.diag
    for text in (diag.schema_name, diag.message_primary):
        found = _SHARD_SCHEMA.search(text or "")
        if found is not None:
            return int(found.group(1))
    return None


DENIED_SHARD_SQL = (
    "SELECT u.n FROM unnest(%s::text[]) WITH ORDINALITY AS u(n, i) WHERE CASE "
    "WHEN pg_catalog.to_regnamespace(u.n) IS NULL THEN false "
    "WHEN NOT pg_catalog.has_schema_privilege(u.n, 'USAGE') THEN true "
    f"WHEN pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', u.n, '{TABLE}')) IS NULL THEN false "
    "ELSE NOT (SELECT pg_catalog.bool_and(pg_catalog.has_table_privilege("
    f"pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', u.n, '{TABLE}')), p)) FROM unnest(%s::text[]) AS p) "
    "END ORDER BY u.i LIMIT 1"
)
"""The first of these shard schemas (``%s``: text[]) where the connected role lacks USAGE, or one of the table
privileges (``%s``: text[]) on its table: which shard refused a statement over several (the server's "permission
denied for table entities" names no schema)."""


def _shards_text(shards: Sequence[int]) -> str:
    shown = ", ".join(str(s) for s in shards[:8]) + (", ..." if len(shards) > 8 else "")
    return f"one of shards {shown}"


# SQLSTATE classes a trigger, function or expression the user added raises (hypervault's own statements bind checked
# values, so these come from the database's additions): P0 PL/pgSQL RAISE, 22 data exception (a cast, a division by
# zero), 21 cardinality (a subquery of one row), 20 CASE not found, 2F SQL routine (no RETURN), 38 external
# routine, 39 external routine invocation (trigger protocol), 09 triggered action, 27 triggered data change
_RAISED_CLASSES = frozenset({"P0", "22", "21", "20", "2F", "38", "39", "09", "27"})

_TIME_LIMITS = {"57014": ("statement timeout", "statement_timeout"), "55P03": ("lock timeout", "lock_timeout")}


def statement_error(
    exc: psycopg.Error, label: str, shard_id: int | None, shards: Sequence[int] = ()
) -> HypervaultError | None:
    """The typed error of a statement the server refused for a reason of the database's own making, else None:
    `StatementTimeout` (the server's statement_timeout or lock_timeout cancelled it), `ConstraintViolation` (a
    constraint of class 23 but a unique one), `ServerError` (a trigger or function raised: `_RAISED_CLASSES`, e.g. P0
    RAISE, 22 a cast or division by zero). The server's
    message, detail and hint are kept, with the SQLSTATE, the server and the shard (a constraint's detail, which
    shows the row's values, stays on the psycopg error, the ``__cause__``: bodies are user data). ``shards``
    (several): the statements covered these and the server named none of them (a trigger's error names no
    table), so all are named and ``shard_id`` is None."""
    state = exc.sqlstate or ""
    diag = exc.diag
    primary = diag.message_primary or str(exc).strip()
    if len(shards) > 1:
        shard_id, shown = None, _shards_text(shards)
    else:
        shown = f"shard {shard_id} (schema {shard_schema(shard_id)})" if shard_id is not None else ""
    where = f"{shown} on " if shown else ""
    limit = _TIME_LIMITS.get(state)
    if limit is not None and limit[0] in primary:
        setting = limit[1]
        shard = f" on {shown}" if shown else ""
        return StatementTimeout(
            f"PostgreSQL server {label} cancelled a statement{shard} at its {setting} ({state}: "
            f"{primary}); the statement was rolled back. The setting comes from the role, the database or the "
            f"connection options (SHOW {setting}): raise it (ALTER ROLE/DATABASE ... SET {setting} = ...), or set "
            f"it in the server entry (options = '-c {setting}=...')",
            setting=setting,
            sqlstate=state,
            server=label,
            shard_id=shard_id,
        )
    details: tuple[tuple[str, str | None], ...] = (("detail", diag.message_detail), ("hint", diag.message_hint))
    if state[:2] == "23" and state != "23505":
        kind: type[ServerError] = ConstraintViolation
        why = "a constraint of the shard's table refused the data"
        details = details[1:]  # the detail shows the row's values (user data): kept on the psycopg error only
    elif state[:2] in _RAISED_CLASSES:
        kind = ServerError
        why = "a trigger or function of the database raised"
    else:
        return None
    extra = "".join(f"; {name}: {text}" for name, text in details if text)
    return kind(
        f"{why} on {where}PostgreSQL server {label} ({state}: {primary}{extra}); the statement was rolled back",
        sqlstate=state,
        server=label,
        shard_id=shard_id,
        server_message=primary,
    )


def chained(error: BaseException, exc: BaseException) -> BaseException | None:
    """What a translated ``error`` is raised from: the psycopg error ``exc`` for the errors that keep the server's
    own report (`ServerError`, `StatementTimeout`), else None (no driver traceback for the others)."""
    return exc if isinstance(error, ServerError | StatementTimeout) else None


def refusal_error(
    exc: psycopg.Error, label: str, role: str, shard_id: int | None = None, shards: Sequence[int] = ()
) -> HypervaultError | None:
    """`PermissionDenied` (a privilege ``role`` lacks) or `ReadOnlyServer` (writes refused) for ``exc`` on server
    ``label``, else None: the server is fine and says what to change, so neither is `ServerUnavailable`.

    ``shard_id``: the shard the statement was about, named with its schema (and in the GRANT to run); ``shards``
    (several): the statement covered these and the server did not say which refused, so they are all named."""
    state = exc.sqlstate
    if state not in (PRIVILEGE_SQLSTATE, READ_ONLY_SQLSTATE):
        return None
    who = f"role {role!r}" if role else "the connecting role (libpq's default user)"
    said = exc.diag.message_primary or str(exc)
    if len(shards) > 1:
        where = f" on {_shards_text(shards)}"
        schema = "shardNNNN"
    elif shard_id is not None:
        schema = shard_schema(shard_id)
        where = f" on shard {shard_id} (schema {schema})"
    else:
        where, schema = "", "shardNNNN"
    if state == READ_ONLY_SQLSTATE:
        return ReadOnlyServer(
            f"PostgreSQL server {label} refuses writes ({said}): the database or {who} is read-only "
            "(default_transaction_read_only), or this is a standby; nothing was written. Point the entry at the "
            "primary, or ALTER DATABASE/ROLE ... SET default_transaction_read_only = off"
        )
    grantee = _sql_name(role) if role else "<role>"
    return PermissionDenied(
        f"PostgreSQL server {label} refused {who}{where}: {said}. The role running `hv init` (provision, "
        f"migrations, moves) needs CREATE on the database (GRANT CREATE ON DATABASE <db> TO {grantee}); an "
        f"application role needs, for each shard schema, GRANT USAGE ON SCHEMA {schema} TO {grantee} and GRANT "
        f"SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {grantee}"
    )
