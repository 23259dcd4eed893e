"""Transactions on one shard of a memory server: the same contract as PostgreSQL's, as far as memory can.

A transaction keeps its writes to itself (a dict of key → record, or None for a deletion) over the shard's
committed table, and applies them all at once, under the server's lock, when it commits: a rollback drops them, so
it really undoes, and no other reader ever sees them before the commit (no dirty reads). Savepoints are copies of
that write set. Isolation, compared with PostgreSQL's:

- ``read committed`` (and None, the default): each read sees what is committed at that moment, with the
  transaction's own writes on top. Two transactions writing the same key: the last commit wins, whole records (on
  PostgreSQL the second waits for the first and a merge applies to the newest version).
- ``repeatable read`` and ``serializable``: reads see a copy of the shard taken when the transaction began; a key
  that this transaction writes and another one committed meanwhile makes the commit fail with
  `TransactionConflict` (first committer wins, as PostgreSQL's repeatable read). Read sets are not tracked, so
  ``serializable`` gives no more than that here (a write skew PostgreSQL would refuse goes through).

Unique secondary indexes are checked at each write against what the transaction sees, and again at the commit
against what is committed by then (`DuplicateValue`, nothing applied).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from hvbackend_memory import AsyncMemoryCursor, MemoryConnection, MemoryCursor, MemoryIndexes
from hvcore._backend import QuerySpec, Record
from hvcore._key import Key
from hvcore.errors import TransactionConflict

if TYPE_CHECKING:
    from hvbackend_memory import MemoryServerStore

__all__ = ["AsyncMemoryTransaction", "MemoryTransaction", "TransactionCursor"]

_SNAPSHOT_LEVELS = frozenset({"repeatable read", "serializable"})


class _View(Mapping[int, Record]):
    """A shard as a transaction sees it: its writes (None: deleted) over a table of committed records."""

    def __init__(self, base: Mapping[int, Record], writes: Mapping[int, Record | None]) -> None:
        self._base = base
        self._writes = writes

    def __getitem__(self, key: int) -> Record:
        if key in self._writes:
            record = self._writes[key]
            if record is None:
                raise KeyError(key)
            return record
        return self._base[key]

    def __iter__(self) -> Iterator[int]:
        writes = self._writes
        for key in list(self._base):  # a copy: other threads may commit meanwhile
            if key not in writes:
                yield key
        for key, record in list(writes.items()):
            if record is not None:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)


class TransactionCursor(MemoryCursor):
    """A `MemoryCursor` whose ``rows()`` read the shard as its transaction sees it."""

    def __init__(self, connection: MemoryConnection, transaction: MemoryTransaction) -> None:
        super().__init__(connection)
        self.transaction = transaction

    def rows(self) -> list[Record]:
        """Every record of the shard as the transaction sees it, in key order (copies)."""
        return list(self.transaction.query(QuerySpec()))


class MemoryTransaction:
    """One transaction on one shard of a `MemoryServerStore` (see the module docstring for its isolation)."""

    def __init__(
        self,
        server: MemoryServerStore,
        conn: MemoryConnection,
        shard_id: int,
        isolation_level: str | None,
        read_only: bool,
    ) -> None:
        self._server = server
        self._conn = conn
        self.shard_id = shard_id
        self.isolation_level = isolation_level
        self.read_only = read_only
        self._table = server._table(shard_id)
        self._snapshot: dict[int, Record] | None = None
        if isolation_level in _SNAPSHOT_LEVELS:
            with server._lock:
                self._snapshot = dict(self._table)
        self._writes: dict[int, Record | None] = {}
        self._inserted: set[int] = set()
        self._view = _View(self._snapshot if self._snapshot is not None else self._table, self._writes)
        self._savepoints = itertools.count(1)
        self.done = False
        server._log("memory begin shard=%s isolation=%s read_only=%s", shard_id, isolation_level, read_only)

    @staticmethod
    def _copy(key: Key, record: Record) -> Record:
        return Record(key, record.kind, copy.deepcopy(record.data))

    def insert(self, key: Key, kind: int, data: Mapping[str, Any]) -> bool:
        """Store one entity in the write set; False if the key is taken (committed or written here)."""
        number = int(key)
        if number in self._view or number in self._table:
            return False
        record = Record(key, kind, self._server._stored_body(data))
        MemoryIndexes(self._server).check_unique(self.shard_id, self._view, [record])
        self._writes[number] = record
        self._inserted.add(number)
        self._server._log("memory tx insert shard=%s id=%s kind=%s", self.shard_id, number, kind)
        return True

    def insert_many(self, rows: Sequence[tuple[Key, int, Mapping[str, Any]]]) -> bool:
        """Store every row in the write set or none; False if a key is taken."""
        records = [Record(key, kind, self._server._stored_body(data)) for key, kind, data in rows]
        numbers = [int(r.key) for r in records]
        if len(set(numbers)) != len(numbers) or any(n in self._view or n in self._table for n in numbers):
            return False
        MemoryIndexes(self._server).check_unique(self.shard_id, self._view, records)
        for number, record in zip(numbers, records, strict=True):
            self._writes[number] = record
            self._inserted.add(number)
        self._server._log("memory tx insert_many shard=%s rows=%s", self.shard_id, len(records))
        return True

    def fetch(self, key: Key) -> Record | None:
        """A copy of the record as the transaction sees it, or None."""
        record = self._view.get(int(key))
        return None if record is None else self._copy(key, record)

    def fetch_many(self, keys: Sequence[Key]) -> list[Record]:
        """Copies of the records of these keys as the transaction sees them."""
        found = ((key, self._view.get(int(key))) for key in keys)
        return [self._copy(key, record) for key, record in found if record is not None]

    def update(self, key: Key, data: Mapping[str, Any], *, merge: bool) -> bool:
        """Merge into or replace a body, in the write set; False if the key is not stored."""
        number = int(key)
        record = self._view.get(number)
        if record is None:
            return False
        body = self._server._stored_body(data)
        updated = Record(record.key, record.kind, {**record.data, **body} if merge else body)
        MemoryIndexes(self._server).check_unique(self.shard_id, self._view, [updated])
        self._writes[number] = updated
        self._server._log("memory tx update shard=%s id=%s merge=%s", self.shard_id, number, merge)
        return True

    def delete(self, key: Key) -> bool:
        """Delete in the write set; False if the key is not stored."""
        number = int(key)
        if number not in self._view:
            return False
        self._writes[number] = None
        self._server._log("memory tx delete shard=%s id=%s", self.shard_id, number)
        return True

    def query(self, spec: QuerySpec) -> Iterator[Record]:
        """Matching records as the transaction sees them, in key order (copies)."""
        text = self._server.text_only
        found = (r for _, r in sorted(self._view.items()) if spec.matches(r, text_values=text))
        for record in found if spec.limit is None else itertools.islice(found, spec.limit):
            yield self._copy(record.key, record)

    @contextmanager
    def cursor(self) -> Iterator[TransactionCursor]:
        """A cursor reading the shard as the transaction sees it (``rows()``); it runs no SQL."""
        yield TransactionCursor(self._conn, self)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A copy of the write set, put back if an exception leaves the block."""
        number = next(self._savepoints)
        saved, inserted = dict(self._writes), set(self._inserted)
        self._server._log("memory savepoint %s shard=%s", number, self.shard_id)
        try:
            yield
        except BaseException:
            self._writes.clear()
            self._writes.update(saved)
            self._inserted = inserted
            self._server._log("memory rollback to savepoint %s shard=%s", number, self.shard_id)
            raise

    def aborted(self) -> bool:
        """Never: the memory backend leaves nothing half-done (the façade tracks errors)."""
        return False

    def commit(self) -> None:
        """Apply the write set at once; `TransactionConflict` or `DuplicateValue` (nothing applied) if it cannot."""
        server, table, writes = self._server, self._table, self._writes
        with server._lock:
            if self._snapshot is not None:
                changed = [k for k in writes if table.get(k) is not self._snapshot.get(k)]
            else:
                changed = [k for k in self._inserted if k in table]
            if changed:
                raise TransactionConflict(
                    f"the transaction on shard {self.shard_id} of {server.label} was rolled back: key(s) "
                    f"{sorted(changed)[:5]} were written by another transaction committed since this one read or "
                    f"wrote them ({self.isolation_level or 'read committed'}): run it again"
                )
            records = [r for r in writes.values() if r is not None]
            if records:
                MemoryIndexes(server).check_unique(self.shard_id, _View(table, writes), records)
            for number, record in writes.items():
                if record is None:
                    table.pop(number, None)
                else:
                    table[number] = record
        self.done = True
        server._log("memory commit shard=%s writes=%s", self.shard_id, len(writes))

    def rollback(self) -> None:
        """Drop the write set."""
        if not self.done:
            self.done = True
            self._writes.clear()
            self._server._log("memory rollback shard=%s", self.shard_id)


@contextmanager
def memory_transaction(
    server: MemoryServerStore, conn: MemoryConnection, shard_id: int, isolation_level: str | None, read_only: bool
) -> Iterator[MemoryTransaction]:
    """A transaction on a borrowed pretend connection: committed when the block ends, else rolled back."""
    tx = MemoryTransaction(server, conn, shard_id, isolation_level, read_only)
    try:
        yield tx
        tx.commit()
    finally:
        tx.rollback()


class AsyncMemoryTransaction:
    """The asyncio face of `MemoryTransaction` (nothing here waits)."""

    def __init__(self, sync: MemoryTransaction) -> None:
        self.sync = sync

    async def insert(self, key: Key, kind: int, data: Mapping[str, Any]) -> bool:
        """As the sync transaction."""
        return self.sync.insert(key, kind, data)

    async def insert_many(self, rows: Sequence[tuple[Key, int, Mapping[str, Any]]]) -> bool:
        """As the sync transaction."""
        return self.sync.insert_many(rows)

    async def fetch(self, key: Key) -> Record | None:
        """As the sync transaction."""
        return self.sync.fetch(key)

    async def fetch_many(self, keys: Sequence[Key]) -> list[Record]:
        """As the sync transaction."""
        return self.sync.fetch_many(keys)

    async def update(self, key: Key, data: Mapping[str, Any], *, merge: bool) -> bool:
        """As the sync transaction."""
        return self.sync.update(key, data, merge=merge)

    async def delete(self, key: Key) -> bool:
        """As the sync transaction."""
        return self.sync.delete(key)

    async def query(self, spec: QuerySpec) -> AsyncIterator[Record]:
        """As the sync transaction."""
        for record in self.sync.query(spec):
            yield record

    @asynccontextmanager
    async def cursor(self) -> AsyncIterator[AsyncMemoryCursor]:
        """As the sync transaction, shaped as psycopg's ``AsyncCursor`` (`AsyncMemoryCursor`)."""
        with self.sync.cursor() as cur:
            yield AsyncMemoryCursor(cur)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """As the sync transaction."""
        with self.sync.savepoint():
            yield

    def aborted(self) -> bool:
        """As the sync transaction."""
        return self.sync.aborted()
