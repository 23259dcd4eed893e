"""The shipped pytest plugin, used as a user would (pytester runs a separate test session)."""

from __future__ import annotations

import os
from typing import Any

import pytest

pytest_plugins = ["pytester"]


def test_user_gets_an_in_memory_datastore(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_mine(hv_datastore):
            key = hv_datastore.put(3, 1, name="ada")
            assert hv_datastore.get(key).data == {"name": "ada"}

        def test_isolated(hv_datastore):
            assert hv_datastore.status()[0]["rows"] == 0

        def test_factory(hv_make_datastore):
            store = hv_make_datastore(shards=["1-9", "9-17"], layout="hypervault")
            assert store.put(12, 1, beep="boop").shard_id == 12
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_user_gets_a_real_postgres_datastore_from_a_dsn(
    pytester: pytest.Pytester, pg_main: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    dbname = f"hv_pytest_plugin_{os.getpid()}"  # the shared server: a name of this run's own, never another's
    with psycopg.connect(**{**pg_main, "dbname": "postgres"}, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {dbname}")
        conn.execute(f"CREATE DATABASE {dbname}")
    pytester.makepyfile(
        """
        def test_real(hv_postgres_datastore):
            key = hv_postgres_datastore.put(12, 1, n=1)
            with hv_postgres_datastore.cursor(12) as cur:
                cur.execute("SELECT current_schema() AS s, count(*) AS n FROM entities GROUP BY 1")
                assert cur.fetchone() == {"s": "shard0012", "n": 1}
            assert hv_postgres_datastore.get(key).data == {"n": 1}

        def test_emptied_between_tests(hv_postgres_datastore):
            assert hv_postgres_datastore.status()[1]["rows"] == 0
        """
    )
    dsn = f"host={pg_main['host']} port={pg_main['port']} user={pg_main['user']} dbname={dbname}"
    monkeypatch.setenv("HYPERVAULT_TEST_DSN", dsn)
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    finally:
        with psycopg.connect(**{**pg_main, "dbname": "postgres"}, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
    result.assert_outcomes(passed=2)


def test_without_dsn_or_docker_the_fixture_skips_with_the_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        def test_real(hv_postgres_datastore):
            raise AssertionError("must not run")
        """
    )
    monkeypatch.delenv("HYPERVAULT_TEST_DSN", raising=False)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*HYPERVAULT_TEST_DSN*Docker*"])
