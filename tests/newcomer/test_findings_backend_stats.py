"""A newcomer's findings: the memory backend's pool statistics lack keys the README documents for stats()."""

from __future__ import annotations

import hvcore


def test_memory_stats_have_the_documented_pool_keys() -> None:
    with hvcore.Datastore([dict(shards="0-16")], backend="memory") as db:
        db.put(1, 1)
        stats = db.servers[0].stats()
        assert {"pool_max", "size", "available", "borrowed", "waiting", "replacing"} <= set(stats), stats
        assert stats["size"] == stats["available"] + stats["borrowed"] + stats["replacing"]
