"""The README's interactive examples run as written (the migration example on two of the suite's servers)."""

from __future__ import annotations

import doctest
import itertools
import os
from pathlib import Path
from typing import Any

import psycopg

README = Path(__file__).resolve().parent.parent / "README.md"
_dbs = itertools.count()


def test_readme_examples_run(pg_cluster: Any) -> None:
    dbname = f"hv_readme_{os.getpid()}_{next(_dbs)}"
    servers = []
    for index, shards in enumerate(("0-8", "8-16")):
        settings = pg_cluster.settings(index)
        with psycopg.connect(**settings, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {dbname}")
        servers.append({**settings, "dbname": dbname, "shards": shards})
    result = doctest.testfile(
        str(README), module_relative=False, optionflags=doctest.ELLIPSIS, globs={"SERVERS": servers}
    )
    assert result.attempted >= 5
    assert result.failed == 0
