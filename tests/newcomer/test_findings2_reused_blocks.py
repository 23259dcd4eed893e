"""A second newcomer's findings: the object db.transaction(5) / db.cursor(5) returns, entered a second time.

``tx_block = db.transaction(5)`` kept in a variable and used in two ``with`` statements (in a loop, say) fails
inside contextlib with AttributeError: '_GeneratorContextManager' object has no attribute 'args'.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager
from typing import Any

import pytest

import hvcore

REASON = (
    "entering the object returned by db.transaction(5), tx.transaction() or db.cursor(5) a second time raises "
    "AttributeError \"'_GeneratorContextManager' object has no attribute 'args'\" from contextlib; it should be a "
    "typed error (TransactionError / ConnectionMisuse) saying each block needs its own db.transaction(5) call"
)


@pytest.mark.parametrize("block", ["transaction", "savepoint", "cursor"])
def test_a_block_entered_twice_is_a_typed_error(block: str) -> None:
    with hvcore.Datastore([dict(shards="0-8")], backend="memory") as db, db.transaction(5) as outer:
        made: AbstractContextManager[Any]
        if block == "transaction":
            made = db.transaction(6)
        elif block == "savepoint":
            made = outer.transaction()
        else:
            made = db.cursor(6)
        with made:
            pass
        with pytest.raises(hvcore.HypervaultError, match=r"db\.transaction|tx\.transaction|db\.cursor"), made:
            pass


def test_an_async_transaction_block_entered_twice_is_a_typed_error() -> None:
    async def main() -> Any:
        async with hvcore.AsyncDatastore([dict(shards="0-8")], backend="memory") as db:
            made = db.transaction(5)
            async with made:
                pass
            with pytest.raises(hvcore.HypervaultError, match=r"db\.transaction"):
                async with made:
                    pass

    asyncio.run(main())
