"""A newcomer's findings: PostgreSQL behind a plain port mapping (docker run -p 15432:5432), pgbouncer='auto'."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures.relay import Relay, shut

import hvcore


class PortMapping(Relay):
    """Bytes both ways, unchanged: what a Docker port mapping or an SSH tunnel does."""

    def serve(self, client: socket.socket, server: socket.socket) -> None:
        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            shut(src, dst)

        threading.Thread(target=pump, args=(client, server), daemon=True).start()
        threading.Thread(target=pump, args=(server, client), daemon=True).start()


@pytest.fixture
def mapped(pg_fresh_db: dict[str, Any]) -> Iterator[dict[str, Any]]:
    relay = PortMapping(pg_fresh_db["host"], pg_fresh_db["port"])
    try:
        yield {**pg_fresh_db, "port": relay.port}
    finally:
        relay.close()


def test_provision_behind_a_port_mapping_says_how_to_fix_it(mapped: dict[str, Any]) -> None:
    """The first thing a newcomer with PostgreSQL in Docker does is `hv init`."""
    with hvcore.Datastore([{**mapped, "shards": "0-4"}], backend="jsonb") as db:
        try:
            db.provision()
        except hvcore.ConfigError as exc:
            assert "pgbouncer='off'" in str(exc) or 'pgbouncer="off"' in str(exc), str(exc)
