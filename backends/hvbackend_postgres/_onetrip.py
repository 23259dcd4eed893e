"""One write statement and the Sync that commits it, in one write to the socket (see `_commit`).

psycopg's ``Connection.pipeline()`` can send the same messages, but its bookkeeping (entering and leaving the
pipeline, a sync per block, results attached to cursors) cost more than the statement itself here (measured:
+100 % on a healthy put, benchmarks/bench_commit_status.py), and the results of a statement whose connection dies
before the Sync's reply are dropped with the exception. This module drives libpq's pipeline directly, as psycopg's
own generators do: Parse (first use on a connection, unless statements are not prepared there) / Bind / Execute,
Sync; then every result up to the Sync's, each kept in ``box`` as it arrives (the statement's row, its transaction
id, comes in the same packet as the commit's reply; no Flush asks for it earlier: a second packet per write).
"""

from __future__ import annotations

import re
import weakref
import zlib
from collections.abc import Generator
from typing import Any

import psycopg
from psycopg import errors, generators, pq

__all__ = ["PIPELINE", "PreparedNames", "dollar_params", "error_in", "until_sync"]

PIPELINE = psycopg.Pipeline.is_supported()  # libpq 14 or later (the binary wheels ship a recent one)

_PARAM = re.compile(r"%(s|%)")


def dollar_params(statement: str) -> tuple[bytes, int]:
    """``statement`` with psycopg's ``%s`` placeholders as ``$1, $2 ...`` (``%%`` as ``%``), encoded; and their count.

    Only our own statements pass here (rendered from `psycopg.sql` compositions): anything else after a ``%`` is
    refused rather than guessed at.
    """
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        if match.group(1) == "%":
            return "%"
        count += 1
        return f"${count}"

    converted = _PARAM.sub(number, statement)
    stray = statement.count("%") - sum(2 if found == "%" else 1 for found in _PARAM.findall(statement))
    if stray:
        raise ValueError(f"a placeholder other than %s in {statement!r}")
    return converted.encode(), count


def until_sync(pgconn: pq.abc.PGconn, box: list[pq.abc.PGresult]) -> Generator[Any, Any, None]:
    """Flush what was queued, then read every result up to the Sync's, appending each to ``box`` as it arrives."""
    yield from generators.send(pgconn)
    while True:
        results = yield from generators.fetch_many(pgconn)
        if results and results[0].status == pq.ExecStatus.PIPELINE_SYNC:
            return
        box.extend(results)


def error_in(box: list[pq.abc.PGresult], encoding: str) -> errors.Error | None:
    """The first error the server sent among these results, as psycopg's exception class for its SQLSTATE."""
    for result in box:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            return errors.error_from_result(result, encoding=encoding)
    return None


class PreparedNames:
    """Which of our write statements each connection has prepared (forgotten with the connection)."""

    def __init__(self) -> None:
        self._by_conn: weakref.WeakKeyDictionary[Any, set[bytes]] = weakref.WeakKeyDictionary()

    @staticmethod
    def name(statement: bytes) -> bytes:
        """The server-side name of a statement: ``hv_w_`` and a checksum of its text."""
        return b"hv_w_%08x_%d" % (zlib.crc32(statement), len(statement))

    def known(self, conn: Any, name: bytes) -> bool:
        """True if ``conn`` prepared ``name`` already."""
        names = self._by_conn.get(conn)
        return names is not None and name in names

    def add(self, conn: Any, name: bytes) -> None:
        """Record that ``conn`` prepared ``name``."""
        self._by_conn.setdefault(conn, set()).add(name)

    def forget(self, conn: Any) -> None:
        """Forget every statement of ``conn`` (its session dropped them: DISCARD ALL, DEALLOCATE, a new server)."""
        self._by_conn.pop(conn, None)
