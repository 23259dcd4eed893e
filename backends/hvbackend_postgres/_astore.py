"""`AsyncPostgresServerStore`: the asyncio face of `PostgresServerStore`, running its blocking I/O in worker threads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg

from hvbackend_postgres._store import PostgresServerStore
from hvcore._backend import BackendOptions, ProvisionReport, QuerySpec, Record
from hvcore._key import Key

__all__ = ["AsyncPostgresServerStore"]

_END = object()


class AsyncPostgresServerStore:
    """The same store for `AsyncDatastore`: every method awaitable, the event loop never blocked.

    Each call runs the sync store's code in the loop's default executor (one thread per call in flight), so
    pools, checks, retries and errors are exactly those of `PostgresServerStore`.
    """

    __module__ = "hvbackend_postgres"

    def __init__(self, settings: Mapping[str, Any], options: BackendOptions, *, backend: str = "jsonb") -> None:
        self.sync = PostgresServerStore(settings, options, backend=backend)

    @property
    def label(self) -> str:
        """``host:port/dbname``, never a password."""
        return self.sync.label

    def __repr__(self) -> str:
        return repr(self.sync).replace("<PostgresServerStore", "<AsyncPostgresServerStore", 1)

    async def open(self) -> None:
        """Create the pool (connections are made on first use)."""
        await asyncio.to_thread(self.sync.open)

    async def close(self) -> None:
        """Close the pool."""
        await asyncio.to_thread(self.sync.close)

    def after_fork_in_child(self) -> None:
        """As the sync store."""
        self.sync.after_fork_in_child()

    def check_data(self, data: Mapping[str, Any]) -> None:
        """As the sync store (no I/O)."""
        self.sync.check_data(data)

    async def get_connection(self, shard_id: int) -> psycopg.Connection[Any]:
        """Borrow a (blocking) psycopg connection in the shard's schema; use it from a thread."""
        return await asyncio.to_thread(self.sync.get_connection, shard_id)

    async def put_connection(self, conn: Any) -> None:
        """Return a borrowed connection."""
        await asyncio.to_thread(self.sync.put_connection, conn)

    def owns(self, conn: Any) -> bool:
        """True if ``conn`` is borrowed from this store right now."""
        return self.sync.owns(conn)

    @asynccontextmanager
    async def cursor(self, shard_id: int) -> AsyncIterator[psycopg.Cursor[Any]]:
        """A cursor in the shard's schema: commit on success, rollback on error, connection always returned."""
        conn = await self.get_connection(shard_id)
        try:
            with conn.cursor() as cur:
                yield cur
            await asyncio.to_thread(conn.commit)
        except BaseException:
            if not conn.closed:
                try:
                    await asyncio.to_thread(conn.rollback)
                except psycopg.Error:
                    conn.close()
            raise
        finally:
            await self.put_connection(conn)

    async def insert(self, shard_id: int, key: Key, kind: int, data: Mapping[str, Any]) -> None:
        """As the sync store."""
        await asyncio.to_thread(self.sync.insert, shard_id, key, kind, data)

    async def fetch(self, shard_id: int, key: Key) -> Record | None:
        """As the sync store."""
        return await asyncio.to_thread(self.sync.fetch, shard_id, key)

    async def insert_many(self, shard_id: int, rows: Sequence[tuple[Key, int, Mapping[str, Any]]]) -> None:
        """As the sync store."""
        await asyncio.to_thread(self.sync.insert_many, shard_id, rows)

    async def fetch_many(self, items: Sequence[tuple[int, Key]]) -> list[Record]:
        """As the sync store."""
        return await asyncio.to_thread(self.sync.fetch_many, items)

    async def update(self, shard_id: int, key: Key, data: Mapping[str, Any], *, merge: bool) -> bool:
        """As the sync store."""
        return await asyncio.to_thread(lambda: self.sync.update(shard_id, key, data, merge=merge))

    async def delete(self, shard_id: int, key: Key) -> bool:
        """As the sync store."""
        return await asyncio.to_thread(self.sync.delete, shard_id, key)

    async def query(self, shard_ids: Sequence[int], spec: QuerySpec) -> AsyncIterator[Record]:
        """As the sync store, each batch of rows fetched in a worker thread."""
        stream = self.sync.query(shard_ids, spec)
        try:
            while True:
                record = await asyncio.to_thread(next, stream, _END)
                if record is _END:
                    return
                assert isinstance(record, Record)
                yield record
        finally:
            await asyncio.to_thread(stream.close)

    async def provision(
        self, shard_ids: Sequence[int], progress: Callable[[int], None] | None = None
    ) -> ProvisionReport:
        """As the sync store."""
        return await asyncio.to_thread(self.sync.provision, shard_ids, progress)

    async def row_counts(self, shard_ids: Sequence[int]) -> dict[int, int]:
        """As the sync store."""
        return await asyncio.to_thread(self.sync.row_counts, shard_ids)

    def stats(self) -> dict[str, Any]:
        """As the sync store."""
        return self.sync.stats()
