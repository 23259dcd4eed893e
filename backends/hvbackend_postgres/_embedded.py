"""Embedded PostgreSQL servers from the ``pgserver`` wheel (PostgreSQL 16, no hstore: use the jsonb backend)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from hvcore.hookspecs import DemoServers

__all__ = ["EMBEDDED_BACKEND", "demo_servers", "embedded_servers"]

EMBEDDED_BACKEND = "jsonb"  # pgserver ships plpgsql and pgvector, not hstore


def _import_pgserver() -> Any:
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:
        raise ImportError("embedded PostgreSQL needs the pgserver wheel: pip install 'hypervault[embedded]'") from exc
    return pgserver


def _settings(server: Any) -> dict[str, Any]:
    params = conninfo_to_dict(server.get_uri())
    settings: dict[str, Any] = {
        "host": params.get("host"),
        "port": int(params.get("port") or 5432),
        "user": params.get("user") or "postgres",
        "dbname": params.get("dbname") or "postgres",
    }
    return {k: v for k, v in settings.items() if v is not None}


@contextlib.contextmanager
def embedded_servers(count: int = 2, *, root: str | Path | None = None) -> Iterator[list[dict[str, Any]]]:
    """Start ``count`` embedded PostgreSQL servers in temporary directories; yield their connection settings.

    Each dict is ready for a ``Datastore`` connection list once given ``shards``; the servers listen on Unix
    sockets only. They are stopped and their data deleted when the block ends, whatever happens in it.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    pgserver = _import_pgserver()
    top = Path(tempfile.mkdtemp(prefix="hv-embedded-", dir=root))
    top.chmod(0o755)  # under root, pgserver runs the server as its own user, who must reach the data dirs
    servers: list[Any] = []
    try:
        for index in range(count):
            servers.append(pgserver.get_server(top / f"pg{index}", cleanup_mode="delete"))
        yield [_settings(server) for server in servers]
    finally:
        for server in reversed(servers):
            with contextlib.suppress(Exception):
                server.cleanup()
        shutil.rmtree(top, ignore_errors=True)


def demo_servers(count: int) -> AbstractContextManager[DemoServers] | None:
    """``hv demo``'s servers (the `hypervault_demo_servers` hook): ``count`` embedded servers, or None without pgserver.

    Nothing starts until the returned context manager is entered; it yields a `DemoServers` for the jsonb
    backend (pgserver ships no hstore) and stops and deletes the servers on exit.
    """
    try:
        _import_pgserver()
    except ImportError:
        return None
    return _demo(count)


@contextlib.contextmanager
def _demo(count: int) -> Iterator[DemoServers]:
    with embedded_servers(count) as servers:
        yield DemoServers(
            settings=tuple(servers),
            backend=EMBEDDED_BACKEND,
            description=f"{count} embedded PostgreSQL servers (pgserver), {EMBEDDED_BACKEND} backend",
        )
