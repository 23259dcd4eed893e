"""Helpers of the Citus hand-off tests: configs, the CLI in-process, connections, Citus databases, shard tables."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from fixtures.citus import CITUS_SETTINGS, CitusCluster, _require_citus
from fixtures.localpg import LocalServer
from psycopg import sql

from hvcore.cli import main


class StatementLog(logging.Handler):
    """The lines a store logs (``Datastore(logger=...)``: its statements at DEBUG)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


_Log = TypeVar("_Log", bound=logging.Handler)


@contextlib.contextmanager
def statement_log(name: str, handler: _Log) -> Iterator[tuple[logging.Logger, _Log]]:
    """A logger of its own (DEBUG, not propagated) for a store, with ``handler`` (e.g. a `StatementLog`) on it."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)


def run_hv(*argv: str) -> tuple[int, str]:
    """``hv ARGV...`` in this process: exit code and stdout."""
    out = io.StringIO()
    code = main(list(argv), out)
    return code, out.getvalue()


def dsn(settings: Mapping[str, Any]) -> str:
    """A libpq keyword string for connection settings (what ``--coordinator`` takes)."""
    return " ".join(f"{k}={v}" for k, v in settings.items() if k != "shards")


def write_config(path: Path, servers: Sequence[Mapping[str, Any]], backend: str = "jsonb") -> Path:
    """A TOML config file: ``servers`` are dicts with ``shards`` and connection keys (written as they are)."""
    lines = [f'backend = "{backend}"', "pool_block_timeout = 5", ""]
    for server in servers:
        lines.append("[[servers]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in server.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def connect(settings: Mapping[str, Any], **overrides: Any) -> psycopg.Connection[Any]:
    """An autocommit connection (``shards`` ignored)."""
    params = {k: v for k, v in {**settings, **overrides}.items() if k != "shards"}
    return psycopg.connect(**params, autocommit=True, connect_timeout=10)


def shard_table_on(settings: Mapping[str, Any], qualified: str) -> int | None:
    """Rows of a Citus shard table (``shard0001.entities_102008``) read directly on a worker, or None if absent."""
    with connect(settings) as conn:
        if conn.execute("SELECT to_regclass(%s) IS NULL", (qualified,)).fetchone() == (True,):
            return None
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(qualified))).fetchone()
        return int(row[0]) if row else 0


def add_citus_database(cluster: CitusCluster, dbname: str) -> dict[str, Any]:
    """A second Citus database on the cluster's nodes (its own extension and node list); the coordinator's settings.

    Citus keeps its metadata per database, so a database gets ``CREATE EXTENSION citus`` on every node and its
    own ``citus_set_coordinator_host`` / ``citus_add_node``.
    """
    for node in cluster.nodes:
        with connect(node.settings) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        with connect(node.settings, dbname=dbname) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
    coordinator = {**cluster.coordinator_server.settings, "dbname": dbname}
    with connect(coordinator) as conn:
        conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (cluster.coordinator_server.port,))
        for worker in cluster.worker_servers:
            conn.execute("SELECT citus_add_node('127.0.0.1', %s)", (worker.port,))
    return coordinator


def require_citus() -> None:
    """Build Citus if needed; skip (or fail with CI=true) when it cannot be."""
    _require_citus()


def preload_citus(server: LocalServer) -> None:
    """``shared_preload_libraries = 'citus'`` (and what Citus needs) in the server's postgresql.conf, restart."""
    with (server.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n".join(CITUS_SETTINGS) + "\n")
    server.restart()


def prepare_for_citus(cluster: CitusCluster, server: LocalServer) -> None:
    """What a DBA does on a server before adoption: preload Citus, restart, create the extension (no add_node)."""
    preload_citus(server)
    with connect(server.settings, dbname=cluster.dbname) as conn:
        conn.execute("CREATE EXTENSION citus")


README = Path(__file__).resolve().parents[2] / "README.md"
README_MARKER = "<!-- outgrowing-commands -->"


def readme_commands(program: str = "hv") -> list[str]:
    """The ``$ hv ...`` (or other ``program``'s) lines of the README's "Outgrowing" block (after its marker), without
    the prompt."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(README_MARKER)
    out: list[str] = []
    inside = False
    for line in lines[start + 1 :]:
        if line.startswith("```"):
            if inside:
                break
            inside = True
            continue
        if inside and line.startswith(f"$ {program} "):
            out.append(line[2:])
    return out


def readme_command(prefix: str, replace: Mapping[str, str]) -> tuple[list[str], str | None]:
    """The README's command starting with ``prefix`` (e.g. ``hv citus adopt``, ``psql``) as argv without the program
    (for `run_hv`), its words replaced by ``replace`` (the README's placeholders → this test's values), and the file
    it redirects to."""
    import shlex

    program = prefix.split()[0]
    (line,) = [c for c in readme_commands(program) if c.startswith(prefix)]
    words = [replace.get(w, w) for w in shlex.split(line)]
    target = None
    if ">" in words:
        target = words[words.index(">") + 1]
        words = words[: words.index(">")]
    assert words[0] == program, line
    return words[1:], target
