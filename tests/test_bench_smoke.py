"""Smoke test of the benchmark suite: ``python benchmarks/suite.py --quick`` runs, writes its JSON, Markdown and PNG,
and leaves the committed results alone.

No thresholds: the figures of a quick run on a busy CI machine are noise; this only keeps the suite working.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from fixtures.localpg import find_bin_dir
from fixtures.services import missing_service, require_module

from hvcore.cli import main

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "suite.py"
COMMITTED = [ROOT / "benchmarks" / "results" / f"latest.{ext}" for ext in ("json", "md", "png")]


def run_suite(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SUITE), *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def load_suite(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """benchmarks/suite.py as a module; the sys.path entries it adds are undone after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("hv_bench_suite", SUITE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def digests(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.mark.postgres
def test_suite_quick_writes_json_md_and_png(tmp_path: Path) -> None:
    require_module("sqlalchemy", "the peers part needs the 'bench' extra")
    require_module("matplotlib", "the plot needs the 'bench' extra")
    require_module("rich", "the table needs the 'bench' extra")
    if find_bin_dir() is None:
        missing_service("no PostgreSQL server binaries (initdb, pg_ctl) for the benchmark's servers: set HV_PG_BIN")
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"

    done = run_suite("--quick", "--parts", "peers", "--json", str(out_json), "--png", str(out_png))

    assert done.returncode == 0, done.stderr
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


def test_a_quick_run_leaves_the_committed_results_alone() -> None:
    """Without --output/--json/--png, --quick writes bench-results/quick/ (git-ignored), not benchmarks/results/."""
    require_module("matplotlib", "the plot needs the 'bench' extra")
    require_module("rich", "the table needs the 'bench' extra")
    before = digests(COMMITTED)
    started = time.time()

    done = run_suite("--quick", "--parts", "keys")

    assert done.returncode == 0, done.stderr
    assert digests(COMMITTED) == before
    quick = ROOT / "bench-results" / "quick"
    for name in ("latest.json", "latest.md", "latest.png"):
        assert (quick / name).stat().st_mtime >= started - 1, f"{name} was not written by this run"
    assert json.loads((quick / "latest.json").read_text(encoding="utf-8"))["quick"] is True
    ignored = subprocess.run(["git", "check-ignore", "-q", str(quick / "latest.json")], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "bench-results/ must be ignored by git"


def test_output_paths_default_and_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    suite = load_suite(monkeypatch)
    parse = suite.build_parser().parse_args
    results = ROOT / "benchmarks" / "results"
    assert suite.output_paths(parse([])) == (results / "latest.json", results / "latest.png")
    quick = ROOT / "bench-results" / "quick"
    assert suite.output_paths(parse(["--quick"])) == (quick / "latest.json", quick / "latest.png")
    asked = suite.output_paths(parse(["--quick", "--output", str(results)]))
    assert asked == (results / "latest.json", results / "latest.png")
    assert suite.output_paths(parse(["--quick", "--output", "/x", "--png", "/y.png"])) == (
        Path("/x/latest.json"),
        Path("/y.png"),
    )


def test_the_suite_rejects_an_unknown_part() -> None:
    done = run_suite("--parts", "nope", "--json", "/dev/null", "--png", "/dev/null", timeout=60)
    assert done.returncode == 2
    assert "unknown part(s) nope" in done.stderr


def test_hv_bench_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    """The benchmarks are not installed: the suite runs from a checkout as ``python benchmarks/suite.py``."""
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--quick"])
    assert stop.value.code == 2
    assert "invalid choice: 'bench'" in capsys.readouterr().err
