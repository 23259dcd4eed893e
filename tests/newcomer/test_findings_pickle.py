"""A newcomer's findings: handing a Datastore to a multiprocessing worker (spawn) pickles it."""

from __future__ import annotations

import pickle

import pytest

import hvcore


def test_pickling_a_datastore_says_what_to_do_instead() -> None:
    with hvcore.Datastore([dict(shards="0-16")], backend="memory") as db:
        with pytest.raises(TypeError) as caught:
            pickle.dumps(db)
        assert "Datastore" in str(caught.value), str(caught.value)
