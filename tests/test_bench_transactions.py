"""The transaction benchmark's figures become suite rows (no servers: the normaliser on a recorded result)."""

from __future__ import annotations

import pytest
from test_bench_smoke import load_suite


def test_transactions_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    suite = load_suite(monkeypatch)
    assert "transactions" in suite.PARTS
    result = {
        "sync": [
            {"name": "10 autocommit puts", "seconds": 0.020},
            {"name": "transaction of 10 puts", "seconds": 0.005},
            {"name": "1 autocommit put", "seconds": 0.002},
            {"name": "transaction of 1 put", "seconds": 0.0025},
        ],
        "async": [
            {"name": "10 autocommit puts", "seconds": 0.020},
            {"name": "transaction of 10 puts", "seconds": 0.010},
        ],
    }
    rows = {row.measure: row for row in suite.NORMALISERS["transactions"](result)}
    assert rows["transaction of 10 puts (Datastore)"].ratio == pytest.approx(4.0)
    assert rows["transaction of 10 puts (AsyncDatastore)"].ratio == pytest.approx(2.0)
    assert rows["transaction of 1 put (Datastore)"].ratio == pytest.approx(0.8)  # where we lose
    assert "transaction of 1 put (AsyncDatastore)" not in rows
