"""Redis sequence sources: blocks of sequence numbers per (shard, millisecond), reserved by a Lua script.

This module holds what `RedisSequence` (``_sequence.py``, generated) and `AsyncRedisSequence` (``_asequence.py``)
share: the scripts, the options and their checks, block sizing and error wrapping.

Every reservation is one round trip running `RESERVE_SCRIPT` on the key ``{prefix}:{shard}:{time_part}``:
``INCRBY`` by the block size, and ``PEXPIRE`` when that call created the key. The numbers handed out are
``[counter_before, counter_after)`` cut to the layout's ``sequence_size``, so two reservations of the same
(shard, millisecond) never overlap, whichever process or host makes them. The key is the millisecond written
into the id, not the Redis server's clock, so hosts whose clocks disagree still draw from one counter.

Two guards keep a counter from being handed out twice, both checked by the script against the server's clock:

- a millisecond further than ``max_skew_ms`` from it is refused (that host's clock is off), so a counter,
  which lives ``expire_ms`` (more than twice ``max_skew_ms``), outlives every request for its millisecond;
- ``{prefix}:born`` records when Redis first served this prefix; milliseconds before ``born + max_skew_ms``
  are refused. After a restart without persistence, a ``FLUSHDB`` or a failover that lost the counters, the
  key is gone and is set again, so no millisecond that may have been served before is served again. A fresh
  Redis therefore starts serving ids ``max_skew_ms`` after its first use (1 s by default).

Redis Cluster (``cluster=True``, ``?cluster=true`` in a URL, or a ``RedisCluster`` client): the script's two keys
must live in one hash slot, and the ``born`` guard must live on the node whose counters it guards (a node that
loses its data loses both). Shards are therefore spread over `CLUSTER_GROUPS` groups (``shard % 256``), each
with its own hash tag and its own guard: counters ``{prefix:g<group>}:{shard}:{time_part}`` and guards
``{prefix:g<group>}:born``. The 256 tags spread over the cluster's nodes; all of one shard's traffic goes to
one slot, as it must. When a guard is found missing, the source sets every missing guard at once, so a fresh
cluster (or a node that lost its data) warms up once, not once per group. Single-node key names are unchanged
(a cluster never shares keys with a single node, so both namings never meet).

Replica failover (``wait_replicas=N``, ``?wait_replicas=N`` in a URL): replication is asynchronous, so a replica
promoted after its primary died may lack the primary's last counters while still holding the ``born`` guard, and
would hand those numbers out again. With ``wait_replicas=N`` every reservation is pipelined with ``WAIT N
<wait_timeout>`` on the same connection (still one round trip, plus the replicas' acknowledgement); the block is
handed out only if at least N replicas acknowledged it, else `hvcore.errors.SequenceUnavailable` says how many did.
N should be the number of replicas, so that whichever is promoted holds every block handed out. Not available
with ``cluster=True``: redis-py's cluster client sends ``WAIT`` to every primary and adds the replies up, and
re-sends a redirected command on its own, apart from its ``WAIT``, so an acknowledgement could belong to another
write; the combination is a `ConfigError`.

Redis must not evict keys (``maxmemory-policy noeviction``, its default). Failures never fall back to
anything local: a Redis that cannot be reached, times out, refuses or (with ``wait_replicas``) is not acknowledged
by enough replicas raises `hvcore.errors.SequenceUnavailable` within `max_wait` seconds (in a cluster, redis-py
also refreshes its slot map after a connection error, which can add up to one more connect timeout per startup
node).
"""

from __future__ import annotations

import inspect
import math
import os
import time
from collections.abc import Awaitable
from typing import Any, Protocol

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.cluster
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from hvcore._key import KeyLayout
from hvcore.errors import ConfigError, SequenceUnavailable
from hvplugin_redis._url import ParsedURL, parse_url

__all__ = [
    "BORN_SCRIPT",
    "CLUSTER_GROUPS",
    "DEFAULT_EXPIRE_MS",
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_MAX_SKEW_MS",
    "RESERVE_SCRIPT",
    "RedisSequenceBase",
    "given_options",
]

DEFAULT_KEY_PREFIX = "hv:seq"
"""Prefix of every key: counters ``hv:seq:{shard}:{time_part}`` and the guard ``hv:seq:born``."""

DEFAULT_EXPIRE_MS = 60_000
"""How long a (shard, millisecond) counter lives: more than twice the clock skew the source accepts."""

DEFAULT_MAX_SKEW_MS = 1_000
"""Largest distance tolerated between a host's clock (the id's millisecond) and the Redis server's clock."""

CLUSTER_GROUPS = 256
"""In a Redis Cluster, shard ``s`` uses the hash tag ``{prefix:g<s % 256>}``. Every process sharing a prefix must
agree on it, so it is a constant, not an option."""

RESERVE_SCRIPT = """\
if redis.replicate_commands then redis.replicate_commands() end
local count = tonumber(ARGV[1])
local limit = tonumber(ARGV[4])
if limit >= 0 then
  local t = tonumber(ARGV[3])
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  if t - now_ms > limit or now_ms - t > limit then
    return redis.error_reply('HVSKEW ' .. string.format('%d', t - now_ms))
  end
  local born = tonumber(redis.call('GET', KEYS[2]) or '')
  if not born then
    born = now_ms
    redis.call('SET', KEYS[2], string.format('%d', born))
  end
  if t < born + limit then
    return redis.error_reply('HVYOUNG ' .. string.format('%d', born + limit))
  end
end
local top = redis.call('INCRBY', KEYS[1], count)
if top == count then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return top
"""
"""Reserve a block. KEYS: the counter of one (shard, ms), the prefix's ``born`` key. ARGV: block size, expiry
in ms, the id's Unix ms, ``max_skew_ms`` (-1: no clock guards).

Returns the counter after the block, or the error ``HVSKEW <ms off>`` / ``HVYOUNG <first Unix ms served>``.
"""

BORN_SCRIPT = """\
if redis.replicate_commands then redis.replicate_commands() end
local born = tonumber(redis.call('GET', KEYS[1]) or '')
if not born then
  local now = redis.call('TIME')
  born = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('SET', KEYS[1], string.format('%d', born))
end
return born
"""
"""Set one ``born`` guard if it is missing, as `RESERVE_SCRIPT` would (server clock); return it (Unix ms)."""

# Errors worth another attempt: the connection, a timeout, or a cluster that cannot be mapped right now.
_CONNECTION_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.RedisClusterException,
    OSError,
)
_CLUSTER_CLIENTS = (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster)


class _SyncClient(Protocol):
    """What the sync source uses of a redis-py (or fakeredis) client."""

    def evalsha(self, sha: str, numkeys: int, /, *keys_and_args: Any) -> Any: ...

    def eval(self, script: str, numkeys: int, /, *keys_and_args: Any) -> Any: ...

    def close(self) -> None: ...


class _AsyncClient(Protocol):
    """What the asyncio source uses of a ``redis.asyncio`` client."""

    def evalsha(self, sha: str, numkeys: int, /, *keys_and_args: Any) -> Awaitable[Any]: ...

    def eval(self, script: str, numkeys: int, /, *keys_and_args: Any) -> Awaitable[Any]: ...


def _sha(script: str) -> str:
    import hashlib

    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


_SCRIPT_SHA = _sha(RESERVE_SCRIPT)
_BORN_SHA = _sha(BORN_SCRIPT)


def _describe_client(client: object) -> str:
    """A password-free name for a client object we were handed."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if isinstance(kwargs, dict):
        if "path" in kwargs:
            return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
        return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    return f"{type(client).__name__} client"


_DEFAULTS: dict[type, dict[str, Any]] = {}


def _defaults(cls: type) -> dict[str, Any]:
    """The keyword defaults of ``cls``'s constructor."""
    found = _DEFAULTS.get(cls)
    if found is None:
        params = inspect.signature(cls).parameters.values()
        found = _DEFAULTS[cls] = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    return found


def _is_young(exc: BaseException) -> bool:
    return "HVYOUNG" in str(exc)


class RedisSequenceBase:
    """Options, block sizing and error wrapping shared by `RedisSequence` and `AsyncRedisSequence`."""

    __slots__ = (
        "_born_keys",
        "_epoch_ms",
        "_fixed_block",
        "_groups",
        "_owns_client",
        "_parsed",
        "_pid",
        "_resume_at",
        "_script_known",
        "_state",
        "_tags",
        "_url",
        "_used_up",
        "cluster",
        "connect_timeout",
        "expire_ms",
        "key_prefix",
        "max_block",
        "max_skew_ms",
        "min_block",
        "name",
        "read_timeout",
        "retries",
        "sequence_size",
        "wait_replicas",
        "wait_timeout",
    )

    def __init__(self, target: object, options: dict[str, Any]) -> None:
        parsed: ParsedURL | None = None
        if isinstance(target, str):
            parsed = parse_url(target)  # before anything else: a bad URL never reaches redis-py
            options = self._merge(options, parsed)
        elif isinstance(target, _CLUSTER_CLIENTS):
            options["cluster"] = True
        self._parsed = parsed
        self._configure(**options)
        if parsed is not None:
            if self.cluster and parsed.unix:
                raise ConfigError(f"a Redis Cluster cannot be reached through a unix socket: {parsed.name!r}")
            if self.cluster and parsed.db != 0:
                raise ConfigError(
                    f"a Redis Cluster has only database 0, got db {parsed.db} in {parsed.name!r} (use /0 or no path)"
                )
        self._url: str | None = parsed.redis_url if parsed is not None else None
        self._owns_client = parsed is not None
        self.name = parsed.name if parsed is not None else _describe_client(target)
        self._pid = os.getpid()

    def _merge(self, given: dict[str, Any], parsed: ParsedURL) -> dict[str, Any]:
        """The constructor's arguments with the URL's options: an argument left at its default takes the URL's."""
        defaults = _defaults(type(self))
        merged = dict(given)
        for name, value in parsed.options.items():
            arg = given[name]
            if arg != defaults[name] and arg != value:
                raise ConfigError(
                    f"{name} is set twice, to {value!r} in the Redis URL {parsed.name!r} and to {arg!r} as an "
                    f"argument: set it in one place"
                )
            merged[name] = value
        return merged

    def _configure(
        self,
        *,
        key_prefix: str,
        connect_timeout: float,
        read_timeout: float,
        retries: int,
        expire_ms: int,
        block_size: int | None,
        min_block: int,
        max_block: int | None,
        max_skew_ms: int | None,
        check_clock: bool,
        cluster: bool,
        wait_replicas: int,
        wait_timeout: float,
        layout: KeyLayout | None,
    ) -> None:
        layout = layout or KeyLayout.DEFAULT
        self.sequence_size = layout.sequence_size
        self._epoch_ms = layout.epoch_ms
        size = self.sequence_size
        if not isinstance(key_prefix, str) or not key_prefix:
            raise ConfigError(f"key_prefix must be a non-empty str, got {key_prefix!r}")
        if type(cluster) is not bool:
            raise ConfigError(f"cluster must be True or False, got {cluster!r}")
        if cluster and ("{" in key_prefix or "}" in key_prefix):
            raise ConfigError(
                f"key_prefix must not contain '{{' or '}}' with cluster=True (the source adds its own hash tags), "
                f"got {key_prefix!r}"
            )
        timeouts = (
            ("connect_timeout", connect_timeout),
            ("read_timeout", read_timeout),
            ("wait_timeout", wait_timeout),
        )
        for label, value in timeouts:
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 3600:
                raise ConfigError(f"{label} must be a number of seconds in (0, 3600), got {value!r}")
        if type(wait_replicas) is not int or wait_replicas < 0:
            raise ConfigError(
                f"wait_replicas must be an int >= 0 (replicas that must acknowledge each block), got {wait_replicas!r}"
            )
        if cluster and wait_replicas:
            raise ConfigError(
                f"wait_replicas={wait_replicas} cannot be combined with cluster=True: redis-py's cluster client sends "
                "WAIT to every primary and adds the replies up, and re-sends a redirected command apart from its WAIT, "
                "so an acknowledgement could belong to another write; use wait_replicas=0 with a Redis Cluster"
            )
        if type(retries) is not int or not 0 <= retries <= 10:
            raise ConfigError(f"retries must be an int in 0..10, got {retries!r}")
        if type(expire_ms) is not int or expire_ms < 1000:
            raise ConfigError(
                f"expire_ms must be an int of at least 1000 (longer than the tolerated clock skew), got {expire_ms!r}"
            )
        if block_size is not None and (type(block_size) is not int or not 1 <= block_size <= size):
            raise ConfigError(f"block_size must be None (adaptive) or an int in 1..{size}, got {block_size!r}")
        max_block = size if max_block is None else max_block
        if type(min_block) is not int or type(max_block) is not int or not 1 <= min_block <= max_block <= size:
            raise ConfigError(
                f"need 1 <= min_block <= max_block <= {size} (the layout's sequence size), "
                f"got min_block={min_block!r}, max_block={max_block!r}"
            )
        if max_skew_ms is None:
            max_skew_ms = min(DEFAULT_MAX_SKEW_MS, expire_ms // 3)
        if type(max_skew_ms) is not int or max_skew_ms < 0 or 2 * max_skew_ms >= expire_ms:
            raise ConfigError(
                f"max_skew_ms must be an int in 0..expire_ms/2 (a counter must outlive every host asking for its "
                f"millisecond), got max_skew_ms={max_skew_ms!r} with expire_ms={expire_ms!r}"
            )
        if type(check_clock) is not bool:
            raise ConfigError(f"check_clock must be True or False, got {check_clock!r}")
        self.max_skew_ms: int | None = max_skew_ms if check_clock else None
        self.key_prefix = key_prefix
        self.cluster = cluster
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.wait_replicas = wait_replicas
        self.wait_timeout = float(wait_timeout)
        self.retries = retries
        self.expire_ms = expire_ms
        self._fixed_block = block_size
        self.min_block = min_block
        self.max_block = max_block
        # Key names: one group (the prefix itself) on a single node; CLUSTER_GROUPS hash tags in a cluster.
        self._groups = CLUSTER_GROUPS if cluster else 1
        self._tags = [f"{{{key_prefix}:g{g}}}" for g in range(CLUSTER_GROUPS)] if cluster else [key_prefix]
        self._born_keys = [f"{tag}:born" for tag in self._tags]
        self._script_known = False  # with wait_replicas: the server has the script (EVALSHA), as far as we know
        self._resume_at = [0] * self._groups  # per group: first time part the server serves (after a fresh start)
        # per shard: [adaptive block size, last time part reserved]
        self._state: dict[int, list[int]] = {}
        # per shard: the last time part whose numbers this source saw run out (asked again: empty, no round trip)
        self._used_up: dict[int, int] = {}

    @property
    def block_size(self) -> int | None:
        """The fixed block size, or None when blocks are sized adaptively."""
        return self._fixed_block

    @property
    def max_wait(self) -> float:
        """Upper bound in seconds of one `reserve` call before it raises `SequenceUnavailable`:
        ``(retries + 1) * (connect_timeout + read_timeout)``, plus ``wait_timeout`` per attempt with
        ``wait_replicas``."""
        return (self.retries + 1) * self._attempt_timeout

    @property
    def _attempt_timeout(self) -> float:
        waited = self.wait_timeout if self.wait_replicas else 0.0
        return self.connect_timeout + self.read_timeout + waited

    @property
    def _wait_ms(self) -> int:
        """``WAIT``'s timeout argument: whole milliseconds, never 0 (which would block forever)."""
        return max(1, math.ceil(self.wait_timeout * 1000))

    def __repr__(self) -> str:
        fixed = self._fixed_block
        sizing = f"block_size={fixed}" if fixed else f"blocks={self.min_block}..{self.max_block}"
        mode = " cluster" if self.cluster else ""
        waits = f" wait_replicas={self.wait_replicas}" if self.wait_replicas else ""
        return f"<{type(self).__name__} {self.name}{mode} prefix={self.key_prefix!r} {sizing}{waits}>"

    def _client_options(self) -> dict[str, Any]:
        # Retries are ours (the loop in reserve): redis-py's own would nest (connect retries inside command
        # retries, with backoff) and multiply the time bound.
        # The reply to WAIT comes up to wait_timeout late: the socket's read timeout leaves it that time.
        return {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self._attempt_timeout - self.connect_timeout,
            "retry": Retry(NoBackoff(), 0),
            "retry_on_timeout": False,
            "decode_responses": False,
        }

    def _skip(self, shard_id: int, time_part: int) -> bool:
        """True when Redis need not be asked: the group still warms up, or the millisecond is used up."""
        if type(shard_id) is not int or shard_id < 0 or type(time_part) is not int or time_part < 0:
            raise ValueError(
                f"reserve() needs non-negative int shard_id and time_part, got {shard_id!r}, {time_part!r}"
            )
        return time_part < self._resume_at[shard_id % self._groups] or self._used_up.get(shard_id) == time_part

    def _plan(self, shard_id: int, time_part: int, wanted: int) -> int:
        """How many numbers to ask Redis for, and update the adaptive size of the shard."""
        if self._fixed_block is not None:
            return self._fixed_block
        state = self._state.get(shard_id)
        if state is None:
            state = self._state[shard_id] = [self.min_block, time_part]
        else:
            size, last = state
            if time_part == last:  # used up a block within one millisecond: ask for more at once
                size = min(size * 2, self.max_block)
            elif time_part > last + 1:  # a quiet millisecond in between: demand fell, waste less
                size = max(size // 2, self.min_block)
            state[0] = size
            state[1] = time_part
        want = wanted if type(wanted) is int and wanted > 0 else 1
        return min(max(state[0], want), self.max_block)

    def _args(self, shard_id: int, time_part: int, count: int) -> tuple[str, str, int, int, int, int]:
        """KEYS and ARGV of `RESERVE_SCRIPT`."""
        skew = -1 if self.max_skew_ms is None else self.max_skew_ms
        group = shard_id % self._groups
        key = f"{self._tags[group]}:{shard_id}:{time_part}"
        return key, self._born_keys[group], count, self.expire_ms, time_part + self._epoch_ms, skew

    def _queue(self, pipe: Any, args: tuple[str, str, int, int, int, int]) -> None:
        """Queue the reservation and its ``WAIT`` in one pipeline: by the script's SHA once the server is known to
        have it, else the script itself (which loads it), so that no WAIT is spent on a ``NOSCRIPT``."""
        if self._script_known:
            pipe.evalsha(_SCRIPT_SHA, 2, *args)
        else:
            pipe.eval(RESERVE_SCRIPT, 2, *args)
        pipe.execute_command("WAIT", self.wait_replicas, self._wait_ms)

    def _replies(self, replies: list[Any]) -> tuple[object, object] | None:
        """The script's reply and WAIT's; None to send the script itself again (the server lost it, a flush or a
        failover, and the replicas do acknowledge). An error reply of either is raised (the script's first)."""
        top, acked = replies
        if isinstance(top, redis.exceptions.NoScriptError):
            self._script_known = False
            if type(acked) is int and acked < self.wait_replicas:
                return None, acked  # the replicas do not acknowledge: sending the script again would not help
            return None
        for reply in (top, acked):
            if isinstance(reply, BaseException):
                raise reply
        self._script_known = True
        return top, acked

    def _check_acks(self, acked: object, started: float) -> None:
        """Refuse a block that fewer than ``wait_replicas`` replicas acknowledged: a failover could serve it again."""
        if type(acked) is not int:
            raise SequenceUnavailable(f"Redis sequence at {self.name} answered {acked!r} to WAIT")
        if acked < self.wait_replicas:
            waited = time.monotonic() - started
            raise SequenceUnavailable(
                f"Redis sequence at {self.name}: {acked} replica(s) acknowledged the reservation within "
                f"wait_timeout={self.wait_timeout:g} s, wait_replicas={self.wait_replicas} asked for ({waited:.2f} s); "
                f"its numbers are not handed out (a failover to a replica lacking them could serve them again)"
            )

    def _block(self, shard_id: int, time_part: int, count: int, top: object) -> range:
        if type(top) is not int or top < count:
            raise SequenceUnavailable(f"Redis sequence at {self.name} answered {top!r} to the reserve script")
        size = self.sequence_size
        if top >= size:  # this block reaches the end of the millisecond: nothing is left to ask for
            self._used_up[shard_id] = time_part
        start = top - count
        if start >= size:
            return range(0)
        return range(start, min(top, size))

    def _born(self, group: int, born: object) -> None:
        """Record a guard's value (Unix ms): its group is served from ``born + max_skew_ms`` on."""
        if type(born) is int and self.max_skew_ms is not None:
            self._resume_at[group] = max(self._resume_at[group], born + self.max_skew_ms - self._epoch_ms)

    def _refused(self, exc: redis.exceptions.ResponseError, shard_id: int, time_part: int, started: float) -> range:
        """An error reply of the script: an empty range while a fresh prefix warms up, else the typed error."""
        text = str(exc)
        if "HVYOUNG" in text:
            group = shard_id % self._groups
            self._resume_at[group] = int(text.rsplit(" ", 1)[-1]) - self._epoch_ms
            wait_ms = self._resume_at[group] - time_part
            if wait_ms <= self.max_wait * 1000:
                return range(0)  # the generator moves on to later milliseconds; none is asked of Redis until then
            raise SequenceUnavailable(
                f"Redis sequence at {self.name} serves ids again in {wait_ms} ms: its counters are new "
                f"(first use, or lost by a restart, flush or failover) and may not reuse milliseconds of the "
                f"last max_skew_ms={self.max_skew_ms}"
            ) from exc
        if "HVSKEW" in text:
            skew = text.rsplit(" ", 1)[-1]
            raise SequenceUnavailable(
                f"Redis sequence at {self.name} refused a millisecond {skew} ms away from the Redis server's "
                f"clock (max_skew_ms={self.max_skew_ms}): this host's clock is off; fix its time sync "
                "(ids from it could repeat ids whose counters already expired)"
            ) from exc
        raise self._fail(exc, 1, started) from exc

    def _fail(self, exc: BaseException, attempts: int, started: float) -> SequenceUnavailable:
        waited = time.monotonic() - started
        hint = ""
        if not self.cluster and isinstance(exc, redis.exceptions.ClusterCrossSlotError | redis.exceptions.AskError):
            hint = " (this is a Redis Cluster node: use cluster=True, or ?cluster=true in the URL)"
        return SequenceUnavailable(
            f"Redis sequence at {self.name} unavailable after {attempts} attempt(s) in {waited:.2f} s "
            f"(bound {self.max_wait:.2f} s): {type(exc).__name__}: {exc}{hint}"
        )

    def _forget(self) -> None:
        """After fork(): the parent's block sizes are not the child's."""
        self._pid = os.getpid()
        self._script_known = False
        self._state = {}
        self._used_up = {}


_OPTION_NAMES = tuple(name for name in inspect.signature(RedisSequenceBase._configure).parameters if name != "self")


def given_options(scope: dict[str, Any]) -> dict[str, Any]:
    """The source's options out of its constructor's ``locals()``, by the names `RedisSequenceBase._configure` takes.

    The constructor's keyword arguments are the one list of options (the URL parser's table is checked against it
    in the tests); a name missing from the constructor fails here, loudly.
    """
    return {name: scope[name] for name in _OPTION_NAMES}
