"""A datastore operator call tries a server that does not answer once, whatever steps it takes there.

``provision``, the index and migration calls and the placement calls read the recorded placement first, then do
their work, each step on a session of its own: a server that never answered was tried once per step (each attempt
a ``connect_timeout``), and the async forms also leased a worker number on it first. Now the first failed attempt
is remembered for the rest of the call (`hvcore._attempts`). Attempts are counted as TCP connections the
listener accepted. The property runs on servers that close each connection at once (a failed attempt costs
nothing); the silent ones (accept, never answer) are in tests/test_cli_silent_servers.py and below.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hvcore


class DeadServer:
    """A listener that accepts TCP connections and either closes each at once (``silent=False``) or never says a
    word; counts the connections it accepted."""

    def __init__(self, *, silent: bool) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self.silent = silent
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.silent:
                self._held.append(conn)
            else:
                conn.close()

    def count(self) -> int:
        """Connections accepted so far, after a moment for those still in the kernel's backlog."""
        time.sleep(0.15)
        return self.accepted

    def close(self) -> None:
        self._closed = True
        self._thread.join(5)
        self._listener.close()
        for conn in self._held:
            conn.close()


@pytest.fixture(scope="module")
def migrations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("migrations")
    (folder / "0001_t.sql").write_text("CREATE TABLE t (a int);\n")
    return folder


def calls(migrations: Path) -> dict[str, Callable[[Any], Any]]:
    """The operator calls that reach every server in several steps, by name: ``call(datastore)``."""
    return {
        "provision": lambda db: db.provision(),
        "status": lambda db: db.status(),
        "reload_placement": lambda db: db.reload_placement(),
        "shared_databases": lambda db: db.shared_databases(),
        "create_index": lambda db: db.create_index(1, "x"),
        "drop_index": lambda db: db.drop_index(1, "x"),
        "list_indexes": lambda db: db.list_indexes(),
        "migrate": lambda db: db.migrate(migrations),
        "migration_status": lambda db: db.migration_status(migrations),
        "move_state": lambda db: db.move_state(1),
    }


CALLS = list(calls(Path()))


def run_call(servers: list[DeadServer], name: str, api: str, migrations: Path) -> tuple[list[int], str]:
    """Run one call on a datastore over ``servers``; the attempts each server saw, and what the call ended with."""
    size = 16 // len(servers)
    entries = [
        dict(shards=f"{i * size}-{(i + 1) * size}", host="127.0.0.1", port=server.port, dbname="app")
        for i, server in enumerate(servers)
    ]
    options: dict[str, Any] = dict(backend="jsonb", worker=None, operation_timeout=1)
    call = calls(migrations)[name]
    before = [server.accepted for server in servers]
    ended = "returned"
    try:
        if api == "sync":
            with hvcore.Datastore(entries, **options) as db:
                call(db)
                attempts = [server.count() - b for server, b in zip(servers, before, strict=True)]
        else:

            async def run() -> list[int]:
                async with hvcore.AsyncDatastore(entries, **options) as adb:
                    try:
                        await call(adb)
                    finally:
                        counted = [server.count() - b for server, b in zip(servers, before, strict=True)]
                return counted

            attempts = asyncio.run(run())
    except hvcore.HypervaultError as exc:
        ended = f"{type(exc).__name__}: {exc}"
        attempts = [server.count() - b for server, b in zip(servers, before, strict=True)]
    return attempts, ended


@pytest.fixture(scope="module")
def refusing() -> Iterator[list[DeadServer]]:
    servers = [DeadServer(silent=False) for _ in range(3)]
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(1, 3), name=st.sampled_from(CALLS), api=st.sampled_from(["sync", "async"]))
def test_an_operator_call_tries_each_dead_server_once(
    refusing: list[DeadServer], migrations: Path, count: int, name: str, api: str
) -> None:
    attempts, ended = run_call(refusing[:count], name, api, migrations)
    assert max(attempts) <= 1, f"{api} {name} on {count} dead server(s): attempts {attempts}; {ended}"


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("name", ["provision", "create_index"])
def test_an_operator_call_tries_a_silent_server_once(migrations: Path, name: str, api: str) -> None:
    """A server that accepts and never answers: one connect_timeout, the error naming it and the bound."""
    servers = [DeadServer(silent=True) for _ in range(2)]
    try:
        attempts, ended = run_call(servers, name, api, migrations)
    finally:
        for server in servers:
            server.close()
    print(f"\n{api} {name}: attempts {attempts}: {ended}")
    assert attempts == [1, 1], f"{api} {name}: attempts {attempts}; {ended}"
    assert "ServerUnavailable" in ended and "connect_timeout=2" in ended, ended
