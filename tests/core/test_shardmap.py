"""ShardMap: parsing the 2015 connection list and explicit forms, validation, O(1) lookup."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvcore import ConfigError, InvalidShard, ShardMap, ShardMapError, ShardNotFound
from hvcore._shardmap import format_ranges, parse_shards


def test_old_library_config() -> None:
    shard_map, settings = ShardMap.from_connections(
        [dict(shards="1-9", host="a", port=5432), dict(shards="9-17", host="b")]
    )
    assert [shard_map.server_for(s) for s in (1, 8, 9, 16)] == [0, 0, 1, 1]
    assert settings == [{"host": "a", "port": 5432}, {"host": "b"}]
    assert shard_map.shard_ids == list(range(1, 17))


def test_order_of_the_list_does_not_matter() -> None:
    shard_map = ShardMap(["9-17", "1-9"])
    assert shard_map.server_for(1) == 1 and shard_map.server_for(16) == 0


@pytest.mark.parametrize(
    "spec", ["1-9", "1-5,5-9", " 1 - 9 ", range(1, 9), [1, 2, 3, 4, 5, 6, 7, 8], ["1-3", range(3, 5), 5, "6-9"]]
)
def test_explicit_forms(spec: object) -> None:
    assert ShardMap([spec]).shard_ids == list(range(1, 9))


def test_single_shard_strings_and_full_range() -> None:
    assert ShardMap(["7"]).shard_ids == [7]
    assert len(ShardMap(["0-8192"]).shard_ids) == 8192


@pytest.mark.parametrize(
    ("servers", "fragment"),
    [
        (["9-1"], "reversed"),
        (["5-5"], "empty"),
        (["0-8193"], "out of range"),
        (["x"], "not a shard range"),
        (["1-9", "5-12"], "overlap on shards 5-9"),
        (["1-5", "9-12"], "shards 5-9 lie between"),
        ([(0, 8)], r"shards=\(0, 8\) lists the shard ids 0 and 8: for the range 0..7 write '0-8'"),
        ([[4, 9], "9-12"], r"shards=\(4, 9\) lists the shard ids 4 and 9"),
        ([3.5], "not a shard range"),
        ([True], "not a shard range"),
        ([[]], "no server owns any shard"),
        (["", ""], "no server owns any shard"),
        (["1-5,"], "'' is not a shard range"),
        ([range(0, 10, 2)], "step"),
        ([], "no servers"),
        (["1-3,3-4,1-2"], "listed twice"),
    ],
)
def test_invalid_maps(servers: list[object], fragment: str) -> None:
    with pytest.raises(ShardMapError, match=fragment):
        ShardMap(servers)


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ShardMapError) as info:
        ShardMap(["9-1", "x", "0-8193", "1-9", "5-12"])
    assert len(info.value.problems) == 4
    assert "reversed" in str(info.value) and "not a shard range" in str(info.value)


def test_gaps_can_be_allowed() -> None:
    shard_map = ShardMap(["1-5", "9-12"], allow_gaps=True)
    with pytest.raises(ShardNotFound, match="shard 6 is not mapped"):
        shard_map.server_for(6)


def test_connection_list_problems() -> None:
    with pytest.raises(ShardMapError, match="no 'shards' setting"):
        ShardMap.from_connections([dict(host="a")])
    with pytest.raises(ShardMapError, match="list of dicts"):
        ShardMap.from_connections(dict(shards="1-9"))  # type: ignore[arg-type]
    with pytest.raises(ShardMapError, match="expected a dict"):
        ShardMap.from_connections(["1-9"])  # type: ignore[list-item]


@pytest.mark.parametrize("bad", [12.9, 12.0, "12", True, None, -1, 8192, 2**70])
def test_lookup_rejects_bad_types(bad: object) -> None:
    with pytest.raises(InvalidShard):
        ShardMap(["0-8192"]).server_for(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("shard", [0, 17, 8191])
def test_lookup_of_unmapped(shard: int) -> None:
    with pytest.raises(ShardNotFound, match="mapped shards are 1-17"):
        ShardMap(["1-9", "9-17"]).server_for(shard)


def test_moved_bumps_the_version() -> None:
    shard_map = ShardMap(["1-9", "9-17"])
    moved = shard_map.moved(3, 1)
    assert moved.version == shard_map.version + 1
    assert moved.server_for(3) == 1 and shard_map.server_for(3) == 0
    assert moved.to_specs() == ["1-3,4-9", "3-4,9-17"]
    with pytest.raises(ShardMapError, match="does not exist"):
        shard_map.moved(3, 2)


def test_repr() -> None:
    assert repr(ShardMap(["1-9", "9-17"])) == "<ShardMap v1 #0: 1-9, #1: 9-17>"


def test_format_ranges() -> None:
    assert format_ranges([7, 1, 2, 3]) == "1-4,7-8"
    assert format_ranges([]) == ""


cuts = st.lists(st.integers(0, 8192), min_size=2, max_size=12, unique=True).map(sorted)


@given(cuts, st.randoms())
def test_contiguous_partitions_round_trip(points: list[int], rnd) -> None:
    ranges = [f"{a}-{b}" for a, b in itertools.pairwise(points)]
    order = list(range(len(ranges)))
    rnd.shuffle(order)
    shard_map = ShardMap([ranges[i] for i in order])
    for position, i in enumerate(order):
        a, b = points[i], points[i + 1]
        assert shard_map.server_for(a) == position
        assert shard_map.server_for(b - 1) == position
    assert shard_map.to_specs() == [ranges[i] for i in order]


@given(st.text(max_size=20))
def test_parse_never_crashes(text: str) -> None:
    ranges, problems = parse_shards(text)
    assert ranges or problems or not text.strip()  # blank: a server with no shard yet
    for r in ranges:
        assert 0 <= r.start < r.stop <= 8192


def test_a_new_server_may_own_no_shard_yet() -> None:
    shard_map, _ = ShardMap.from_connections([dict(shards="0-16", host="a"), dict(shards="", host="new")])
    assert shard_map.server_count == 2
    assert shard_map.shards_of(1) == []
    assert shard_map.moved(3, 1).server_for(3) == 1


@pytest.mark.parametrize("spec", [8, 0, 8191])
def test_a_bare_int_is_refused_with_the_range_to_write(spec: int) -> None:
    """``shards=8`` reads as "8 shards" as easily as "shard 8": refused, naming the half-open range for each."""
    with pytest.raises(ConfigError, match=f'write shards="{spec}-{spec + 1}" for shard {spec} alone') as info:
        ShardMap.from_connections([dict(shards=spec, host="a")])
    assert isinstance(info.value, ShardMapError)
    assert (f'shards="0-{spec}" for shards 0..{spec - 1}' in str(info.value)) == (spec > 0)
    assert ShardMap([[spec]]).shard_ids == [spec]  # an int inside a list is still one shard id
