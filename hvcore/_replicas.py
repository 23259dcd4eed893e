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
import contextvars
import hashlib
import hmac
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
TOKEN_MAX_ENTRIES = 256
"""Most shards a timeline token carries (the newest writes are kept)."""
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

_TOKEN_VERSION = 1
_HEADER = struct.Struct(">BQ")  # version, issued at (Unix ms)
_ENTRY = struct.Struct(">IIQI")  # shard, server id, WAL position, age at issue (ms)
_MAC_SIZE = 12
_UNKEYED = b"hypervault-timeline-v1"


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
    (`token`, `from_token`: about 20 bytes per shard written, base64url). Positions expire ``max_age`` seconds
    (default 60) after their write: by then any standby within the lag bound has them. Thread-safe; the clock
    (``time.time``, Unix seconds) can be injected.
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
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Timeline {len(self)} shard(s) max_age={self.max_age:g}s>"

    def __len__(self) -> int:
        self._expire(self._clock())
        return len(self._entries)

    def _expire(self, now: float) -> None:
        with self._lock:
            old = [shard for shard, (_, _, at) in self._entries.items() if now - at > self.max_age]
            for shard in old:
                del self._entries[shard]

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

        A position recorded on another server (the shard moved since) pins the shard to its primary until it expires.
        """
        entry = self._entries.get(shard_id)
        if entry is None:
            return None
        if self._clock() - entry[2] > self.max_age:
            with self._lock:
                if self._entries.get(shard_id) is entry:
                    del self._entries[shard_id]
            return None
        return entry[1] if entry[0] == server else PIN

    def positions(self) -> dict[int, tuple[int, int]]:
        """Shard → (server id, WAL position) of the writes not expired yet."""
        self._expire(self._clock())
        with self._lock:
            return {shard: (server, lsn) for shard, (server, lsn, _) in self._entries.items()}

    def merge(self, other: Timeline) -> None:
        """Take ``other``'s positions too (the newer write of a shard wins)."""
        for shard, (server, lsn, at) in list(other._entries.items()):
            mine = self._entries.get(shard)
            if mine is None or at >= mine[2]:
                self.note(shard, server, lsn, at=at)

    def token(self, secret: str | bytes | None = None) -> str:
        """These positions as a short URL-safe string, for a cookie or session; `from_token` reads it back.

        With a ``secret`` (str or bytes, ≥ 16 bytes) the token is signed (HMAC-SHA256) and a token forged or
        edited without it is refused; without one, it only carries a checksum (a typo is caught, a forgery is not:
        a forged token can only make its holder's reads go to the primary, or see data as stale as the lag bound).
        A shorter secret, or one that is not str or bytes, is a `ConfigError`.
        """
        now = self._clock()
        self._expire(now)
        with self._lock:
            newest = sorted(self._entries.items(), key=lambda item: item[1][2], reverse=True)[:TOKEN_MAX_ENTRIES]
        issued = int(now * 1000)
        body = _HEADER.pack(_TOKEN_VERSION, issued)
        for shard, (server, lsn, at) in sorted(newest):
            age = min(max(issued - int(at * 1000), 0), 2**32 - 1)
            body += _ENTRY.pack(shard, server, min(lsn, PIN), age)
        mac = hmac.new(_key(secret), body, hashlib.sha256).digest()[:_MAC_SIZE]
        return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode("ascii")

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
        if len(body) < _HEADER.size or (len(body) - _HEADER.size) % _ENTRY.size:
            raise InvalidToken(f"not a timeline token ({len(raw)} bytes do not make one): {show_value(token)}")
        expected = hmac.new(_key(secret), body, hashlib.sha256).digest()[:_MAC_SIZE]
        if not hmac.compare_digest(mac, expected):
            made = "signed with another secret" if secret is not None else "signed with a secret, read without one"
            raise InvalidToken(f"timeline token signature does not match (forged, edited, or {made})")
        version, issued = _HEADER.unpack_from(body)
        if version != _TOKEN_VERSION:
            raise InvalidToken(f"timeline token version {version}, expected {_TOKEN_VERSION}")
        now = clock()
        for offset in range(_HEADER.size, len(body), _ENTRY.size):
            shard, server, lsn, age = _ENTRY.unpack_from(body, offset)
            at = min((issued - age) / 1000, now)  # a clock ahead of ours does not make a position last longer
            if now - at <= timeline.max_age:
                timeline._entries[shard] = (server, lsn, at)
        return timeline


_scoped: contextvars.ContextVar[Timeline | None] = contextvars.ContextVar("hv_timeline", default=None)


def current_timeline(default: Timeline) -> Timeline:
    """The timeline of the current ``db.timeline(...)`` block (thread / asyncio task), else ``default``."""
    scoped = _scoped.get()
    return default if scoped is None else scoped


class TimelineScope:
    """What ``db.timeline(tl)`` returns: inside ``with``, ``tl`` is the current thread's or asyncio task's timeline."""

    __slots__ = ("_token", "timeline")

    def __init__(self, timeline: Timeline) -> None:
        if not isinstance(timeline, Timeline):
            raise ConfigError(f"timeline must be a hvcore.Timeline or None, got {show_value(timeline)}")
        self.timeline = timeline
        self._token: contextvars.Token[Timeline | None] | None = None

    def __enter__(self) -> Timeline:
        self._token = _scoped.set(self.timeline)
        return self.timeline

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _scoped.reset(self._token)
            self._token = None


def labels_of(stores: Iterable[Any]) -> list[str]:
    """The labels of server stores (``host:port/dbname``)."""
    return [str(getattr(store, "label", "?")) for store in stores]
