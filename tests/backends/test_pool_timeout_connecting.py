"""A `PoolTimeout` while the pool's connections are lent and its new connection's start-up hangs says both.

The pool of a server whose first connection was made (and is lent) while a new one, through the same address, is
accepted and never answered (a server frozen since, a load balancer whose backend hangs) waited
``pool_block_timeout`` and said only ``(pool_max=2, every one in use)``: one of two was in use, and the wait was
for the server. The message now says how many are in use and that a new connection to ``host:port`` was not
established, with ``connect_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import hvcore


class FreezingProxy:
    """A TCP proxy to a PostgreSQL server that forwards connections until `freeze`, then accepts new ones and
    never answers them (those already forwarded go on)."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self.frozen = False
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._sockets.append(client)
            if self.frozen:
                continue  # accepted, never answered
            server = socket.create_connection(self._target)
            self._sockets.append(server)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def freeze(self) -> None:
        self.frozen = True

    def close(self) -> None:
        self._closed = True
        self._thread.join(5)
        self._listener.close()
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def proxy(pg_fresh_db: dict[str, Any]) -> Iterator[FreezingProxy]:
    proxy = FreezingProxy(str(pg_fresh_db.get("host") or "127.0.0.1"), int(pg_fresh_db.get("port") or 5432))
    try:
        yield proxy
    finally:
        proxy.close()


def check(error: BaseException, port: int) -> None:
    message = str(error)
    print(f"\n{type(error).__name__}: {message}")
    assert isinstance(error, hvcore.PoolTimeout), f"{type(error).__name__}: {message}"
    assert "every one in use" not in message, message
    assert "1 in use" in message, message
    assert f"new connection to 127.0.0.1:{port}/" in message and "connect_timeout=2 s" in message, message


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_pool_timeout_with_connections_lent_and_a_new_one_unanswered_says_both(
    pg_fresh_db: dict[str, Any], proxy: FreezingProxy, api: str
) -> None:
    servers = [{**pg_fresh_db, "host": "127.0.0.1", "port": proxy.port, "shards": "0-8", "pgbouncer": "off"}]
    options: dict[str, Any] = dict(backend="jsonb", worker=None, pool_max=2, pool_block_timeout=1, operation_timeout=1)
    if api == "sync":
        with hvcore.Datastore(servers, **options) as db:
            db.provision()
            conn = db.get_connection(3)
            proxy.freeze()
            try:
                with pytest.raises(hvcore.HypervaultError) as caught:
                    db.get_connection(4)
            finally:
                db.put_connection(conn)
        check(caught.value, proxy.port)
        return

    async def run() -> BaseException:
        async with hvcore.AsyncDatastore(servers, **options) as adb:
            await adb.provision()
            conn = await adb.get_connection(3)
            proxy.freeze()
            try:
                with pytest.raises(hvcore.HypervaultError) as caught:
                    await adb.get_connection(4)
            finally:
                await adb.put_connection(conn)
            return caught.value

    check(asyncio.run(run()), proxy.port)
