"""A second newcomer's findings: a named memory server shared by datastores with different value rules.

README: a database provisioned by one backend and opened with the other is a ConfigError naming both; the memory
backend "applies the value rules of the backend it stands in for". Sharing a named memory server (name=) between
a jsonb-rules store and a text-rules (hstore) store is accepted, and the text store then reads ints and lists,
which hstore can never return.
"""

from __future__ import annotations

import itertools

import pytest

import hvcore

_names = itertools.count()


def test_a_named_memory_server_refuses_a_store_with_other_value_rules() -> None:
    name = f"nc2-shared-{next(_names)}"
    with hvcore.Datastore([dict(shards="0-8", name=name)], backend="memory", values="text") as text_store:
        key = text_store.put(1, 1, s="x")
        # refused when the store is built, or at its first call (as on PostgreSQL)
        with pytest.raises(hvcore.ConfigError):
            json_store = hvcore.Datastore([dict(shards="0-8", name=name)], backend="memory", values="jsonb")
            try:
                json_store.get(key)
            finally:
                json_store.close()
