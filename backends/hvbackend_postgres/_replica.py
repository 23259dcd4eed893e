"""The SQL a read replica setup needs from a PostgreSQL server: its WAL position, primary or standby alike."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from psycopg import pq

from hvbackend_postgres._onetrip import until_sync
from hvcore._replicas import settle_lsn

__all__ = ["WAL_AFTER_WRITE_SQL", "WAL_POSITION_SQL", "position_after_write", "until_second_sync", "wal_position_of"]

WAL_POSITION_SQL = (
    "SELECT pg_is_in_recovery(),"
    " coalesce((CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END)"
    " - '0/0'::pg_lsn, 0)::int8,"
    " current_setting('wal_block_size')::int4"
)
"""One row: in recovery (a standby), the WAL position in bytes (a primary's insert position, a standby's last
replayed one, 0 if it replayed nothing yet), the WAL block size. ``pg_current_wal_insert_lsn()`` rather than
``pg_current_wal_lsn()``: a commit's record is inserted before the commit is visible, but may not be written yet
(``synchronous_commit = off``)."""


def wal_position_of(row: tuple[Any, ...] | None) -> tuple[bool, int]:
    """``(in_recovery, lsn)`` from a `WAL_POSITION_SQL` row (a primary's position settled over a page header)."""
    if row is None:  # pragma: no cover - the query always returns one row
        return False, 0
    in_recovery, lsn, block_size = bool(row[0]), int(row[1]), int(row[2])
    return in_recovery, lsn if in_recovery else settle_lsn(lsn, block_size)


WAL_AFTER_WRITE_SQL = (
    b"SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8, current_setting('wal_block_size')::int4"
)
"""A primary's WAL insert position and block size, sent after a write's Sync in the same pipeline (read-your-writes
with standbys): it runs once the write's transaction has committed, so the position is past the commit record."""


def until_second_sync(
    pgconn: pq.abc.PGconn, box: list[pq.abc.PGresult], tail: list[pq.abc.PGresult]
) -> Generator[Any, Any, None]:
    """`until_sync` for a write (its results into ``box``), then the results up to the next Sync into ``tail``."""
    yield from until_sync(pgconn, box)
    yield from until_sync(pgconn, tail)


def position_after_write(tail: list[pq.abc.PGresult]) -> int | None:
    """The WAL position in bytes a `WAL_AFTER_WRITE_SQL` result gives (settled over a page header), or None."""
    for result in tail:
        if result.status == pq.ExecStatus.TUPLES_OK and result.ntuples == 1:
            lsn, block_size = result.get_value(0, 0), result.get_value(0, 1)
            if lsn is not None and block_size is not None:
                return settle_lsn(int(lsn), int(block_size))
    return None
