"""A transaction bound to one shard: the shard's schema first on the search path, for that transaction only.

``SET LOCAL`` lasts until the transaction ends, so the binding holds through PgBouncer in transaction mode (where a
plain ``SET`` would stay with a server session another client gets next) and never leaks into a pooled connection.
Migrations run every file in such a transaction per shard; a transaction API on one shard can bind the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from hvbackend_postgres._schema import shard_schema

__all__ = ["shard_search_path", "shard_transaction"]


def shard_search_path(shard_id: int, ext: str | None, *, local: bool = True) -> sql.Composed:
    """``SET LOCAL search_path`` to a shard's schema, then the extension's (``SET`` for the session if not local)."""
    return sql.SQL("SET {local}search_path = {schema}, {ext}").format(
        local=sql.SQL("LOCAL " if local else ""),
        schema=sql.Identifier(shard_schema(shard_id)),
        ext=sql.Identifier(ext or "public"),
    )


@contextlib.contextmanager
def shard_transaction(
    conn: psycopg.Connection[Any], shard_id: int, ext: str | None
) -> Iterator[psycopg.Connection[Any]]:
    """A transaction (a savepoint if one is open) on ``conn`` with ``shard_id``'s schema first on the search path;
    committed when the block ends, rolled back on an exception."""
    with conn.transaction():
        conn.execute(shard_search_path(shard_id, ext))
        yield conn
