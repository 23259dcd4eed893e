"""Generated programs of transaction calls against a model dict, on every backend, sync and async (issue 17).

A program is a few committed records, then one transaction running a random sequence of put, put_many, update,
replace, delete, get and query, with savepoint blocks nested in it (each kept or rolled back), then committed or
rolled back. After every call the transaction must read what the model says (read-your-writes, savepoints undoing
exactly their block), and afterwards the datastore must hold the model (commit) or what it held before (rollback).
Guards the class "a transaction keeps or undoes something it should not", not one case.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fixtures.datastores import SyncFacade
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import hvcore

SETTINGS = settings(
    max_examples=int(os.environ.get("HV_TX_EXAMPLES", "30")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SHARDS = ("0-8", "8-16")
_kinds = itertools.count(1000)  # a kind of its own per example: queries by kind see only that example's records
_names = itertools.count()

bodies = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.text(alphabet="xyz", max_size=2), max_size=2)
index = st.integers(0, 30)
call = st.one_of(
    st.tuples(st.just("put"), bodies),
    st.tuples(st.just("put_many"), st.lists(bodies, max_size=3)),
    st.tuples(st.just("update"), index, bodies),
    st.tuples(st.just("replace"), index, bodies),
    st.tuples(st.just("delete"), index),
    st.tuples(st.just("get"), index),
    st.tuples(st.just("get_many"), st.lists(index, max_size=3)),
    st.tuples(st.just("query"), st.sampled_from([None, 1, 3])),
)
steps: st.SearchStrategy[list[Any]] = st.deferred(
    lambda: st.lists(  # a third of the steps are savepoint blocks (one_of would flatten them into 1 in 9)
        st.integers(0, 2).flatmap(lambda n: st.tuples(st.just("savepoint"), steps, st.booleans()) if n == 0 else call),
        max_size=5,
    )
)
programs = st.tuples(
    st.lists(bodies, max_size=3), steps, st.booleans(), st.sampled_from([2, 12]), st.booleans()
)  # committed first, the transaction's steps, roll it back?, shard, nested db.transaction instead of tx.transaction?


class Undo(Exception):
    """Raised to roll a block back."""


@pytest.fixture(scope="module")
def stores(pg_cluster: Any) -> Iterator[dict[str, Any]]:
    """memory, hstore and jsonb, each sync and async; PostgreSQL on fresh databases of servers 0 and 1."""
    made: dict[str, Any] = {}
    for backend in ("memory", "hstore", "jsonb"):
        for api in ("sync", "async"):
            if backend == "memory":
                run = next(_names)
                servers: list[dict[str, Any]] = [dict(shards=s, name=f"txm{run}-{s}") for s in SHARDS]
            else:
                dbname = f"hvtxm_{backend}_{api}_{os.getpid()}"
                servers = []
                for server_index, spec in enumerate(SHARDS):
                    settings_ = pg_cluster.settings(server_index)
                    with psycopg.connect(**settings_, autocommit=True) as conn:
                        conn.execute(f"DROP DATABASE IF EXISTS {dbname}")
                        conn.execute(f"CREATE DATABASE {dbname}")
                    servers.append({**settings_, "dbname": dbname, "shards": spec})
                with hvcore.Datastore(servers, backend=backend) as db:
                    db.provision()
            if api == "sync":
                made[f"{backend}-{api}"] = hvcore.Datastore(servers, backend=backend)
            else:
                made[f"{backend}-{api}"] = SyncFacade(hvcore.AsyncDatastore(servers, backend=backend))
    yield made
    for store in made.values():
        getattr(store, "shutdown", store.close)()


def pick(keys: list[hvcore.Key], i: int) -> hvcore.Key | None:
    return keys[i % len(keys)] if keys else None


def run_steps(db: Any, tx: Any, shard: int, kind: int, program: list[Any], model: dict[int, Any], keys: list[Any],
              nested_db: bool) -> None:  # fmt: skip
    """Run ``program`` in ``tx``, keeping ``model`` (key → body, None or missing: absent) in step."""
    for step in program:
        name = step[0]
        note(f"{name} {step[1:]}")
        if name == "savepoint":
            _, inner, undo = step
            saved = dict(model)
            try:
                with db.transaction(shard) if nested_db else tx.transaction() as sp:
                    run_steps(db, sp, shard, kind, inner, model, keys, nested_db)
                    if undo:
                        raise Undo
            except Undo:
                model.clear()
                model.update(saved)
        elif name == "put":
            key = tx.put(kind, **step[1])
            keys.append(key)
            model[int(key)] = dict(step[1])
        elif name == "put_many":
            made = tx.put_many(kind, step[1])
            assert len(made) == len(step[1])
            for key, body in zip(made, step[1], strict=True):
                keys.append(key)
                model[int(key)] = dict(body)
        elif name in ("update", "replace", "delete", "get"):
            key = pick(keys, step[1])
            if key is None:
                continue
            stored = model.get(int(key))
            if name == "update":
                assert tx.update(key, **step[2]) is (stored is not None)
                if stored is not None:
                    model[int(key)] = {**stored, **step[2]}
            elif name == "replace":
                assert tx.replace(key, **step[2]) is (stored is not None)
                if stored is not None:
                    model[int(key)] = dict(step[2])
            elif name == "delete":
                assert tx.delete(key) is (stored is not None)
                model[int(key)] = None
            record = tx.get(key)
            assert (None if record is None else record.data) == model.get(int(key))
        elif name == "get_many":
            wanted = [k for k in (pick(keys, i) for i in step[1]) if k is not None]
            found = tx.get_many(wanted)
            assert {int(k): r.data for k, r in found.items()} == {
                int(k): model[int(k)] for k in wanted if model.get(int(k)) is not None
            }
        elif name == "query":
            got = {int(r.key): r.data for r in tx.query(kind=kind, limit=step[1])}
            present = sorted((k, v) for k, v in model.items() if v is not None)
            assert got == dict(present[: step[1]] if step[1] is not None else present)


@pytest.mark.parametrize(
    "name", ["memory-sync", "memory-async", "hstore-sync", "hstore-async", "jsonb-sync", "jsonb-async"]
)
@SETTINGS
@given(program=programs)
def test_a_transaction_keeps_or_undoes_exactly_what_the_model_says(
    stores: dict[str, Any], name: str, program: tuple[Any, ...]
) -> None:
    db = stores[name]
    first, inner, undo, shard, nested_db = program
    kind = next(_kinds) % 30000
    keys: list[Any] = list(db.put_many(shard, kind, first))
    before = {int(k): dict(b) for k, b in zip(keys, first, strict=True)}
    model = dict(before)
    try:
        with db.transaction(shard) as tx:
            run_steps(db, tx, shard, kind, inner, model, keys, nested_db)
            if undo:
                raise Undo
    except Undo:
        model = before
    found = db.get_many(keys)
    assert {int(k): r.data for k, r in found.items()} == {k: v for k, v in model.items() if v is not None}
    assert {int(r.key) for r in db.query(kind=kind, shards=[shard])} == {k for k, v in model.items() if v is not None}
