"""Sixth newcomer: a server that accepts connections but never answers is a `PoolTimeout` "every one in use".

README (Guarantees): "No call hangs on a frozen server: a server stopped with SIGSTOP (the kernel still ACKs, so TCP
timeouts never fire) fails ``put`` with ``ServerUnavailable`` after ``operation_timeout``". That holds for a pool
whose connections were open before the freeze. A process started while the server is frozen (or behind a load
balancer whose backend hangs) has no connection yet: its pool's connection attempts hang in the start-up exchange,
and ``put`` raises ``PoolTimeout: no connection to ... free within 2.0 s (pool_max=10, every one in use): raise
pool_max or pool_block_timeout, and give back connections from get_connection()`` -- no connection is in use, none
was ever made, and the advice points away from the server. (``status()`` on the same store does say
``ServerUnavailable: ... connection timeout expired``.)
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

import hvcore


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener accepts TCP connections (the kernel's backlog) and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_a_put_to_a_server_that_never_answers_is_server_unavailable(silent_port: int) -> None:
    servers = [dict(shards="0-8", host="127.0.0.1", port=silent_port, dbname="app")]
    with hvcore.Datastore(servers, backend="jsonb", worker=None, operation_timeout=1, pool_block_timeout=2) as db:
        with pytest.raises(hvcore.HypervaultError) as caught:
            db.put(3, 1, name="ada")
        assert db.store_for(3).stats()["borrowed"] == 0
    assert isinstance(caught.value, hvcore.ServerUnavailable), f"{type(caught.value).__name__}: {caught.value}"
    assert "in use" not in str(caught.value)
