"""A newcomer's findings on the shipped pytest plugin's hv_postgres_datastore fixture."""

from __future__ import annotations

from typing import Any

import pytest

pytest_plugins = ["pytester"]


def test_the_postgres_fixture_runs_both_backends_on_one_throwaway_database(
    pytester: pytest.Pytester, pg_fresh_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        def test_put_get(hv_postgres_datastore):
            key = hv_postgres_datastore.put(3, 1, a="1")
            assert hv_postgres_datastore.get(key).data == {"a": "1"}
        """
    )
    dsn = f"postgresql://{pg_fresh_db['user']}@{pg_fresh_db['host']}:{pg_fresh_db['port']}/{pg_fresh_db['dbname']}"
    monkeypatch.setenv("HYPERVAULT_TEST_DSN", dsn)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--hv-backend", "hstore")
    result.assert_outcomes(passed=1)
