"""Smoke test of the concurrency benchmark: ``suite.py --quick --parts concurrency`` runs and reports every row.

No thresholds: a quick run on a busy machine is noise; this keeps the part working (asyncpg is in the ``bench`` extra).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.localpg import find_bin_dir
from fixtures.services import missing_service, require_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.postgres
def test_the_concurrency_part_reports_asyncpg_and_the_lone_call_rows(tmp_path: Path) -> None:
    for module in ("asyncpg", "matplotlib", "rich"):
        require_module(module, "the concurrency part needs the 'bench' extra")
    if find_bin_dir() is None:
        missing_service("no PostgreSQL server binaries (initdb, pg_ctl) for the benchmark's servers: set HV_PG_BIN")
    out_json = tmp_path / "r.json"
    outputs = ["--json", str(out_json), "--png", str(tmp_path / "r.png")]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "suite.py"), "--quick", "--parts", "concurrency", *outputs],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(out_json.read_text(encoding="utf-8"))
    assert not document["errors"] and document["parts"] == ["concurrency"]
    rows = document["rows"]
    comparisons = {(row["measure"], row["comparison"]) for row in rows}
    assert ("64 concurrent gets, pool 8", "raw asyncpg, same SQL (reset off)") in comparisons
    assert ("64 concurrent puts, pool 8", "raw asyncpg, same SQL (reset off)") in comparisons
    assert {"one get at a time, p50", "one get at a time, p99", "sync get, one thread, p50"} <= {
        r["measure"] for r in rows
    }
    assert all(row["ratio"] > 0 for row in rows)
    puts = document["results"]["concurrency"]["async"]["put_ops_per_s"]
    assert puts["psycopg_pipeline"] > 0 and puts["psycopg_multirow"] > 0  # the designs measured and not adopted
