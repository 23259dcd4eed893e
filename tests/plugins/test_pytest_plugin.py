"""The shipped pytest plugin, used as a user would (pytester runs a separate test session)."""

from __future__ import annotations

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
