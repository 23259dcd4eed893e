"""A second newcomer's findings on the shipped pytest plugin's hv_make_datastore factory."""

from __future__ import annotations

from collections.abc import Callable

import hvcore


def test_hv_make_datastore_with_one_range_as_a_string(hv_make_datastore: Callable[..., hvcore.Datastore]) -> None:
    try:
        db = hv_make_datastore(shards="0-4")
    except hvcore.HypervaultError as exc:
        assert "'0-4'" in str(exc), str(exc)
        return
    assert [server["shards"] for server in db.status()] == ["0-4"]
