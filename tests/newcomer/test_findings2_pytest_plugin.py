"""A second newcomer's findings on the shipped pytest plugin: hv_make_datastore and hv_postgres_datastore."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import hvcore

pytest_plugins = ["pytester"]


def test_hv_make_datastore_with_one_range_as_a_string(hv_make_datastore: Callable[..., hvcore.Datastore]) -> None:
    try:
        db = hv_make_datastore(shards="0-4")
    except hvcore.HypervaultError as exc:
        assert "'0-4'" in str(exc), str(exc)
        return
    assert [server["shards"] for server in db.status()] == ["0-4"]


def test_the_postgres_fixture_does_not_empty_a_database_that_holds_data(
    pytester: pytest.Pytester, pg_fresh_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-16"}], backend="jsonb", worker=None) as dev:
        dev.provision()
        keys = dev.put_many(3, 1, [{"customer": f"c{i}"} for i in range(5)])
    pytester.makepyfile(
        """
        def test_something(hv_postgres_datastore):
            hv_postgres_datastore.put(3, 1, a="1")
        """
    )
    dsn = f"postgresql://{pg_fresh_db['user']}@{pg_fresh_db['host']}:{pg_fresh_db['port']}/{pg_fresh_db['dbname']}"
    monkeypatch.setenv("HYPERVAULT_TEST_DSN", dsn)
    pytester.runpytest_subprocess("-p", "no:cacheprovider")
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-16"}], backend="jsonb", worker=None) as dev:
        assert len(dev.get_many(keys)) == 5, "the test session deleted the database's rows"
