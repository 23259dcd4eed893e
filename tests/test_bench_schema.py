"""The schema benchmark's figures become suite rows (no servers: the normaliser on a recorded result)."""

from __future__ import annotations

import pytest
from test_bench_smoke import load_suite


def test_schema_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    suite = load_suite(monkeypatch)
    assert "schema" in suite.PARTS
    result = {
        "queries": {
            "rows": 100_000,
            "index_build_s": 1.0,
            "eq_indexed_ms": 2.0,
            "eq_gin_ms": 6.0,
            "range_indexed_ms": 4.0,
            "range_scan_ms": 40.0,
            "put_many_indexed_us_per_row": 20.0,
            "put_many_plain_us_per_row": 10.0,
            "put_indexed_us": 220.0,
            "put_plain_us": 200.0,
        },
        "migrate": {"shards": 8192, "provision_s": 10.0, "migrate_s": 8.0, "rerun_s": 1.0},
    }
    rows = {row.measure: row for row in suite.NORMALISERS["schema"](result)}
    assert rows["query by an indexed field, 100,000 rows"].ratio == pytest.approx(3.0)
    assert rows["range on an indexed field, 100,000 rows"].ratio == pytest.approx(10.0)
    assert rows["put_many 1000 rows, 2 indexes"].ratio == pytest.approx(0.5)  # where we lose: index upkeep
    assert rows["hv migrate, 8192 shards, 2 servers"].ratio == pytest.approx(1.25)
    assert rows["hv migrate re-run, 8192 shards"].ratio == pytest.approx(8.0)
