"""`plan_moves`: the moves `hv shard plan` prints, as properties over any rows and placement."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvcore._placement import plan_moves
from hvcore.errors import MoveError


@st.composite
def placements(draw: st.DrawFn) -> tuple[dict[int, int], dict[int, int], int]:
    shards = draw(st.integers(1, 40))
    now = draw(st.integers(1, shards))
    owner = {s: draw(st.integers(0, now - 1)) for s in range(shards)}
    rows = {s: draw(st.integers(0, 10_000)) for s in range(shards)}
    return rows, owner, draw(st.integers(1, shards))


def _spread(rows: dict[int, int], owner: dict[int, int], servers: int) -> int:
    load = [0] * servers
    for shard, server in owner.items():
        load[server] += rows[shard]
    return max(load) - min(load)


@given(placements())
def test_moves_land_every_shard_on_the_servers_asked_for_and_lose_no_rows(
    case: tuple[dict[int, int], dict[int, int], int],
) -> None:
    rows, owner, servers = case
    where = dict(owner)
    for shard, count, source, target in plan_moves(rows, owner, servers):
        assert where[shard] == source and count == rows[shard] and 0 <= target < servers and target != source
        where[shard] = target
    assert all(server < servers for server in where.values())
    if max(owner.values()) < servers:  # growing or even: balancing never widens the spread it started from
        assert _spread(rows, where, servers) <= _spread(rows, owner, servers)


@given(st.integers(1, 30), st.integers(1, 50))
def test_more_servers_than_shards_is_refused_before_any_plan(shards: int, extra: int) -> None:
    owner = dict.fromkeys(range(shards), 0)
    with pytest.raises(MoveError, match=rf"--servers {shards + extra} is more servers than the map has shards"):
        plan_moves(dict.fromkeys(range(shards), 1), owner, shards + extra)
