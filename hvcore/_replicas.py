"""Read replicas, the pure part: replica settings, bounded-lag bookkeeping by WAL position, read-your-writes timelines.

No I/O here: `hvcore._areadrouter` (and its generated sync twin `hvcore._readrouter`) reads WAL positions from the
servers and asks these classes where a read may go.

How lag is bounded without trusting clocks on two machines: every refresh reads the primary's WAL insert position
``L`` (``pg_current_wal_insert_lsn()``) at local time ``t``, then each standby's replayed position ``R``
(``pg_last_wal_replay_lsn()``). A standby with ``R >= L`` holds every transaction committed on the primary before
``t`` (a commit's WAL record is inserted before the commit is visible), so its staleness is at most ``now - t`` for
the newest such sample. An idle primary does not make a caught-up standby look late (``L`` stops moving too, unlike
``now() - pg_last_xact_replay_timestamp()``), and a standby that stops answering ages out of the bound by itself.

Read-your-writes follows what ClickUp's ent-framework calls timelines
(https://github.com/clickup/ent-framework, ``Timeline``): after a write to a shard, the primary's WAL position is
recorded for that shard, and reads of the shard go to the primary until a standby has replayed past it.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import hashlib
import hmac
import itertools
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hvcore._hosts import host_problem
from hvcore._show import show_value
from hvcore.errors import ConfigError, InvalidToken

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_REPLICA_LAG",
    "READ_FROM",
    "TOKEN_MAX_CHARS",
    "LagTracker",
    "Timeline",
    "TimelineScope",
    "check_max_replica_lag",
    "check_read_from",
    "current_timeline",
    "replica_problems",
    "replica_settings",
    "split_replicas",
]

READ_FROM = ("primary", "replica")
"""Where reads go: ``"primary"`` (the default) or ``"replica"`` (a standby within the lag bound, else the primary)."""
DEFAULT_MAX_REPLICA_LAG = 1.0
"""Seconds a standby may be behind its primary and still serve reads (``max_replica_lag``)."""
MAX_LAG_LIMIT = 86_400.0
"""The largest ``max_replica_lag`` accepted (a day)."""
DEFAULT_MAX_AGE = 60.0
"""Seconds a write position of a `Timeline` is kept (after that, any standby within the lag bound has it)."""
TOKEN_MAX_CHARS = 2048
"""Longest timeline token (characters), so that it fits a cookie (browsers keep at least 4096 bytes per cookie,
name and attributes included). A timeline that would need more pins shards to their primaries instead of
carrying their positions (`Timeline.token`): reads go to the primary for a while, never to a standby that
lacks a write."""
PIN = 2**63 - 1
"""A write position no standby reaches: the shard reads from its primary until the entry expires."""
_WAL_PAGE_HEADERS = (24, 40)  # SizeOfXLogShortPHD, SizeOfXLogLongPHD: an insert position just after a page header


def check_read_from(value: object, name: str = "read_from") -> str:
    """``value`` if it is ``"primary"`` or ``"replica"``, else `ConfigError`."""
    if isinstance(value, str) and value in READ_FROM:
        return value
    raise ConfigError(f"{name} must be 'primary' or 'replica', got {show_value(value)}")


def check_max_replica_lag(value: object) -> float:
    """``max_replica_lag`` as seconds in (0, 86400], else `ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_LAG_LIMIT:
        raise ConfigError(
            f"max_replica_lag must be a number of seconds in (0, {MAX_LAG_LIMIT:g}], got {show_value(value)}"
        )
    return float(value)


_NOT_IN_REPLICA = ("shards", "replicas")


def replica_problems(server: Mapping[str, Any], index: int) -> list[str]:
    """What is wrong with server entry ``index``'s ``replicas`` list (empty when fine or absent); no I/O.

    ``replicas`` is a list of connection-setting dicts; each names one standby (``host``/``port``, or a ``conninfo``)
    and inherits the server's other settings (``dbname``, ``user``, ``password``...) unless it gives a ``conninfo``.
    """
    replicas = server.get("replicas")
    if replicas is None:
        return []
    where = f"server #{index}"
    if isinstance(replicas, Mapping | str | bytes) or not isinstance(replicas, Sequence):
        return [
            f"{where}: replicas must be a list of dicts such as [dict(host='standby1', port=5432)] (in a config "
            f"file: one [[servers.replicas]] table per standby, double brackets), got {type(replicas).__name__}"
        ]
    problems: list[str] = []
    for number, replica in enumerate(replicas):
        if not isinstance(replica, Mapping):
            problems.append(
                f"{where}: replicas[{number}] must be a dict of connection settings, got {type(replica).__name__}"
            )
            continue
        for name in replica:
            if not isinstance(name, str):
                problems.append(
                    f"{where}: replicas[{number}] has a setting name that is not a string: {show_value(name)}"
                )
            elif name in _NOT_IN_REPLICA:
                problems.append(
                    f"{where}: replicas[{number}] sets {name!r}: a replica serves its server's shards and has no "
                    f"{name} of its own"
                )
        if not replica:
            problems.append(f"{where}: replicas[{number}] is empty: give at least host and port (or conninfo)")
        elif (problem := host_problem(replica)) is not None:
            problems.append(f"{where}: replicas[{number}]: {problem}")
    return problems


def replica_settings(primary: Mapping[str, Any], replica: Mapping[str, Any]) -> dict[str, Any]:
    """The connection settings of one standby: the primary's settings with the replica's on top.

    A replica giving a ``conninfo`` (or ``dsn``) is taken as it is: the primary's host and port keywords would
    otherwise win over its string (``psycopg.connect(conninfo, **keywords)``).
    """
    if "conninfo" in replica or "dsn" in replica:
        return dict(replica)
    base = {k: v for k, v in primary.items() if k not in ("shards", "replicas", "host", "hostaddr", "port")}
    return {**base, **replica}


def split_replicas(settings: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """Each server's settings without ``replicas``, and each server's standbys' full settings (see `replica_settings`).

    `ConfigError` listing every problem of the ``replicas`` entries (`replica_problems`).
    """
    problems = [p for index, server in enumerate(settings) for p in replica_problems(server, index)]
    if problems:
        raise ConfigError("; ".join(problems))
    primaries = [{k: v for k, v in server.items() if k != "replicas"} for server in settings]
    standbys = [[replica_settings(server, r) for r in server.get("replicas") or ()] for server in settings]
    return primaries, standbys


def settle_lsn(lsn: int, block_size: int) -> int:
    """A primary's insert position moved back over a WAL page header it points just past (no record ends inside
    one, so a standby that replayed up to the page start has everything before the position)."""
    offset = lsn % block_size if block_size > 0 else -1
    return lsn - offset if offset in _WAL_PAGE_HEADERS else lsn


# -- bounded lag ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ReplicaState:
    """What is known of one standby: its last replayed WAL position and when it was read, and whether it is down."""

    label: str
    replayed: int | None = None
    read_at: float = 0.0
    down_until: float = 0.0
    error: str | None = None
    reads: int = 0
    fallbacks: int = 0


class LagTracker:
    """The standbys of one server: primary WAL samples, replayed positions, and which standby may serve a read now.

    Times are ``time.monotonic()`` seconds (injected as ``now`` arguments, so tests never sleep); positions are
    LSNs as ints. Thread-safe.
    """

    def __init__(self, labels: Sequence[str], *, max_lag: float, retry_after: float = 1.0) -> None:
        self.max_lag = max_lag
        self.retry_after = retry_after
        self.replicas = [ReplicaState(label) for label in labels]
        self._samples: deque[tuple[float, int]] = deque(maxlen=256)  # (time, primary insert position), oldest first
        self._lock = threading.Lock()
        self._next = 0  # round robin over usable standbys

    def add_primary(self, now: float, lsn: int) -> None:
        """Record the primary's WAL insert position read at ``now`` (drops samples too old to matter).

        Samples closer than ``max_lag / 128`` to the one before the last replace the last one, so the 256 kept
        cover twice the bound whatever the refresh rate (a standby between two thinned samples is judged by the
        older one: staler, never fresher).
        """
        with self._lock:
            samples = self._samples
            if len(samples) >= 2 and now - samples[-2][0] < self.max_lag / 128:
                samples[-1] = (now, lsn)
            else:
                samples.append((now, lsn))
            horizon = now - 2 * self.max_lag - 1.0
            while len(self._samples) > 1 and self._samples[0][0] < horizon:
                self._samples.popleft()

    def add_replica(self, index: int, now: float, lsn: int | None) -> None:
        """Record standby ``index``'s replayed position read at ``now`` (it answered: no longer down).

        The newest reading wins even if lower (a standby rebuilt behind the one it replaces, or two refreshes
        finishing out of order): a lower position only makes the standby look staler, never fresher.
        """
        state = self.replicas[index]
        with self._lock:
            if lsn is not None:
                state.replayed = lsn
            state.read_at = now
            state.down_until = 0.0
            state.error = None

    def mark_down(self, index: int, now: float, error: str) -> None:
        """Standby ``index`` failed: skip it until ``now + retry_after``, when a refresh probes it again."""
        state = self.replicas[index]
        with self._lock:
            state.down_until = now + self.retry_after
            state.error = error
            state.fallbacks += 1

    def staleness(self, index: int, now: float) -> float | None:
        """Seconds standby ``index`` may be behind at ``now``: ``now - t`` for the newest primary sample ``(t, L)``
        it has replayed past; None if it has replayed no sample yet (or was never read)."""
        replayed = self.replicas[index].replayed
        if replayed is None:
            return None
        with self._lock:
            for at, lsn in reversed(self._samples):
                if lsn <= replayed:
                    return max(now - at, 0.0)
        return None

    def lag_bytes(self, index: int) -> int | None:
        """WAL bytes between the newest primary sample and standby ``index``'s replayed position (0 if past it)."""
        replayed = self.replicas[index].replayed
        if replayed is None or not self._samples:
            return None
        return max(self._samples[-1][1] - replayed, 0)

    def usable(self, index: int, now: float, need: int | None = None) -> bool:
        """True if standby ``index`` is up, within ``max_lag`` at ``now``, and replayed past ``need`` (if given)."""
        state = self.replicas[index]
        if state.down_until > now or state.replayed is None:
            return False
        if need is not None and state.replayed < need:
            return False
        staleness = self.staleness(index, now)
        return staleness is not None and staleness <= self.max_lag

    def choose(self, now: float, need: int | None = None) -> int | None:
        """A usable standby (round robin among them), or None: the read goes to the primary."""
        count = len(self.replicas)
        start = self._next
        for step in range(count):
            index = (start + step) % count
            if self.usable(index, now, need):
                self._next = index + 1
                self.replicas[index].reads += 1
                return index
        return None

    def describe(self, index: int, now: float) -> dict[str, Any]:
        """Standby ``index`` for ``status()``: label, state (in use, lagging, down, unknown), lag, reads served."""
        state = self.replicas[index]
        staleness = self.staleness(index, now)
        if state.down_until > now:
            word = "down"
        elif state.replayed is None:
            word = "unknown"
        elif staleness is not None and staleness <= self.max_lag:
            word = "in use"
        else:
            word = "lagging"
        return {
            "server": state.label,
            "state": word,
            "lag_seconds": None if staleness is None else round(staleness, 3),
            "lag_bytes": self.lag_bytes(index),
            "reads": state.reads,
            "fallbacks": state.fallbacks,
            "error": state.error,
        }


# -- read-your-writes ----------------------------------------------------------------------------------------------

_TOKEN_VERSION = 2
_V1_HEADER = struct.Struct(">BQ")  # version 1 (read only): version, issued at (Unix ms)
_V1_ENTRY = struct.Struct(">IIQI")  # shard, server id, WAL position, age at issue (ms)
_SERVER = struct.Struct(">I")
_MAC_SIZE = 12
_UNKEYED = b"hypervault-timeline-v1"
_ANY = -1  # the "server" of a pinned entry: no standby serves the shard, whichever server it is on now
_PINNED, _BITMAP, _EVERY = 1, 2, 4  # group flags (version 2)

# Version 2 of the token body: version (1 byte), issued at (Unix ms, varint), number of groups (varint), then per
# group: flags (1 byte); unless _PINNED or _EVERY, the server id (4 bytes) and the highest WAL position written to
# it (varint); the age of the group's newest write at issue (ms, varint); unless _EVERY, its shards, as a sorted list
# (count, first, then each gap - 1, varints) or, with _BITMAP, as a bitmap (first shard, byte count, bytes; bit i of
# byte j is shard first + 8j + i), whichever is shorter. Varints are unsigned LEB128. A group stands for "each of
# these shards needs a standby of this server past this position" (_PINNED: needs its primary; _EVERY: every shard
# does), until max_age after the group's newest write: never less strict than the positions it was made from.


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class _Reader:
    """Reads a version 2 token body; `InvalidToken` for anything short or malformed."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.at = 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.at + size > len(self.body):
            raise InvalidToken("not a timeline token (truncated)")
        chunk = self.body[self.at : self.at + size]
        self.at += size
        return chunk

    def varint(self) -> int:
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and shift:
                    raise InvalidToken("not a timeline token (a number written too long)")
                return value
            shift += 7
            if shift > 63:
                raise InvalidToken("not a timeline token (a number too large)")


def _shard_set(shards: list[int]) -> tuple[int, bytes]:
    """``shards`` (sorted, distinct) as a list or a bitmap, whichever is shorter: (flag, encoding)."""
    listed = _varint(len(shards)) + _varint(shards[0])
    listed += b"".join(_varint(b - a - 1) for a, b in itertools.pairwise(shards))
    span = shards[-1] - shards[0] + 1
    if (span + 7) // 8 + 2 >= len(listed):
        return 0, listed
    bits = bytearray((span + 7) // 8)
    for shard in shards:
        offset = shard - shards[0]
        bits[offset >> 3] |= 1 << (offset & 7)
    return _BITMAP, _varint(shards[0]) + _varint(len(bits)) + bytes(bits)


def _read_shards(reader: _Reader, flags: int) -> list[int]:
    if flags & _BITMAP:
        first = reader.varint()
        bits = reader.take(reader.varint())
        return [first + 8 * j + i for j, byte in enumerate(bits) for i in range(8) if byte >> i & 1]
    count = reader.varint()
    if count < 1 or count > len(reader.body):
        raise InvalidToken("not a timeline token (a shard list of a wrong length)")
    shards = [reader.varint()]
    for _ in range(count - 1):
        shards.append(shards[-1] + reader.varint() + 1)
    return shards


def server_id(label: str) -> int:
    """A 32-bit id of a server label (``host:port/dbname``), to tell in a token which server a position belongs to."""
    return int.from_bytes(hashlib.blake2b(label.encode(), digest_size=4).digest(), "big")


def _key(secret: str | bytes | None) -> bytes:
    if secret is None:
        return _UNKEYED
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, bytes) or len(secret) < 16:  # the caller's setting, not the token, is wrong
        shown = f"{len(secret)} bytes" if isinstance(secret, bytes) else type(secret).__name__
        raise ConfigError(f"a timeline secret must be str or bytes of at least 16 bytes, got {shown}")
    return secret


class Timeline:
    """Write positions per shard, for read-your-writes with read replicas (ClickUp ent-framework's "timelines").

    After a write to a shard, the datastore records the primary's WAL position here; reads of that shard then go
    to the primary until a standby has replayed past it. A `Datastore` keeps one for the whole process; give each
    user or request its own with ``db.timeline(tl)`` and carry it across requests and processes as a token
    (`token`, `from_token`: base64url, about 20 bytes per server written to plus a bit or two per shard, at most
    `TOKEN_MAX_CHARS`). Positions expire ``max_age`` seconds (default 60) after their write: by then any standby
    within the lag bound has them. Thread-safe; the clock (``time.time``, Unix seconds) can be injected.
    """

    __module__ = "hvcore"

    def __init__(self, *, max_age: float = DEFAULT_MAX_AGE, clock: Callable[[], float] = time.time) -> None:
        if isinstance(max_age, bool) or not isinstance(max_age, int | float) or not 0 < max_age <= MAX_LAG_LIMIT:
            raise ConfigError(
                f"max_age must be a number of seconds in (0, {MAX_LAG_LIMIT:g}], got {show_value(max_age)}"
            )
        self.max_age = float(max_age)
        self._clock = clock
        self._entries: dict[int, tuple[int, int, float]] = {}  # shard → (server id, WAL position, written at)
        self._every: float | None = None  # every shard reads from its primary until max_age after this (a token's)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        every = ", every shard pinned to its primary" if self._pins_every(self._clock()) else ""
        return f"<Timeline {len(self)} shard(s){every} max_age={self.max_age:g}s>"

    def __len__(self) -> int:
        self._expire(self._clock())
        return len(self._entries)

    def _pins_every(self, now: float) -> bool:
        every = self._every
        return every is not None and now - every <= self.max_age

    def _expire(self, now: float) -> None:
        with self._lock:
            old = [shard for shard, (_, _, at) in self._entries.items() if now - at > self.max_age]
            for shard in old:
                del self._entries[shard]
            if self._every is not None and not self._pins_every(now):
                self._every = None

    def note(self, shard_id: int, server: int, lsn: int, *, at: float | None = None) -> None:
        """Record a write to ``shard_id`` on server ``server`` (`server_id`) at WAL position ``lsn``."""
        when = self._clock() if at is None else at
        with self._lock:
            old = self._entries.get(shard_id)
            if old is not None and old[0] == server and old[1] > lsn:
                lsn = old[1]
            self._entries[shard_id] = (server, lsn, when)

    def need(self, shard_id: int, server: int) -> int | None:
        """The WAL position a standby of ``server`` must have replayed to serve ``shard_id`` (None: any will do).

        A position recorded on another server (the shard moved since) pins the shard to its primary until it
        expires, as does a token that pinned it (`token`).
        """
        entry = self._entries.get(shard_id)
        now = self._clock()
        if entry is None or now - entry[2] > self.max_age:
            if entry is not None:
                with self._lock:
                    if self._entries.get(shard_id) is entry:
                        del self._entries[shard_id]
            return PIN if self._pins_every(now) else None
        return entry[1] if entry[0] == server else PIN

    def positions(self) -> dict[int, tuple[int, int]]:
        """Shard → (server id, WAL position) of the writes not expired yet (server id -1 and position `PIN`: the
        shard reads from its primary, as a token that could not carry its position said)."""
        self._expire(self._clock())
        with self._lock:
            return {shard: (server, lsn) for shard, (server, lsn, _) in self._entries.items()}

    def merge(self, other: Timeline) -> None:
        """Take ``other``'s positions too (the newer write of a shard wins)."""
        for shard, (server, lsn, at) in list(other._entries.items()):
            mine = self._entries.get(shard)
            if mine is None or at >= mine[2]:
                self.note(shard, server, lsn, at=at)
        every = other._every
        if every is not None:
            with self._lock:
                self._every = every if self._every is None else max(self._every, every)

    def token(self, secret: str | bytes | None = None) -> str:
        """These positions as a short URL-safe string, for a cookie or session; `from_token` reads it back.

        The token carries, per server written to, the highest WAL position written and the shards written there
        (a bitmap or a list), with the age of the newest of those writes: read back, each of those shards needs a
        standby past that position until ``max_age`` after that newest write (never less than it needed here).
        It is at most `TOKEN_MAX_CHARS` (2048) characters: a timeline that would need more (many servers and
        shards) carries its shards pinned to their primaries instead (a bit per shard at most), and one that still
        would not fit pins every shard to its primary for ``max_age``: reads go to primaries for a while, never to
        a standby that lacks a write.

        With a ``secret`` (str or bytes, ≥ 16 bytes) the token is signed (HMAC-SHA256) and a token forged or
        edited without it is refused; without one, it only carries a checksum (a typo is caught, a forgery is not:
        a forged token can only make its holder's reads go to the primary, or see data as stale as the lag bound).
        A shorter secret, or one that is not str or bytes, is a `ConfigError`.
        """
        key = _key(secret)
        now = self._clock()
        self._expire(now)
        with self._lock:
            entries = dict(self._entries)
            every = self._every
        issued = int(now * 1000)

        def age(at: float) -> int:
            return max(issued - int(at * 1000), 0)

        groups: dict[int, list[Any]] = {}  # server id (or _ANY) → [highest position, newest write, shards]
        for shard, (server, lsn, at) in entries.items():
            where = _ANY if server == _ANY or lsn >= PIN else server
            group = groups.setdefault(where, [0, at, []])
            group[0] = max(group[0], lsn)
            group[1] = max(group[1], at)
            group[2].append(shard)
        encoded = [self._group(server, lsn, age(at), sorted(shards)) for server, (lsn, at, shards) in groups.items()]
        if every is not None:
            encoded.append(bytes([_EVERY]) + _varint(age(every)))
        chars = _token_chars(sum(map(len, encoded)) + len(encoded))
        if chars > TOKEN_MAX_CHARS and entries:  # too many servers: every shard written pinned to its primary
            newest = max(at for _, _, at in entries.values())
            encoded = [self._group(_ANY, PIN, age(newest), sorted(entries))]
            if every is not None:
                encoded.append(bytes([_EVERY]) + _varint(age(every)))
            chars = _token_chars(sum(map(len, encoded)) + len(encoded))
        if chars > TOKEN_MAX_CHARS:  # too many shards even so: every shard pinned
            newest = max([at for _, _, at in entries.values()] + ([every] if every is not None else []))
            encoded = [bytes([_EVERY]) + _varint(age(newest))]
        body = bytes([_TOKEN_VERSION]) + _varint(issued) + _varint(len(encoded)) + b"".join(encoded)
        mac = hmac.new(key, body, hashlib.sha256).digest()[:_MAC_SIZE]
        return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode("ascii")

    @staticmethod
    def _group(server: int, lsn: int, age_ms: int, shards: list[int]) -> bytes:
        flag, shard_set = _shard_set(shards)
        if server == _ANY:
            return bytes([_PINNED | flag]) + _varint(age_ms) + shard_set
        return bytes([flag]) + _SERVER.pack(server) + _varint(min(lsn, PIN)) + _varint(age_ms) + shard_set

    @classmethod
    def from_token(
        cls,
        token: str | None,
        *,
        secret: str | bytes | None = None,
        max_age: float = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.time,
    ) -> Timeline:
        """A timeline from a `token` (None or ``""``: an empty one); positions older than ``max_age`` are dropped.

        Tokens of version 1 (hypervault before the compact tokens: 20 bytes per shard) are read too.
        `InvalidToken` (a ValueError) for a token that is not one (bad characters, truncated, another version) or
        whose signature does not match ``secret`` (forged, edited, or signed with another secret).
        """
        timeline = cls(max_age=max_age, clock=clock)
        if secret is not None:
            _key(secret)  # a secret too short is refused on every call, not only on the first with a token
        if token is None or token == "":
            return timeline
        if not isinstance(token, str):
            raise InvalidToken(f"a timeline token is a str, got {type(token).__name__} {show_value(token)}")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            raise InvalidToken(f"not a timeline token (not base64url): {show_value(token)}") from None
        body, mac = raw[:-_MAC_SIZE], raw[-_MAC_SIZE:]
        if len(body) < 2:
            raise InvalidToken(f"not a timeline token ({len(raw)} bytes do not make one): {show_value(token)}")
        expected = hmac.new(_key(secret), body, hashlib.sha256).digest()[:_MAC_SIZE]
        if not hmac.compare_digest(mac, expected):
            made = "signed with another secret" if secret is not None else "signed with a secret, read without one"
            raise InvalidToken(f"timeline token signature does not match (forged, edited, or {made})")
        now = clock()
        if body[0] == 1:
            timeline._read_v1(body, now)
        elif body[0] == _TOKEN_VERSION:
            timeline._read_v2(body, now)
        else:
            raise InvalidToken(f"timeline token version {body[0]}, expected {_TOKEN_VERSION} (or 1)")
        return timeline

    def _read_v1(self, body: bytes, now: float) -> None:
        if len(body) < _V1_HEADER.size or (len(body) - _V1_HEADER.size) % _V1_ENTRY.size:
            raise InvalidToken(f"not a timeline token ({len(body)} bytes do not make a version 1 body)")
        _, issued = _V1_HEADER.unpack_from(body)
        for offset in range(_V1_HEADER.size, len(body), _V1_ENTRY.size):
            shard, server, lsn, age = _V1_ENTRY.unpack_from(body, offset)
            at = min((issued - age) / 1000, now)  # a clock ahead of ours does not make a position last longer
            if now - at <= self.max_age:
                self._entries[shard] = (server, lsn, at)

    def _read_v2(self, body: bytes, now: float) -> None:
        reader = _Reader(body)
        reader.take(1)
        issued = reader.varint()
        for _ in range(reader.varint()):
            flags = reader.take(1)[0]
            if flags & ~(_PINNED | _BITMAP | _EVERY):
                raise InvalidToken(f"not a timeline token (group flags {flags:#x})")
            server, lsn = _ANY, PIN
            if not flags & (_PINNED | _EVERY):
                server = _SERVER.unpack(reader.take(_SERVER.size))[0]
                lsn = reader.varint()
            at = min((issued - reader.varint()) / 1000, now)  # a clock ahead of ours does not make it last longer
            if flags & _EVERY:
                if now - at <= self.max_age:
                    self._every = at if self._every is None else max(self._every, at)
                continue
            shards = _read_shards(reader, flags)
            if now - at <= self.max_age:
                for shard in shards:
                    old = self._entries.get(shard)
                    if old is None or old[1] < lsn:  # a pin (or a higher position) is the stricter need
                        self._entries[shard] = (server, lsn, at)
        if reader.at != len(body):
            raise InvalidToken("not a timeline token (bytes after its last group)")


def _token_chars(groups_size: int) -> int:
    """Characters of a token whose groups take ``groups_size`` bytes (header at most 1 + 9 + 3 bytes, and the MAC)."""
    return ((1 + 9 + 3 + groups_size + _MAC_SIZE) * 4 + 2) // 3


_scoped: contextvars.ContextVar[Timeline | None] = contextvars.ContextVar("hv_timeline", default=None)


def current_timeline(default: Timeline) -> Timeline:
    """The timeline of the current ``db.timeline(...)`` block (thread / asyncio task), else ``default``."""
    scoped = _scoped.get()
    return default if scoped is None else scoped


_entered: contextvars.ContextVar[tuple[tuple[int, contextvars.Token[Timeline | None]], ...]] = contextvars.ContextVar(
    "hypervault_timeline_scopes", default=()
)
"""The timeline scopes entered in this context, innermost last: (id of the scope, the token its entry set)."""


class TimelineScope:
    """What ``db.timeline(tl)`` returns: inside ``with``, ``tl`` is the current thread's or asyncio task's timeline.

    Re-entrant and shareable: one scope object may be entered inside itself (a middleware and a handler both entering
    the request's scope) and by several threads or tasks at once; each exit restores what its own entry replaced,
    because the entries are kept per context (a ``contextvars`` stack), not on the object.
    """

    __slots__ = ("timeline",)

    def __init__(self, timeline: Timeline) -> None:
        if not isinstance(timeline, Timeline):
            raise ConfigError(f"timeline must be a hvcore.Timeline or None, got {show_value(timeline)}")
        self.timeline = timeline

    def __enter__(self) -> Timeline:
        token = _scoped.set(self.timeline)
        _entered.set((*_entered.get(), (id(self), token)))
        return self.timeline

    def __exit__(self, *exc: object) -> None:
        stack = _entered.get()
        for index in range(len(stack) - 1, -1, -1):  # this scope's innermost entry (normally the last one)
            if stack[index][0] == id(self):
                _entered.set(stack[:index] + stack[index + 1 :])
                with contextlib.suppress(ValueError):  # entered in another context: nothing of ours to restore
                    _scoped.reset(stack[index][1])
                return


def labels_of(stores: Iterable[Any]) -> list[str]:
    """The labels of server stores (``host:port/dbname``)."""
    return [str(getattr(store, "label", "?")) for store in stores]
