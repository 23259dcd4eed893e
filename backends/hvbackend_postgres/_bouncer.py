"""What the stores do about a pooler in front of the server, and about connections user code had (no I/O here).

PgBouncer in transaction mode (``pool_mode = transaction``) hands each transaction of a client connection to any
of its server sessions, so nothing tied to a session follows the client: a ``SET`` (``search_path`` included),
a prepared statement (psycopg prepares a query automatically after ``prepare_threshold`` = 5 runs: ``_pg3_N``),
an advisory lock. The stores therefore, behind such a pooler (``pgbouncer="transaction"``, or detected by
``"auto"``): never prepare (``prepare_threshold=None``), qualify their own statements with the shard's schema
(they always do), and bind ``cursor(shard)`` / ``get_connection(shard)`` to the shard with ``SET LOCAL
search_path`` inside the borrowed transaction, which is then the one transaction the block runs.

Connections that user code had (``cursor()``, ``get_connection()``) come back clean: an open transaction is rolled
back, then `RESET_SQL` undoes what a session can keep (run-time settings, role and session authorization, cursors,
LISTEN, advisory locks, temporary tables), and the psycopg attributes the user may have changed are restored.
Behind a transaction-mode pooler a session reset would reach whichever server session comes next, so `cursor()`
runs it as the last statement of the block's own transaction (a ``SET`` made in it is undone at commit) and
`put_connection` rolls back. The store's own statements change no session state and skip the reset.

How "auto" decides (`pooler_possible`, `pooling_from_pids`): the first connection of a store asks the server for
the port it was reached on (``inet_server_port()``): a direct TCP connection sees its own port, and the store
stops there ("off"). Otherwise (another port: a pooler or a port mapping; a Unix socket) a second, short-lived
connection asks for ``pg_backend_pid()`` in turn with the first one, `DETECT_ROUNDS` times: two client connections
served by the same server process, or one client connection moving between server processes, is transaction
pooling (PgBouncer reuses the most recently released server connection first, so this shows at once); neither
is a pooler in session mode, or none ("session": treated as direct). A probe that fails or gets no answer within
`DETECT_TIMEOUT` says "transaction", the mode that is correct behind either kind of pooler. Name the mode in the
server entry where it is known: detection cannot see a pooler listening on its server's port number on another
host, and a pooler that hands out its server connections round-robin only shows through the moving pid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import pq

__all__ = [
    "BACKEND_PID_SQL",
    "DETECT_ROUNDS",
    "DETECT_TIMEOUT",
    "POOLER_HINT_SQL",
    "RESET_SQL",
    "SEARCH_PATH_LOCAL_SQL",
    "client_endpoint",
    "pooler_possible",
    "pooling_from_pids",
    "transaction_mode_kwargs",
]

RESET_SQL = (
    "RESET ALL; SET SESSION AUTHORIZATION DEFAULT; CLOSE ALL; UNLISTEN *; "
    "SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP"
)
"""What a session of user code is reset with before reuse: one round trip (simple protocol, several statements).

``RESET ALL`` restores every run-time setting (``statement_timeout``, ``default_transaction_read_only``,
``synchronous_commit``, ``search_path``...) to the session's defaults (ALTER ROLE/DATABASE ones included); ``SET
SESSION AUTHORIZATION DEFAULT`` ends a ``SET ROLE`` and a ``SET SESSION AUTHORIZATION`` (allowed for any user:
it returns to the authenticated one); then cursors, LISTEN registrations, session advisory locks and temporary
tables. It is ``DISCARD ALL`` without ``DEALLOCATE ALL``, so psycopg's own prepared statements stay valid (and,
unlike ``DISCARD ALL``, it can run inside a transaction: `cursor()` behind a transaction-mode pooler does that).
"""
SEARCH_PATH_LOCAL_SQL = (
    "SELECT pg_catalog.set_config('search_path', %s, true), pg_catalog.to_regnamespace(%s) IS NOT NULL"
)
"""``SET LOCAL search_path`` (until the transaction ends) and whether the shard's schema exists: one round trip."""
POOLER_HINT_SQL = "SELECT pg_catalog.inet_server_port()"
BACKEND_PID_SQL = "SELECT pg_catalog.pg_backend_pid()"
DETECT_ROUNDS = 3
"""Rounds of the "auto" probe: each asks both client connections for their server process."""
DETECT_TIMEOUT = 1.0
"""Seconds the probe connection waits for an answer: a pooler in session mode whose server connections are all
taken makes it wait, and so may a busy one in transaction mode; it then says "transaction" (safe behind both)."""


def client_endpoint(pgconn: pq.abc.PGconn) -> tuple[str, int | None]:
    """The host (or socket directory) and port a libpq connection was made to."""
    host = pgconn.host.decode("utf-8", "replace") if pgconn.host else ""
    try:
        port: int | None = int(pgconn.port.decode()) if pgconn.port else None
    except ValueError:
        port = None
    return host, port


def pooler_possible(host: str, port: int | None, server_port: int | None) -> bool:
    """False only when the client reached the server directly over TCP: the server was reached on the client's port.

    ``host``/``port``: what the client connected to; ``server_port``: ``inet_server_port()`` (NULL over a socket).
    A Unix socket (``host`` a directory) may lead to a pooler too, so it is "possible".
    """
    if host.startswith("/") or not host:
        return True
    return server_port is None or port is None or server_port != port


def pooling_from_pids(own: Sequence[int], other: Sequence[int]) -> str:
    """``"transaction"`` if the two connections shared a server process, or ``own`` moved between processes; else
    ``"session"``. ``own``/``other``: ``pg_backend_pid()`` seen by each client connection, round by round."""
    if len(set(own)) > 1 or set(own) & set(other):
        return "transaction"
    return "session"


def transaction_mode_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Connection arguments for a transaction-mode pooler: psycopg never prepares a statement."""
    return {**kwargs, "prepare_threshold": None}
