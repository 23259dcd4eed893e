"""A write whose reply (with its transaction id) never reached the client: settled by the server, else by its rows.

A TCP proxy between the datastore and the server (`CutProxy`) lets requests through, swallows the replies once
frozen, and cuts every connection at a chosen moment. Cut while the write's session still runs its transaction
(a slow deferred trigger at commit): the session's ``backend_xid`` is read from ``pg_stat_activity`` and
``pg_xact_status`` decides, committed or aborted. Cut once the row is visible (the whole write, statement and
Sync, reached the server, which ran and committed it, and its session is gone or idle with no transaction): no
server can name the transaction, the rows decide. Either way the write is reported as done, once: never retried
under a fresh key (an orphan duplicate row), never applied twice, a committed delete never reported "not found".
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from fixtures.faults import FaultServers
from fixtures.relay import Relay, shut

import hvcore
from hvbackend_postgres import _astore, _store

pytestmark = pytest.mark.postgres

SHARD = 5


class CutProxy(Relay):
    """A relay to one server: `freeze` swallows the server's replies, `cut` closes every connection (and thaws)."""

    def __init__(self, host: str, port: int) -> None:
        self._frozen = threading.Event()
        super().__init__(host, port)

    def serve(self, client: socket.socket, server: socket.socket) -> None:
        threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        with contextlib.suppress(OSError, ValueError):
            while True:
                ready, _, _ = select.select([client, server], [], [], 0.5)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        raise OSError("closed")
                    if sock is client:
                        server.sendall(data)
                    elif not self._frozen.is_set():
                        client.sendall(data)
        shut(client, server)

    def freeze(self) -> None:
        """From now on, the server's replies are dropped (the requests still go through)."""
        self._frozen.set()

    def cut(self) -> None:
        """Thaw for new connections, then close every open one, both ways (the server sees its client go).

        In that order: the client opens its settling connection the moment its own is cut, and one accepted
        before the thaw lost its first replies (the login), timed out, and the write was reported unknown (1 run
        in ~6 on a loaded machine). The cut connection's reply was already swallowed while frozen."""
        self._frozen.clear()
        super().cut()


@pytest.fixture
def proxied(fault_pg: FaultServers) -> Iterator[tuple[CutProxy, dict[str, Any], dict[str, Any]]]:
    """(proxy, settings through it, direct settings) for a fresh provisioned database of fault server 0."""
    direct = fault_pg.fresh_db(0)
    with hvcore.Datastore([dict(shards="0-16", **direct)], backend="jsonb", worker=None) as db:
        db.provision()
    proxy = CutProxy(str(direct.get("host", "127.0.0.1")), int(direct["port"]))
    through = {**direct, "host": "127.0.0.1", "port": proxy.port}
    yield proxy, through, direct
    proxy.close()


def rows(direct: dict[str, Any]) -> list[dict[str, Any]]:
    """Every body of the test shard, read straight from the server."""
    with psycopg.connect(**direct, autocommit=True) as conn:
        return [r[0] for r in conn.execute(f"SELECT body FROM shard{SHARD:04d}.entities ORDER BY id")]


def cut_after_commit(proxy: CutProxy, direct: dict[str, Any], marker: str, action: Callable[[], Any]) -> Any:
    """Freeze the replies, run ``action`` in a thread, cut once a row with ``marker`` is visible; its outcome."""
    query = f"SELECT count(*) > 0 FROM shard{SHARD:04d}.entities WHERE body->>'by' = %s"
    return cut_when(proxy, direct, query, (marker,), action)


def cut_when(
    proxy: CutProxy, direct: dict[str, Any], ready: str, params: Any, action: Callable[[], Any], *, settle: float = 0.05
) -> Any:
    """Freeze the replies, run ``action`` in a thread, cut once ``ready`` (one boolean) is true; its outcome."""
    proxy.freeze()
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(action())
        except Exception as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    deadline = time.monotonic() + 10
    with psycopg.connect(**direct, autocommit=True) as conn:
        while conn.execute(ready, params).fetchone() != (True,):
            assert time.monotonic() < deadline, f"never ready: {ready}"
            time.sleep(0.005)
    time.sleep(settle)  # whatever of the reply there is has reached the proxy, and been dropped
    proxy.cut()
    worker.join(30)
    assert not worker.is_alive(), "the write hung"
    return outcome[0]


@pytest.mark.parametrize("pgbouncer", ["off", "transaction"], ids=["direct", "behind-a-pooler"])
def test_a_put_committed_whose_reply_never_came_back_is_stored_once(
    proxied: tuple[CutProxy, dict[str, Any], dict[str, Any]], pgbouncer: str
) -> None:
    proxy, through, direct = proxied
    with hvcore.Datastore([dict(shards="0-16", pgbouncer=pgbouncer, **through)], backend="jsonb") as db:
        db.put(SHARD, 1, by="warm")  # the pooled connection exists, its statement is prepared (direct)
        outcome = cut_after_commit(proxy, direct, "cut", lambda: db.put(SHARD, 1, by="cut"))
        assert isinstance(outcome, hvcore.Key), outcome
        assert [b["by"] for b in rows(direct)] == ["warm", "cut"]  # once: no orphan under another key
        assert db.get_many([outcome])[outcome].data == {"by": "cut"}
        assert db.key_collisions == 0
        pool = db.status()[0]["pool"]
        assert pool["commit_checks"] == 1 and pool["commit_checks_committed"] == 1, pool


def test_an_async_put_committed_whose_reply_never_came_back_is_stored_once(
    proxied: tuple[CutProxy, dict[str, Any], dict[str, Any]],
) -> None:
    proxy, through, direct = proxied

    async def main() -> Any:
        async with hvcore.AsyncDatastore([dict(shards="0-16", pgbouncer="off", **through)], backend="jsonb") as db:
            await db.put(SHARD, 1, by="warm")
            loop = asyncio.get_running_loop()
            task = loop.create_task(db.put(SHARD, 1, by="cut"))
            outcome = await asyncio.to_thread(cut_after_commit, proxy, direct, "cut", lambda: None)
            assert outcome is None
            return await task

    key = asyncio.run(main())
    assert isinstance(key, hvcore.Key), key
    assert [b["by"] for b in rows(direct)] == ["warm", "cut"]


def test_an_update_committed_whose_reply_never_came_back_is_applied_once(
    proxied: tuple[CutProxy, dict[str, Any], dict[str, Any]],
) -> None:
    proxy, through, direct = proxied
    with hvcore.Datastore([dict(shards="0-16", pgbouncer="off", **through)], backend="jsonb") as db:
        key = db.put(SHARD, 1, by="first")
        outcome = cut_after_commit(proxy, direct, "second", lambda: db.update(key, by="second"))
        assert outcome is True, str(outcome)
        assert rows(direct) == [{"by": "second"}]


def test_coalesced_puts_committed_whose_reply_never_came_back_are_stored_once(
    proxied: tuple[CutProxy, dict[str, Any], dict[str, Any]],
) -> None:
    """Overlapping puts share one multi-row INSERT (`insert_group`): a lost group must not run its rows again."""
    proxy, through, direct = proxied

    async def main() -> list[Any]:
        async with hvcore.AsyncDatastore([dict(shards="0-16", pgbouncer="off", **through)], backend="jsonb") as db:
            await db.put(SHARD, 1, by="warm")
            loop = asyncio.get_running_loop()
            tasks = [loop.create_task(db.put(SHARD, 1, by="cut", i=i)) for i in range(8)]
            await asyncio.to_thread(cut_after_commit, proxy, direct, "cut", lambda: None)
            return list(await asyncio.gather(*tasks, return_exceptions=True))

    outcomes = asyncio.run(main())
    stored = [b for b in rows(direct) if b["by"] == "cut"]
    assert all(isinstance(o, hvcore.Key) for o in outcomes), outcomes
    assert sorted(b["i"] for b in stored) == list(range(8))  # each once


@pytest.mark.parametrize("pgbouncer", ["off", "transaction"], ids=["direct", "behind-a-pooler"])
def test_a_delete_committed_whose_reply_never_came_back_is_reported_deleted(
    proxied: tuple[CutProxy, dict[str, Any], dict[str, Any]], pgbouncer: str
) -> None:
    """Run again, the DELETE would find nothing and report the key as not stored: the row's absence settles it."""
    proxy, through, direct = proxied
    with hvcore.Datastore([dict(shards="0-16", pgbouncer=pgbouncer, **through)], backend="jsonb") as db:
        key = db.put(SHARD, 1, by="doomed")
        gone = f"SELECT NOT EXISTS (SELECT FROM shard{SHARD:04d}.entities WHERE id = %s)"
        assert cut_when(proxy, direct, gone, (int(key),), lambda: db.delete(key)) is True
        assert rows(direct) == []
        pool = db.status()[0]["pool"]
        assert pool["commit_checks"] == 1 and pool["commit_checks_committed"] == 1, pool


@pytest.mark.parametrize("merge", [True, False], ids=["update", "replace"])
def test_an_update_committed_whose_reply_never_came_back_is_not_run_again(
    proxied: tuple[CutProxy, dict[str, Any], dict[str, Any]], merge: bool
) -> None:
    """An audit trigger counts the UPDATEs that reach the row: one, not a second run of a write already in place."""
    proxy, through, direct = proxied
    table = f"shard{SHARD:04d}.entities"
    with psycopg.connect(**direct, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE shard{SHARD:04d}.audit (id bigint, body jsonb);"
            f"CREATE FUNCTION shard{SHARD:04d}.audit() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN INSERT INTO shard{SHARD:04d}.audit VALUES (NEW.id, NEW.body); RETURN NULL; END $$;"
            f"CREATE TRIGGER audit AFTER UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION shard{SHARD:04d}.audit()"
        )
    with hvcore.Datastore([dict(shards="0-16", pgbouncer="off", **through)], backend="jsonb") as db:
        key = db.put(SHARD, 1, by="first", n=1)
        write = (lambda: db.update(key, by="second")) if merge else (lambda: db.replace(key, by="second"))
        done = f"SELECT count(*) > 0 FROM shard{SHARD:04d}.audit"
        assert cut_when(proxy, direct, done, None, write) is True
        assert rows(direct) == [{"by": "second", "n": 1} if merge else {"by": "second"}]
        with psycopg.connect(**direct, autocommit=True) as conn:
            assert conn.execute(f"SELECT count(*) FROM shard{SHARD:04d}.audit").fetchone() == (1,)


def test_an_hstore_replace_committed_whose_reply_never_came_back_is_not_run_again(fault_pg: FaultServers) -> None:
    """The same check on the hstore backend: the server compares the hstore the statement builds with the body."""
    direct = fault_pg.fresh_db(0)
    with hvcore.Datastore([dict(shards="0-16", **direct)], backend="hstore", worker=None) as db:
        db.provision()
    proxy = CutProxy(str(direct.get("host", "127.0.0.1")), int(direct["port"]))
    through = {**direct, "host": "127.0.0.1", "port": proxy.port}
    with psycopg.connect(**direct, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE shard{SHARD:04d}.audit (id bigint);"
            f"CREATE FUNCTION shard{SHARD:04d}.audit() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN INSERT INTO shard{SHARD:04d}.audit VALUES (NEW.id); RETURN NULL; END $$;"
            f"CREATE TRIGGER audit AFTER UPDATE ON shard{SHARD:04d}.entities FOR EACH ROW "
            f"EXECUTE FUNCTION shard{SHARD:04d}.audit()"
        )
    try:
        with hvcore.Datastore([dict(shards="0-16", pgbouncer="off", **through)], backend="hstore") as db:
            key = db.put(SHARD, 1, by="first", n="1")
            done = f"SELECT count(*) > 0 FROM shard{SHARD:04d}.audit"
            assert cut_when(proxy, direct, done, None, lambda: db.replace(key, by="second")) is True
            record = db.get(key)
            assert record is not None and record.data == {"by": "second"}
            with psycopg.connect(**direct, autocommit=True) as conn:
                assert conn.execute(f"SELECT count(*) FROM shard{SHARD:04d}.audit").fetchone() == (1,)
    finally:
        proxy.close()


def _slow_commit(direct: dict[str, Any], body: str) -> None:
    """A deferred trigger on the test shard: at commit it sleeps 1 s, then runs ``body`` (plpgsql statements)."""
    with psycopg.connect(**direct, autocommit=True) as conn:
        conn.execute(
            f"CREATE SEQUENCE shard{SHARD:04d}.commits;"
            f"CREATE FUNCTION shard{SHARD:04d}.slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_sleep(1.0); {body} RETURN NULL; END $$;"
            f"CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON shard{SHARD:04d}.entities "
            f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION shard{SHARD:04d}.slow_commit()"
        )


SLEEPING = "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = %s AND wait_event = 'PgSleep'"


def test_a_put_cut_while_its_session_commits_is_settled_committed_by_the_server(
    proxied: tuple[CutProxy, dict[str, Any], dict[str, Any]],
) -> None:
    """Cut while the session runs its commit (its id not sent yet): its backend_xid, then pg_xact_status.

    The trigger also changes the row at commit, so the row no longer holds what the INSERT sent: reading the rows
    would say "not stored" and store it again under a fresh key. The server says committed: one row, its key.
    """
    proxy, through, direct = proxied
    with hvcore.Datastore([dict(shards="0-16", pgbouncer="off", **through)], backend="jsonb") as db:
        db.put(SHARD, 1, by="warm")
        _slow_commit(
            direct, f"UPDATE shard{SHARD:04d}.entities SET body = body || '{{\"touched\": true}}' WHERE id = NEW.id;"
        )
        outcome = cut_when(proxy, direct, SLEEPING, (direct["dbname"],), lambda: db.put(SHARD, 1, by="cut"), settle=0.1)
        assert isinstance(outcome, hvcore.Key), outcome
        assert [b["by"] for b in rows(direct)] == ["warm", "cut"]  # once: no orphan under another key
        record = db.get(outcome)
        assert record is not None and record.data == {"by": "cut", "touched": True}
        pool = db.status()[0]["pool"]
        assert pool["commit_checks_committed"] == 1 and pool["commit_checks_by_rows"] == 0, pool


def test_a_put_cut_while_its_session_commits_is_settled_aborted_by_the_server_and_runs_again(
    proxied: tuple[CutProxy, dict[str, Any], dict[str, Any]],
) -> None:
    """The same cut, and the first commit fails (the trigger raises once): the server says aborted; run again."""
    proxy, through, direct = proxied
    with hvcore.Datastore([dict(shards="0-16", pgbouncer="off", **through)], backend="jsonb") as db:
        db.put(SHARD, 1, by="warm")
        _slow_commit(
            direct, f"IF nextval('shard{SHARD:04d}.commits') = 1 THEN RAISE EXCEPTION 'first commit fails'; END IF;"
        )
        outcome = cut_when(proxy, direct, SLEEPING, (direct["dbname"],), lambda: db.put(SHARD, 1, by="cut"), settle=0.1)
        assert isinstance(outcome, hvcore.Key), outcome
        assert [b["by"] for b in rows(direct)] == ["warm", "cut"]
        pool = db.status()[0]["pool"]
        assert pool["commit_checks"] == 1 and pool["commit_checks_aborted"] == 1, pool


@pytest.fixture(autouse=True)
def _short_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (_store, _astore):
        monkeypatch.setattr(module, "SETTLE_SECONDS", 3.0)
