"""Smoke test of the benchmark suite: ``hv bench --quick`` on a small part runs and writes its JSON and PNG.

No thresholds: the figures of a quick run on a busy CI machine are noise; this only keeps the suite working.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fixtures.localpg import find_bin_dir
from fixtures.services import missing_service, require_module

import hvcore
from hvcore._cli import bench_suite, main
from hvcore.errors import HypervaultError


@pytest.mark.postgres
def test_hv_bench_quick_writes_json_and_png(tmp_path: Path) -> None:
    require_module("sqlalchemy", "the peers part needs the 'bench' extra")
    require_module("matplotlib", "the plot needs the 'bench' extra")
    require_module("rich", "the table needs the 'bench' extra")
    if find_bin_dir() is None:
        missing_service("no PostgreSQL server binaries (initdb, pg_ctl) for the benchmark's servers: set HV_PG_BIN")
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"

    code = main(["bench", "--quick", "--parts", "peers", "--json", str(out_json), "--png", str(out_png)])

    assert code == 0
    document = json.loads(out_json.read_text(encoding="utf-8"))
    assert document["parts"] == ["peers"] and document["quick"] is True and not document["errors"]
    assert document["machine"]["cores"] == os.cpu_count() and document["versions"]["python"]
    measures = {row["measure"] for row in document["rows"]}
    assert {"put", "get", "put_many"} <= measures
    comparisons = {row["comparison"] for row in document["rows"]}
    assert any("SQLAlchemy" in c for c in comparisons) and any("next_id" in c for c in comparisons)
    assert all(row["ratio"] > 0 for row in document["rows"])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| peers | put |" in (tmp_path / "r.md").read_text(encoding="utf-8")


def test_hv_bench_finds_the_checkout_suite() -> None:
    assert bench_suite() == Path(__file__).resolve().parents[1] / "benchmarks" / "suite.py"


def test_hv_bench_outside_a_checkout_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "site-packages" / "hvcore"
    package.mkdir(parents=True)
    monkeypatch.setattr(hvcore, "__file__", str(package / "__init__.py"))

    with pytest.raises(HypervaultError, match="hv bench runs from a source checkout"):
        bench_suite()
    assert main(["bench", "--quick"]) == 2
    assert "source checkout" in capsys.readouterr().err


def test_hv_bench_rejects_an_unknown_part(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--parts", "nope", "--json", "/dev/null", "--png", "/dev/null"]) == 2
    assert "unknown part(s) nope" in capfd.readouterr().err  # printed by the suite's own process
