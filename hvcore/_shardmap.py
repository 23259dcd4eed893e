"""Which physical server owns each logical shard: parsing, validation and O(1) lookup (pure core)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from hvcore._key import KeyLayout, check_shard_id
from hvcore._show import show_value
from hvcore.errors import InvalidShard, ShardMapError, ShardNotFound

__all__ = ["ShardMap", "format_ranges", "parse_shards"]

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_shards(spec: object, layout: KeyLayout = KeyLayout.DEFAULT) -> tuple[list[range], list[str]]:
    """Read one server's ``shards`` setting into half-open ranges, plus the problems found.

    Accepted: ``"1-9"`` (shards 1..8, half-open as in the 2015 library), ``"7"``, ``"1-9, 20-30"``,
    a ``range``, or a list/tuple of these and of ints; ``""`` or ``[]`` for a server that owns no shard yet
    (one just added, before shards are moved to it). A bare int (``shards=8``) is refused: it reads as a count
    as easily as a shard id, so the problem says to write ``"8-9"`` for shard 8 alone (or ``"0-8"``, ``[8]``).
    """
    limit = layout.max_shard_id + 1
    ranges: list[range] = []
    problems: list[str] = []

    def add(start: int, stop: int, text: str) -> None:
        if stop < start:
            problems.append(f"{text!r} is reversed: write the lower shard first ({stop}-{start})")
        elif stop == start:
            problems.append(f"{text!r} is empty: ranges are half-open, so '{start}-{start + 1}' is shard {start} alone")
        elif start < 0 or stop > limit:
            problems.append(f"{text!r} is out of range: shards are 0..{limit - 1} (a range may end at {limit})")
        else:
            ranges.append(range(start, stop))

    def visit(item: object) -> None:
        if isinstance(item, int) and not isinstance(item, bool) and not -limit <= item <= limit:
            problems.append(f"{show_value(item)} is out of range: shards are 0..{limit - 1}")
        elif isinstance(item, range) and not (-limit <= item.start <= limit and -limit <= item.stop <= limit):
            problems.append(f"{show_value(item)} is out of range: shards are 0..{limit - 1} (ends up to {limit})")
        elif isinstance(item, int) and not isinstance(item, bool) and item is spec:
            count = f', or shards="0-{item}" for shards 0..{item - 1}' if item > 0 else ""
            problems.append(
                f"shards={show_value(item)} is an int, which reads as a count as easily as a shard: write "
                f'shards="{item}-{item + 1}" for shard {item} alone{count} (ranges are half-open strings)'
            )
        elif isinstance(item, bool):
            problems.append(f"{item!r} is not a shard range")
        elif isinstance(item, int):
            add(item, item + 1, show_value(item))
        elif isinstance(item, range):
            if item.step != 1:
                problems.append(f"{item!r} has a step: use contiguous ranges")
            else:
                add(item.start, item.stop, f"{item.start}-{item.stop}")
        elif isinstance(item, str):
            if not item.strip() and item is spec:
                return  # a server with no shards yet: one being added, waiting for `hv shard move`
            for part in item.split(","):
                match = _RANGE.match(part)
                if not match:
                    shown = show_value(part.strip())
                    problems.append(f"{shown} is not a shard range: expected 'a-b' (half-open) or 'a'")
                    continue
                if any(group is not None and len(group) > 6 for group in match.groups()):  # int() of huge text raises
                    problems.append(f"{show_value(part.strip())} is out of range: shards are 0..{limit - 1}")
                    continue
                start = int(match.group(1))
                stop = int(match.group(2)) if match.group(2) is not None else start + 1
                add(start, stop, part.strip())
        elif isinstance(item, list | tuple):
            for sub in item:
                visit(sub)
        else:
            problems.append(
                f"{show_value(item)} ({type(item).__name__}) is not a shard range: expected 'a-b', a range or ints"
            )

    visit(spec)
    return ranges, problems


def format_ranges(shard_ids: Iterable[int]) -> str:
    """Write shard ids as compact half-open ranges: ``[1, 2, 3, 7]`` → ``'1-4,7-8'``."""
    out: list[str] = []
    ids = sorted(set(shard_ids))
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(f"{ids[i]}-{ids[j] + 1}")
        i = j + 1
    return ",".join(out)


class ShardMap:
    """Logical shard → index of the server that owns it, validated whole at construction.

    Lookup is one list index, the same cost at 16 or 8192 shards. ``version`` grows with every change
    (a shard move), so processes can tell which map is newer.
    """

    __module__ = "hvcore"
    __slots__ = ("_owner", "_server_count", "layout", "version")

    def __init__(
        self,
        servers: Sequence[object],
        *,
        layout: KeyLayout = KeyLayout.DEFAULT,
        allow_gaps: bool = False,
        version: int = 1,
    ) -> None:
        """Build from one ``shards`` setting per server (server index = position in ``servers``)."""
        self.layout = layout
        self.version = version
        self._server_count = len(servers)
        owner: list[int] = [-1] * (layout.max_shard_id + 1)
        problems: list[str] = []
        if not servers:
            problems.append("no servers: give at least one connection with a 'shards' range")
        claimed: dict[int, list[int]] = {}
        for index, spec in enumerate(servers):
            ranges, found = parse_shards(spec, layout)
            problems.extend(f"server #{index}: {p}" for p in found)
            for r in ranges:
                for shard in r:
                    if owner[shard] != -1 and owner[shard] != index:
                        claimed.setdefault(shard, [owner[shard]]).append(index)
                    elif owner[shard] == index:
                        problems.append(f"server #{index}: shard {shard} is listed twice")
                    owner[shard] = index
        if claimed:
            by_servers: dict[tuple[int, ...], list[int]] = {}
            for shard, owners in claimed.items():
                by_servers.setdefault(tuple(sorted(set(owners))), []).append(shard)
            for owners_key, shards in sorted(by_servers.items()):
                names = " and ".join(f"#{i}" for i in owners_key)
                problems.append(
                    f"servers {names} overlap on shards {format_ranges(shards)}: each shard needs one server"
                )
        mapped = [s for s, o in enumerate(owner) if o != -1]
        if mapped and not allow_gaps:
            holes = [s for s in range(mapped[0], mapped[-1] + 1) if owner[s] == -1]
            if holes:
                pairs = [
                    (i, spec)
                    for i, spec in enumerate(servers)
                    if isinstance(spec, list | tuple)
                    and len(spec) == 2
                    and all(type(v) is int for v in spec)
                    and spec[1] - spec[0] > 1
                ]
                hint = "".join(
                    f"; server #{i}'s shards={tuple(spec)!r} lists the shard ids {spec[0]} and {spec[1]}: for the "
                    f"range {spec[0]}..{spec[1] - 1} write '{spec[0]}-{spec[1]}' or range({spec[0]}, {spec[1]})"
                    for i, spec in pairs
                )
                problems.append(
                    f"shards {format_ranges(holes)} lie between mapped ranges but no server owns them "
                    f"(map them, or pass allow_gaps=True){hint}"
                )
        if servers and not mapped and not problems:
            problems.append("no server owns any shard: give at least one server a range such as shards='0-16'")
        if problems:
            raise ShardMapError(problems)
        self._owner = owner

    @classmethod
    def from_connections(
        cls,
        connections: Sequence[Mapping[str, Any]],
        *,
        layout: KeyLayout = KeyLayout.DEFAULT,
        allow_gaps: bool = False,
    ) -> tuple[ShardMap, list[dict[str, Any]]]:
        """Split the 2015-style list of connection dicts into a map and each server's settings (``shards`` removed)."""
        problems: list[str] = []
        specs: list[object] = []
        settings: list[dict[str, Any]] = []
        if isinstance(connections, Mapping | str | bytes):
            raise ShardMapError([f"connections must be a list of dicts, got {type(connections).__name__}"])
        for index, conn in enumerate(connections):
            if not isinstance(conn, Mapping):
                problems.append(f"server #{index}: expected a dict of connection settings, got {type(conn).__name__}")
                continue
            if "shards" not in conn:
                problems.append(f"server #{index}: no 'shards' setting (e.g. shards='1-9', half-open)")
                continue
            specs.append(conn["shards"])
            settings.append({k: v for k, v in conn.items() if k != "shards"})
        if problems:
            raise ShardMapError(problems)
        return cls(specs, layout=layout, allow_gaps=allow_gaps), settings

    def __repr__(self) -> str:
        per = ", ".join(f"#{i}: {format_ranges(self.shards_of(i))}" for i in range(self._server_count))
        return f"<ShardMap v{self.version} {per}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShardMap):
            return NotImplemented
        return self._owner == other._owner and self.layout == other.layout

    __hash__ = None  # type: ignore[assignment]

    @property
    def server_count(self) -> int:
        """How many servers the map spreads shards over."""
        return self._server_count

    def server_for(self, shard_id: int) -> int:
        """Index of the server owning ``shard_id``; `InvalidShard` for bad ids, `ShardNotFound` if unmapped."""
        if type(shard_id) is int and shard_id >= 0:
            try:
                index = self._owner[shard_id]
            except IndexError:
                pass
            else:
                if index >= 0:
                    return index
                raise ShardNotFound(
                    f"shard {shard_id} is not mapped to any server: mapped shards are {format_ranges(self.shard_ids)}"
                )
        shard = check_shard_id(shard_id, self.layout)  # raises InvalidShard for every bad type/range
        return self.server_for(shard)

    def __contains__(self, shard_id: object) -> bool:
        try:
            self.server_for(shard_id)  # type: ignore[arg-type]
        except (InvalidShard, ShardNotFound):
            return False
        return True

    @property
    def shard_ids(self) -> list[int]:
        """Every mapped shard, ascending."""
        return [s for s, o in enumerate(self._owner) if o != -1]

    def shards_of(self, server: int) -> list[int]:
        """The shards server ``server`` owns, ascending."""
        return [s for s, o in enumerate(self._owner) if o == server]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(shard, server) pairs for every mapped shard."""
        return ((s, o) for s, o in enumerate(self._owner) if o != -1)

    def moved(self, shard_id: int, to_server: int) -> ShardMap:
        """A new map (version + 1) with one shard owned by another existing server."""
        self.server_for(shard_id)
        if type(to_server) is not int or not 0 <= to_server < self._server_count:
            raise ShardMapError([f"target server {to_server!r} does not exist: expected 0..{self._server_count - 1}"])
        new = object.__new__(ShardMap)
        new.layout = self.layout
        new.version = self.version + 1
        new._server_count = self._server_count
        new._owner = list(self._owner)
        new._owner[shard_id] = to_server
        return new

    def to_specs(self) -> list[str]:
        """Each server's shards as a ``shards=`` string, in server order."""
        return [format_ranges(self.shards_of(i)) for i in range(self._server_count)]
