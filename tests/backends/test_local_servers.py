"""Throwaway test servers: a run killed before its teardown leaves servers the next run stops."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest
from fixtures.localpg import LocalServer, find_bin_dir, local_servers, sweep_orphans
from fixtures.services import missing_service


def test_servers_of_a_killed_run_are_swept_by_the_next() -> None:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        missing_service("no PostgreSQL server binaries (initdb, pg_ctl): set HV_PG_BIN")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with local_servers(1) as (server,):
        top = server.root.parent
        (top / "owner.pid").write_text(dead.stdout.strip())  # as if the run that started it had been killed
        assert top in sweep_orphans(bin_dir)
        assert not top.exists()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**server.settings, connect_timeout=2)


def test_servers_of_a_live_run_are_left_alone() -> None:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        missing_service("no PostgreSQL server binaries (initdb, pg_ctl): set HV_PG_BIN")
    with local_servers(1) as (server,):
        assert server.root.parent not in sweep_orphans(bin_dir)
        with psycopg.connect(**server.settings, connect_timeout=2) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert isinstance(server, LocalServer)
