"""A newcomer's findings: handing a Datastore to a multiprocessing worker (spawn) pickles it."""

from __future__ import annotations

import pickle

import pytest

import hvcore


@pytest.mark.xfail(
    strict=True,
    reason="pickle.dumps(Datastore) fails with builtins TypeError \"cannot pickle 'module' object\", which names "
    "neither the Datastore nor what to do (build one per process, e.g. Datastore.from_config in the worker)",
)
def test_pickling_a_datastore_says_what_to_do_instead() -> None:
    with hvcore.Datastore([dict(shards="0-16")], backend="memory") as db:
        with pytest.raises(TypeError) as caught:
            pickle.dumps(db)
        assert "Datastore" in str(caught.value), str(caught.value)
