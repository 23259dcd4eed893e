"""Benchmark the Datastore against the peers a user would pick instead, on the same servers and schemas.

Usage: ``python benchmarks/bench_peers.py [--quick] [--json PATH]``. Starts two throwaway PostgreSQL servers (system
binaries, fsync on, ``synchronous_commit = off`` so the figures show client CPU and round trips rather than the disk),
provisions 16 logical shards (``shard0000``..``shard0015``, 8 per server, jsonb bodies) and measures, for put, get,
put_many, get_many and a time-range query:

- **hypervault**: `Datastore` (client-side keys);
- **psycopg** (the floor): the same SQL by hand on the Datastore's own pools (one binary COPY for put_many, the same
  per-server ``UNION ALL`` statements for get_many and the range query, servers read one after the other);
- **SQLAlchemy**: ``sqlalchemy.ext.horizontal_shard.ShardedSession`` over one engine per server, each shard a
  ``schema_translate_map`` view of its server's engine (same pool per server), ORM entities, client-side ids from the
  same key generator; get_many is one select per shard (``set_shard_id``), the range query runs on every shard and is
  sorted by id in Python (ShardedSession concatenates the shards' results);
- **server next_id()**: the 2015 library's design, ids made by a PL/pgSQL ``next_id()`` column default
  (``INSERT ... RETURNING id``), for put and put_many only.

Every figure is a median over rounds in which the candidates run in rotating order, so drift hits all alike.
"""

from __future__ import annotations

import argparse
import datetime as dt
import heapq
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _shared import NEXT_ID_SQL, measure
from fixtures.localpg import local_servers

import hvcore
from hvbackend_postgres._schema import ShardSQL

BODY = {"name": "benchmark", "colour": "red", "size": "3"}
SHARDS = 16  # 0-8 on the first server, 8-16 on the second
RANGE_KIND = 7  # the range query's rows, kept apart from the other measurements' rows
BATCH = 1000


CANDIDATES = {
    "psycopg": "raw psycopg, same SQL on the same pools (the floor)",
    "sqlalchemy": "SQLAlchemy ShardedSession (horizontal_shard), same schemas and servers",
    "next_id": "server-side next_id() column default, the 2015 design",
}


def _cycle(items: list[Any]) -> Callable[[], Any]:
    state = [0]

    def next_item() -> Any:
        state[0] = (state[0] + 1) % len(items)
        return items[state[0]]

    return next_item


class SqlAlchemyPeer:
    """The same entities through SQLAlchemy's horizontal sharding extension."""

    def __init__(self, servers: list[dict[str, Any]], shard_map: hvcore.ShardMap, pool_max: int) -> None:
        from sqlalchemy import BigInteger, Column, SmallInteger, create_engine
        from sqlalchemy.dialects.postgresql import JSONB
        from sqlalchemy.ext.horizontal_shard import ShardedSession
        from sqlalchemy.orm import DeclarativeBase, sessionmaker

        class Base(DeclarativeBase):
            pass

        class Entity(Base):  # columns without Mapped[] annotations: imported lazily, SQLAlchemy is a bench extra
            __tablename__ = "entities"
            id = Column(BigInteger, primary_key=True, autoincrement=False)
            kind = Column(SmallInteger, nullable=False)
            body = Column(JSONB, nullable=False)

        self.Entity = Entity
        self.engines = [
            create_engine(
                f"postgresql+psycopg://{s['user']}@{s['host']}:{s['port']}/{s['dbname']}",
                pool_size=pool_max,
                max_overflow=0,
            )
            for s in servers
        ]
        # shard identifiers are the schema names: an int 0 is taken for "no identity token" and reads every shard
        shards = {
            name: self.engines[server].execution_options(schema_translate_map={None: name})
            for name, server in ((f"shard{shard:04d}", server) for shard, server in shard_map)
        }
        self.layout = layout = hvcore.KeyLayout.DEFAULT
        all_shards = list(shards)

        def shard_chooser(mapper: Any, instance: Any, clause: Any = None) -> Any:
            return f"shard{layout.key(instance.id).shard_id:04d}"

        def identity_chooser(mapper: Any, primary_key: Any, **kw: Any) -> Any:
            return [f"shard{layout.key(primary_key[0]).shard_id:04d}"]

        def execute_chooser(context: Any) -> Any:
            return context.execution_options.get("hv_shards", all_shards)

        self.Session = sessionmaker(
            class_=ShardedSession,
            shards=shards,
            shard_chooser=shard_chooser,
            identity_chooser=identity_chooser,
            execute_chooser=execute_chooser,
            expire_on_commit=False,
        )

    def put(self, key: int, kind: int, body: dict[str, Any]) -> None:
        """One entity, one unit of work (add + commit)."""
        with self.Session.begin() as session:
            session.add(self.Entity(id=key, kind=kind, body=body))

    def get(self, key: int) -> Any:
        """One entity by primary key in a fresh session, on the shard the key encodes.

        Without ``identity_token`` ShardedSession.get() asks ``execute_chooser`` and reads every shard (16 selects).
        """
        with self.Session() as session:
            entity = session.get(self.Entity, key, identity_token=f"shard{self.layout.key(key).shard_id:04d}")
            return None if entity is None else (entity.kind, entity.body)

    def put_many(self, shard: int, keys: list[int], kind: int, body: dict[str, Any]) -> None:
        """Many entities of one shard in one unit of work (add_all + commit: batched multi-row INSERTs).

        ShardedSession refuses ORM bulk INSERT ("per-instance sharding not supported in bulk_insert()").
        """
        entity = self.Entity
        with self.Session.begin() as session:
            session.add_all([entity(id=k, kind=kind, body=body) for k in keys])

    def get_many(self, by_shard: dict[int, list[int]]) -> list[Any]:
        """Entities of many keys: one select per shard (the extension routes statements per shard)."""
        from sqlalchemy import select
        from sqlalchemy.ext.horizontal_shard import set_shard_id

        found: list[Any] = []
        with self.Session() as session:
            for shard, ids in by_shard.items():
                stmt = select(self.Entity).where(self.Entity.id.in_(ids)).options(set_shard_id(f"shard{shard:04d}"))
                found.extend(session.scalars(stmt))
        return found

    def range(self, kind: int, low: int, high: int) -> list[Any]:
        """Entities of a key range on every shard (the extension runs it per shard), sorted by key."""
        from sqlalchemy import select

        entity: Any = self.Entity
        stmt = select(entity).where(entity.kind == kind, entity.id >= low, entity.id < high).order_by(entity.id)
        with self.Session() as session:
            return sorted(session.scalars(stmt), key=lambda e: e.id)

    def close(self) -> None:
        """Dispose of the engines' pools."""
        for engine in self.engines:
            engine.dispose()


def _ms(moment: dt.datetime) -> int:
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)


def _new_keys(gen: hvcore.KeyGenerator, shard: int, count: int) -> list[hvcore.Key]:
    keys: list[hvcore.Key] = []
    while len(keys) < count:
        keys += gen.next_keys(shard, min(1024, count - len(keys)))
    return keys


def _fill_range(db: hvcore.Datastore, total: int) -> tuple[dt.datetime, dt.datetime]:
    since = dt.datetime.now(dt.UTC) - dt.timedelta(milliseconds=5)
    per_shard = total // SHARDS
    for shard in range(SHARDS):
        db.put_many(shard, RANGE_KIND, [{"n": str(i), **BODY} for i in range(per_shard)])
    until = dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=5)
    return since, until


def run(quick: bool) -> dict[str, Any]:
    """Measure every operation for every candidate on two fresh local servers; the figures (seconds per op)."""
    ops, rounds = (40, 3) if quick else (300, 15)
    batch_rounds = 3 if quick else 15
    total = 2_000 if quick else 20_000
    batch = 200 if quick else BATCH
    with local_servers(2, fsync=True) as local:
        settings = [s.settings for s in local]
        for server in settings:
            with psycopg.connect(**server, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET synchronous_commit = off")
                conn.execute("SELECT pg_reload_conf()")
        half = SHARDS // 2
        connections = [{**settings[0], "shards": f"0-{half}"}, {**settings[1], "shards": f"{half}-{SHARDS}"}]
        results: dict[str, Any] = {
            "quick": quick,
            "shards": SHARDS,
            "servers": 2,
            "ops_per_block": ops,
            "rounds": rounds,
            "batch": batch,
            "range_rows": total,
            "candidates": CANDIDATES,
        }
        with hvcore.Datastore(connections, backend="jsonb") as db:
            db.provision()
            for shard in range(SHARDS):
                with db.cursor(shard) as cur:
                    cur.execute(NEXT_ID_SQL.format(schema=f"shard{shard:04d}", shard=shard))
            since, until = _fill_range(db, total)
            for server in settings:
                with psycopg.connect(**server, autocommit=True) as conn:
                    conn.execute("ANALYZE")
            peer = SqlAlchemyPeer(settings, db.shard_map, pool_max=10)
            try:
                results.update(_measure_all(db, peer, since, until, ops, rounds, batch, batch_rounds))
            finally:
                peer.close()
    return results


def _measure_all(
    db: hvcore.Datastore,
    peer: SqlAlchemyPeer,
    since: dt.datetime,
    until: dt.datetime,
    ops: int,
    rounds: int,
    batch: int,
    batch_rounds: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    gen = db.generator
    pools = {shard: db.store_for(shard)._pool for shard in range(SHARDS)}  # type: ignore[attr-defined]
    statements = {shard: ShardSQL.build(shard, "jsonb", None) for shard in range(SHARDS)}
    next_shard = _cycle(list(range(SHARDS)))
    old_insert = {s: f"INSERT INTO shard{s:04d}.entities_old (kind, body) VALUES (%s, %s) RETURNING id" for s in pools}

    def hv_put() -> None:
        db.put(next_shard(), 1, **BODY)

    def pg_put() -> None:
        shard = next_shard()
        with pools[shard].connection() as conn:
            conn.execute(statements[shard].insert, (gen.next_key(shard), 1, Jsonb(BODY)))

    def sa_put() -> None:
        shard = next_shard()
        peer.put(int(gen.next_key(shard)), 1, BODY)

    def old_put() -> None:
        shard = next_shard()
        with pools[shard].connection() as conn:
            conn.execute(old_insert[shard], (1, Jsonb(BODY))).fetchone()

    puts = {"hypervault": hv_put, "psycopg": pg_put, "sqlalchemy": sa_put, "next_id": old_put}
    out["put"] = measure(puts, ops, rounds)

    keys = [db.put(shard, 1, **BODY) for shard in range(SHARDS) for _ in range(4)]
    next_key = _cycle(keys)

    def hv_get() -> None:
        assert db.get(next_key()) is not None

    def pg_get() -> None:
        key = next_key()
        shard = key.shard_id
        with pools[shard].connection() as conn:
            assert conn.execute(statements[shard].fetch, (key,)).fetchone() is not None

    def sa_get() -> None:
        assert peer.get(int(next_key())) is not None

    out["get"] = measure({"hypervault": hv_get, "psycopg": pg_get, "sqlalchemy": sa_get}, ops, rounds)

    rows = [BODY] * batch
    copy_sql = {s: f"COPY shard{s:04d}.entities (id, kind, body) FROM STDIN (FORMAT BINARY)" for s in pools}

    def hv_put_many() -> None:
        db.put_many(next_shard(), 1, rows)

    def pg_put_many() -> None:
        shard = next_shard()
        keys = _new_keys(gen, shard, batch)
        with (
            pools[shard].connection() as conn,
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy(copy_sql[shard]) as copy,
        ):
            copy.set_types(["int8", "int2", "jsonb"])
            for key in keys:
                copy.write_row((key, 1, Jsonb(BODY)))

    def sa_put_many() -> None:
        shard = next_shard()
        peer.put_many(shard, [int(k) for k in _new_keys(gen, shard, batch)], 1, BODY)

    def old_put_many() -> None:
        shard = next_shard()
        params = [(1, Jsonb(BODY))] * batch
        with pools[shard].connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(old_insert[shard], params, returning=True)
            ids = []
            while True:
                ids.append(cur.fetchone())
                if not cur.nextset():
                    break
            assert len(ids) == batch

    per_call = measure(
        {"hypervault": hv_put_many, "psycopg": pg_put_many, "sqlalchemy": sa_put_many, "next_id": old_put_many},
        1,
        batch_rounds,
    )
    out["put_many"] = {name: seconds / batch for name, seconds in per_call.items()}  # per row

    many_keys: list[hvcore.Key] = []
    for shard in range(SHARDS):
        many_keys += db.put_many(shard, 1, [BODY] * -(-batch // SHARDS))
    many_keys = many_keys[:batch]
    by_server: dict[int, list[tuple[int, hvcore.Key]]] = {}
    by_shard: dict[int, list[int]] = {}
    for key in many_keys:
        by_server.setdefault(db.shard_map.server_for(key.shard_id), []).append((key.shard_id, key))
        by_shard.setdefault(key.shard_id, []).append(int(key))
    stores = db.servers
    fetch_sql = {  # what get_many sends: per server one UNION ALL of the shards' key arrays
        index: (
            " UNION ALL ".join(
                f"(SELECT id, kind, body FROM shard{shard:04d}.entities WHERE id = ANY(%s::bigint[]))"
                for shard in dict.fromkeys(s for s, _ in items)
            ),
            [[int(k) for s2, k in items if s2 == shard] for shard in dict.fromkeys(s for s, _ in items)],
        )
        for index, items in by_server.items()
    }

    def hv_get_many() -> None:
        assert len(db.get_many(many_keys)) == len(many_keys)

    def pg_get_many() -> None:
        found = 0
        for index, (query, params) in fetch_sql.items():
            with stores[index]._pool.connection() as conn:  # type: ignore[attr-defined]
                found += len(conn.execute(query, params).fetchall())
        assert found == len(many_keys)

    def sa_get_many() -> None:
        assert len(peer.get_many(by_shard)) == len(many_keys)

    per_call = measure({"hypervault": hv_get_many, "psycopg": pg_get_many, "sqlalchemy": sa_get_many}, 1, batch_rounds)
    out["get_many"] = {name: seconds / len(many_keys) for name, seconds in per_call.items()}  # per key

    layout = db.layout
    low, high = (_ms(since) - layout.epoch_ms) << layout.time_shift, (_ms(until) - layout.epoch_ms) << layout.time_shift
    range_sql = {  # what query() sends: per server a Merge Append of the shards' (kind, id) index scans
        index: (
            "SELECT * FROM ("
            + " UNION ALL ".join(
                f"(SELECT id, kind, body FROM shard{shard:04d}.entities WHERE kind = %s AND id >= %s AND id < %s)"
                for shard in db.shard_map.shards_of(index)
            )
            + ") AS hv ORDER BY id",
            [RANGE_KIND, low, high] * len(db.shard_map.shards_of(index)),
        )
        for index in range(db.shard_map.server_count)
    }
    counted: dict[str, int] = {}

    def hv_range() -> None:
        counted["hypervault"] = sum(1 for _ in db.query(kind=RANGE_KIND, since=since, until=until))

    def pg_range() -> None:
        streams = []
        for index, (query, params) in range_sql.items():
            with stores[index]._pool.connection() as conn:  # type: ignore[attr-defined]
                streams.append(conn.execute(query, params).fetchall())
        counted["psycopg"] = sum(1 for _ in heapq.merge(*streams, key=lambda r: r[0]))

    def sa_range() -> None:
        counted["sqlalchemy"] = len(peer.range(RANGE_KIND, low, high))

    per_call = measure({"hypervault": hv_range, "psycopg": pg_range, "sqlalchemy": sa_range}, 1, batch_rounds)
    rows_read = counted["hypervault"]
    if len(set(counted.values())) != 1:
        raise AssertionError(f"the range query returned different row counts: {counted}")
    out["range_query"] = {name: seconds / max(rows_read, 1) for name, seconds in per_call.items()}  # per row
    out["range_query_rows"] = rows_read
    out["range_query_total_s"] = per_call
    return out


UNITS = {"put": "op", "get": "op", "put_many": "row", "get_many": "key", "range_query": "row"}


def main() -> None:
    """Command-line entry: print µs per op/row/key for every candidate (and write the figures as JSON if asked)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few operations, small batches and range")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    r = run(args.quick)
    for measure_name, unit in UNITS.items():
        figures = r[measure_name]
        hv = figures["hypervault"]
        parts = [f"hypervault {hv * 1e6:8.2f} µs/{unit}"]
        for name in ("psycopg", "sqlalchemy", "next_id"):
            if name in figures:
                parts.append(f"{name} {figures[name] * 1e6:8.2f} ({figures[name] / hv:5.2f}× hv)")
        print(f"{measure_name:12s} " + " | ".join(parts))
    if args.json:
        args.json.write_text(json.dumps(r, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
