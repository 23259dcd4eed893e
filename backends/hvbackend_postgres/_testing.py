"""Throwaway PostgreSQL server processes from the system binaries, for test suites and benchmarks."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["LocalServer", "find_bin_dir", "free_port", "local_servers", "servers_dir", "sweep_orphans"]

_BIN_CANDIDATES = ("/usr/lib/postgresql/{v}/bin",)
_VERSIONS = ("17", "16", "15", "14", "13")


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` ($HV_PG_BIN, Debian's layout, or the PATH), or None."""
    env = os.environ.get("HV_PG_BIN")
    candidates = [Path(env)] if env else []
    candidates += [Path(p.format(v=v)) for p in _BIN_CANDIDATES for v in _VERSIONS]
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).parent)
    for path in candidates:
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalServer:
    """One PostgreSQL server process with its own data directory and port, run as the ``postgres`` user under root.

    ``hba`` lines are written before the default ``trust`` rules, e.g. ``"host all alice 127.0.0.1/32 scram-sha-256"``.
    """

    def __init__(
        self,
        root: Path,
        *,
        bin_dir: Path,
        port: int | None = None,
        fsync: bool = False,
        hba: Sequence[str] = (),
        settings: Sequence[str] = (),
    ) -> None:
        self.root = root
        self.bin_dir = bin_dir
        self.port = port or free_port()
        self.data = root / "data"
        self.log = root / "server.log"
        self.fsync = fsync
        self.hba = list(hba)
        self.extra_settings = list(settings)
        self.running = False

    def __repr__(self) -> str:
        return f"<LocalServer 127.0.0.1:{self.port} {'running' if self.running else 'stopped'}>"

    @property
    def settings(self) -> dict[str, Any]:
        """Connection settings of the server's ``postgres`` database as the ``postgres`` superuser."""
        return {"host": "127.0.0.1", "port": self.port, "user": "postgres", "dbname": "postgres"}

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)

    def init(self) -> None:
        """Run initdb (trust authentication, no fsync) and write the server's settings."""
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        lines = [
            f"port = {self.port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.root}'",
            f"fsync = {'on' if self.fsync else 'off'}",
            "full_page_writes = off" if not self.fsync else "",
            "synchronous_commit = off" if not self.fsync else "",
            "max_connections = 100",
            *self.extra_settings,
        ]
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n".join(line for line in lines if line) + "\n")
        hba = [
            *self.hba,
            "local all all trust",
            "host all all 127.0.0.1/32 trust",
            "host all all ::1/128 trust",
        ]
        (self.data / "pg_hba.conf").write_text("\n".join(hba) + "\n", encoding="utf-8")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect sessions; ``immediate``: like a crash)."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")
        self.running = False

    def restart(self) -> None:
        """Stop and start again on the same port and data."""
        self.stop()
        self.start()


_PREFIX = "hv-pg-"
_OWNER = "owner.pid"  # the process that started the servers of one directory


def sweep_orphans(bin_dir: Path) -> list[Path]:
    """Stop and delete servers whose starting process is gone (a run killed before its teardown); return them."""
    swept = []
    for top in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        try:
            owner = int((top / _OWNER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not ours, or still being created
        try:
            os.kill(owner, 0)
            continue  # its owner still runs: another test session's servers
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        for data in top.glob("*/data"):
            if (data / "postmaster.pid").exists():
                LocalServer(data.parent, bin_dir=bin_dir).stop("immediate")
        shutil.rmtree(top, ignore_errors=True)
        swept.append(top)
    return swept


def servers_dir(bin_dir: Path) -> Path:
    """A new temporary directory for servers of this process (orphans of killed runs are swept first)."""
    sweep_orphans(bin_dir)
    top = Path(tempfile.mkdtemp(prefix=_PREFIX))
    top.chmod(0o755)
    (top / _OWNER).write_text(str(os.getpid()), encoding="utf-8")
    return top


@contextlib.contextmanager
def local_servers(count: int = 2, *, fsync: bool = False, hba: Sequence[str] = ()) -> Iterator[list[LocalServer]]:
    """Start ``count`` servers in a temporary directory (in parallel); stop them and delete their data afterwards."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("no PostgreSQL binaries (initdb, pg_ctl) found: set HV_PG_BIN")
    top = servers_dir(bin_dir)
    servers = [LocalServer(top / f"s{i}", bin_dir=bin_dir, fsync=fsync, hba=hba) for i in range(count)]
    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            list(pool.map(lambda s: (s.init(), s.start()), servers))
        yield servers
    finally:
        for server in servers:
            server.stop("immediate")
        shutil.rmtree(top, ignore_errors=True)
