"""The SQL a read replica setup needs from a PostgreSQL server: its WAL position, primary or standby alike."""

from __future__ import annotations

from typing import Any

from hvcore._replicas import settle_lsn

__all__ = ["WAL_POSITION_SQL", "wal_position_of"]

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
