"""Every ``hv`` command tries a server that accepts TCP but never answers once, then says which and why.

``hv status`` against such a server used to make 3 connection attempts in a row (reading the placement, counting
rows, reading the database's identity: about 19 s with the default timeouts), ``hv init`` 2, and most other
commands 2 (the placement read, then the work): each attempt costs ``connect_timeout``. A command now stops
trying a server at its first failed attempt (`hvcore._attempts`): one attempt per silent server, then an error
naming the server (``host:port/dbname``, never the password) and ``connect_timeout``. The attempts are counted as
TCP connections the listener accepted, not timed.
"""

from __future__ import annotations

import argparse
import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvcore.cli import main
from hvcore.cli._parser import build_parser

SECRET = "s3cr3t-pw"


class SilentServer:
    """A listener that accepts TCP connections and never says a word; counts the connections it accepted."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)  # the accepting thread sees close() soon
        self._closed = False
        self.port: int = self._listener.getsockname()[1]
        self._accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            self._accepted.append(conn)

    def accepted(self) -> int:
        """The connections accepted so far (after a moment for those still in the kernel's backlog)."""
        time.sleep(0.3)
        return len(self._accepted)

    def close(self) -> None:
        self._closed = True
        self._thread.join(5)
        self._listener.close()
        for conn in self._accepted:
            conn.close()


@pytest.fixture
def silent_pair() -> Iterator[tuple[SilentServer, SilentServer]]:
    """Two silent servers."""
    first, second = SilentServer(), SilentServer()
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def leaf_commands() -> list[str]:
    """Every command of ``hv``, sub-commands spelled out (``shard move``)."""
    found: list[str] = []

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}".strip())
                return
        found.append(prefix)

    walk(build_parser(), "")
    return found


# each command's arguments (CONFIG: the config file naming the two silent servers; PORT: the first one's port);
# rounds: how many times the command is meant to reach each server (status --watch: once per round)
COMMANDS: dict[str, tuple[list[str], int]] = {
    "init": (["init", "--config", "CONFIG"], 1),
    "status": (["status", "--config", "CONFIG"], 1),
    "status --json": (["status", "--json", "--config", "CONFIG"], 1),
    "status --watch": (["status", "--config", "CONFIG", "--watch", "0.1", "--count", "2"], 2),
    "shard move": (["shard", "move", "1", "--to", "1", "--config", "CONFIG"], 1),
    "shard plan": (["shard", "plan", "--servers", "1", "--config", "CONFIG"], 1),
    "shard export": (["shard", "export", "--config", "CONFIG"], 1),
    "citus adopt": (
        ["citus", "adopt", "--config", "CONFIG", "--coordinator", "host=127.0.0.1 port=PORT dbname=app"],
        1,
    ),
    "index create": (["index", "create", "--kind", "1", "--field", "x", "--config", "CONFIG"], 1),
    "index drop": (["index", "drop", "--kind", "1", "--field", "x", "--config", "CONFIG"], 1),
    "index list": (["index", "list", "--config", "CONFIG"], 1),
    "migrate": (["migrate", "MIGRATIONS", "--config", "CONFIG"], 1),
    "migrate --status": (["migrate", "MIGRATIONS", "--status", "--config", "CONFIG"], 1),
    "demo": (["demo", "--rows", "10", "--config", "CONFIG"], 1),
    "metrics": (["metrics", "http://127.0.0.1:PORT/metrics"], 1),
}
NO_SERVERS = {"key decode", "key new", "config", "plugins"}  # they connect to nothing


def test_every_command_that_reaches_servers_is_covered() -> None:
    """A new command is added to COMMANDS (or NO_SERVERS), so the class stays guarded."""
    covered = {name.split(" --")[0] for name in COMMANDS} | NO_SERVERS
    missing = [name for name in leaf_commands() if name not in covered]
    assert not missing, f"add these hv commands to COMMANDS or NO_SERVERS: {missing}"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_command_tries_a_silent_server_once(
    name: str, silent_pair: tuple[SilentServer, SilentServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = silent_pair
    config = tmp_path / "hv.toml"
    config.write_text(
        'backend = "jsonb"\noperation_timeout = 1\n'  # connect_timeout 2 s, libpq's least
        f'[[servers]]\nshards = "0-4"\nhost = "127.0.0.1"\nport = {first.port}\ndbname = "app"\n'
        f'password = "{SECRET}"\n'
        f'[[servers]]\nshards = "4-8"\nhost = "127.0.0.1"\nport = {second.port}\ndbname = "app"\n'
        f'password = "{SECRET}"\n'
    )
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_t.sql").write_text("CREATE TABLE t (a int);\n")
    argv, rounds = COMMANDS[name]
    argv = [
        arg.replace("CONFIG", str(config)).replace("MIGRATIONS", str(migrations)).replace("PORT", str(first.port))
        for arg in argv
    ]
    out = io.StringIO()
    code: object = None
    try:
        code = main(argv, out)
    except SystemExit as exc:  # argparse: a usage error
        code = exc.code
    captured = capsys.readouterr()
    said = out.getvalue() + captured.out + captured.err
    attempts = (first.accepted(), second.accepted())
    print(f"\nhv {name}: exit {code}, attempts {attempts}: {said[-600:]}")
    assert max(attempts) <= rounds, f"hv {name}: {attempts} connection attempts at the silent servers: {said}"
    assert SECRET not in said
    if name == "metrics":
        assert code != 0 and f"127.0.0.1:{first.port}" in said and "5 s" in said, said
        return
    labels = [f"127.0.0.1:{server.port}/app" for server in silent_pair]
    assert any(label in said for label in labels), said  # a server it could not reach, as host:port/dbname
    assert "connect_timeout=" in said, said
    if name not in ("status --json", "shard export"):  # JSON says it; export prints the configured map (a warning)
        assert code != 0, f"hv {name} exited {code}: {said}"
