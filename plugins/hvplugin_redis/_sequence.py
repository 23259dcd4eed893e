"""Redis sequence sources: blocks of sequence numbers per (shard, millisecond), reserved by a Lua script.

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

Redis must not evict keys (``maxmemory-policy noeviction``, its default). Failures never fall back to
anything local: a Redis that cannot be reached, times out or refuses raises `hvcore.errors.SequenceUnavailable`
within `max_wait` seconds.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.parse
from collections.abc import Awaitable
from typing import Any, Protocol, Self, cast

import redis
import redis.asyncio
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from hvcore._key import KeyLayout
from hvcore.errors import ConfigError, SequenceUnavailable

__all__ = [
    "DEFAULT_EXPIRE_MS",
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_MAX_SKEW_MS",
    "RESERVE_SCRIPT",
    "AsyncRedisSequence",
    "RedisSequence",
    "make_sequence",
]

DEFAULT_KEY_PREFIX = "hv:seq"
"""Prefix of every key: counters ``hv:seq:{shard}:{time_part}`` and the guard ``hv:seq:born``."""

DEFAULT_EXPIRE_MS = 60_000
"""How long a (shard, millisecond) counter lives: more than twice the clock skew the source accepts."""

DEFAULT_MAX_SKEW_MS = 1_000
"""Largest distance tolerated between a host's clock (the id's millisecond) and the Redis server's clock."""

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

_CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class _SyncClient(Protocol):
    """What the sync source uses of a redis-py (or fakeredis) client."""

    def evalsha(self, sha: str, numkeys: int, /, *keys_and_args: Any) -> Any: ...

    def eval(self, script: str, numkeys: int, /, *keys_and_args: Any) -> Any: ...

    def close(self) -> None: ...


class _AsyncClient(Protocol):
    """What the asyncio source uses of a ``redis.asyncio`` client."""

    def evalsha(self, sha: str, numkeys: int, /, *keys_and_args: Any) -> Awaitable[Any]: ...

    def eval(self, script: str, numkeys: int, /, *keys_and_args: Any) -> Awaitable[Any]: ...


def _script_sha() -> str:
    import hashlib

    return hashlib.sha1(RESERVE_SCRIPT.encode(), usedforsecurity=False).hexdigest()


_SCRIPT_SHA = _script_sha()


def _redact(url: str) -> str:
    """``url`` without its password (and user), for messages and reprs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _describe_client(client: object) -> str:
    """A password-free name for a client object we were handed."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if isinstance(kwargs, dict):
        if "path" in kwargs:
            return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
        return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    return f"{type(client).__name__} client"


class _RedisSequenceBase:
    """Options, block sizing and error wrapping shared by `RedisSequence` and `AsyncRedisSequence`."""

    __slots__ = (
        "_epoch_ms",
        "_fixed_block",
        "_owns_client",
        "_pid",
        "_resume_at",
        "_state",
        "_url",
        "_used_up",
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
    )

    def __init__(
        self,
        target: object,
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
        layout: KeyLayout | None,
    ) -> None:
        layout = layout or KeyLayout.DEFAULT
        self.sequence_size = layout.sequence_size
        self._epoch_ms = layout.epoch_ms
        size = self.sequence_size
        if not isinstance(key_prefix, str) or not key_prefix:
            raise ConfigError(f"key_prefix must be a non-empty str, got {key_prefix!r}")
        for label, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 3600:
                raise ConfigError(f"{label} must be a number of seconds in (0, 3600), got {value!r}")
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
        self.max_skew_ms: int | None = max_skew_ms if check_clock else None
        self.key_prefix = key_prefix
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.retries = retries
        self.expire_ms = expire_ms
        self._fixed_block = block_size
        self.min_block = min_block
        self.max_block = max_block
        self._url: str | None = target if isinstance(target, str) else None
        self._owns_client = self._url is not None
        self.name = _redact(self._url) if self._url is not None else _describe_client(target)
        self._pid = os.getpid()
        self._resume_at = 0  # first time part the server serves (after a fresh start of the prefix)
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
        """Upper bound in seconds of one `reserve` call before it raises `SequenceUnavailable`."""
        return (self.retries + 1) * (self.connect_timeout + self.read_timeout)

    def __repr__(self) -> str:
        fixed = self._fixed_block
        sizing = f"block_size={fixed}" if fixed else f"blocks={self.min_block}..{self.max_block}"
        return f"<{type(self).__name__} {self.name} prefix={self.key_prefix!r} {sizing}>"

    def _client_options(self) -> dict[str, Any]:
        # Retries are ours (the loop in reserve): redis-py's own would nest (connect retries inside command
        # retries, with backoff) and multiply the time bound.
        return {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.read_timeout,
            "retry": Retry(NoBackoff(), 0),
            "retry_on_timeout": False,
            "decode_responses": False,
        }

    def _plan(self, shard_id: int, time_part: int, wanted: int) -> int:
        """How many numbers to ask Redis for, and update the adaptive size of the shard."""
        if type(shard_id) is not int or shard_id < 0 or type(time_part) is not int or time_part < 0:
            raise ValueError(
                f"reserve() needs non-negative int shard_id and time_part, got {shard_id!r}, {time_part!r}"
            )
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
        key = f"{self.key_prefix}:{shard_id}:{time_part}"
        return key, f"{self.key_prefix}:born", count, self.expire_ms, time_part + self._epoch_ms, skew

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

    def _refused(self, exc: redis.exceptions.ResponseError, time_part: int, started: float) -> range:
        """An error reply of the script: an empty range while a fresh prefix warms up, else the typed error."""
        text = str(exc)
        if "HVYOUNG" in text:
            self._resume_at = int(text.rsplit(" ", 1)[-1]) - self._epoch_ms
            wait_ms = self._resume_at - time_part
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
        return SequenceUnavailable(
            f"Redis sequence at {self.name} unavailable after {attempts} attempt(s) in {waited:.2f} s "
            f"(bound {self.max_wait:.2f} s): {type(exc).__name__}: {exc}"
        )


class RedisSequence(_RedisSequenceBase):
    """A `SequenceSource` sharing each shard's milliseconds through Redis, unique across processes and hosts.

    ``target`` is a URL (``redis://host:port/db``, ``rediss://…``, ``unix:///path?db=0``; the source owns and
    closes that client) or a ready ``redis.Redis`` client (left open by `close`; its own timeouts apply).
    Blocks are sized adaptively between ``min_block`` and ``max_block`` (doubling while this process uses a
    block up within one millisecond, halving after idle milliseconds) unless ``block_size`` fixes them.
    Counters live ``expire_ms``; a millisecond more than ``max_skew_ms`` from the server's clock is refused
    (``check_clock=False`` turns that off, for tests with made-up clocks only). Every failure raises
    `SequenceUnavailable` within `max_wait` seconds: ``retries + 1`` attempts of connect + read timeouts.
    """

    __module__ = "hvplugin_redis"
    __slots__ = ("_client",)

    def __init__(
        self,
        target: str | _SyncClient,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        connect_timeout: float = 1.0,
        read_timeout: float = 1.0,
        retries: int = 1,
        expire_ms: int = DEFAULT_EXPIRE_MS,
        block_size: int | None = None,
        min_block: int = 16,
        max_block: int | None = None,
        max_skew_ms: int | None = None,
        check_clock: bool = True,
        layout: KeyLayout | None = None,
    ) -> None:
        super().__init__(
            target,
            key_prefix=key_prefix,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries=retries,
            expire_ms=expire_ms,
            block_size=block_size,
            min_block=min_block,
            max_block=max_block,
            max_skew_ms=max_skew_ms,
            check_clock=check_clock,
            layout=layout,
        )
        if isinstance(target, str):
            self._client: _SyncClient | None = self._connect(target)
        else:
            self._client = target

    def _connect(self, url: str) -> _SyncClient:
        try:
            client = cast(_SyncClient, redis.Redis.from_url(url, **self._client_options()))
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {_redact(url)!r}: {exc}") from exc
        return client

    def reserve(self, shard_id: int, time_part: int, wanted: int) -> range:
        """Reserve about ``wanted`` numbers (one round trip); an empty range once the millisecond is used up."""
        if self._pid != os.getpid():
            self.after_fork_in_child()
        client = self._client
        if client is None:
            raise SequenceUnavailable(f"Redis sequence at {self.name} is closed")
        if time_part < self._resume_at or self._used_up.get(shard_id) == time_part:
            return range(0)
        count = self._plan(shard_id, time_part, wanted)
        args = self._args(shard_id, time_part, count)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                try:
                    top = client.evalsha(_SCRIPT_SHA, 2, *args)
                except redis.exceptions.NoScriptError:
                    top = client.eval(RESERVE_SCRIPT, 2, *args)
            except _CONNECTION_ERRORS as exc:
                if attempt <= self.retries:
                    continue
                raise self._fail(exc, attempt, started) from exc
            except redis.exceptions.ResponseError as exc:  # the guards, OOM, READONLY, NOPERM...: no retry
                return self._refused(exc, time_part, started)
            except redis.exceptions.RedisError as exc:
                raise self._fail(exc, attempt, started) from exc
            return self._block(shard_id, time_part, count, top)

    def after_fork_in_child(self) -> None:
        """Forget the parent's connections (without closing them under the parent) and the block sizes."""
        self._pid = os.getpid()
        self._state = {}
        self._used_up = {}
        if self._url is not None and self._client is not None:
            # redis-py's pool notices the pid change too; a fresh client makes sure nothing is shared.
            self._client = self._connect(self._url)

    def close(self) -> None:
        """Close the client if this source created it; the source cannot reserve afterwards."""
        client, self._client = self._client, None
        if client is not None and self._owns_client and self._pid == os.getpid():
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncRedisSequence(_RedisSequenceBase):
    """The asyncio mirror of `RedisSequence` (``redis.asyncio``); each `reserve` is also capped by `max_wait`."""

    __module__ = "hvplugin_redis"
    __slots__ = ("_client",)

    def __init__(
        self,
        target: str | _AsyncClient,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        connect_timeout: float = 1.0,
        read_timeout: float = 1.0,
        retries: int = 1,
        expire_ms: int = DEFAULT_EXPIRE_MS,
        block_size: int | None = None,
        min_block: int = 16,
        max_block: int | None = None,
        max_skew_ms: int | None = None,
        check_clock: bool = True,
        layout: KeyLayout | None = None,
    ) -> None:
        super().__init__(
            target,
            key_prefix=key_prefix,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries=retries,
            expire_ms=expire_ms,
            block_size=block_size,
            min_block=min_block,
            max_block=max_block,
            max_skew_ms=max_skew_ms,
            check_clock=check_clock,
            layout=layout,
        )
        if isinstance(target, str):
            self._client: _AsyncClient | None = self._connect(target)
        else:
            self._client = target

    def _connect(self, url: str) -> _AsyncClient:
        try:
            client = cast(_AsyncClient, redis.asyncio.Redis.from_url(url, **self._client_options()))
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {_redact(url)!r}: {exc}") from exc
        return client

    async def reserve(self, shard_id: int, time_part: int, wanted: int) -> range:
        """Reserve about ``wanted`` numbers (one round trip); an empty range once the millisecond is used up."""
        if self._pid != os.getpid():
            self.after_fork_in_child()
        client = self._client
        if client is None:
            raise SequenceUnavailable(f"Redis sequence at {self.name} is closed")
        if time_part < self._resume_at or self._used_up.get(shard_id) == time_part:
            return range(0)
        count = self._plan(shard_id, time_part, wanted)
        args = self._args(shard_id, time_part, count)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout(self.connect_timeout + self.read_timeout):
                    try:
                        top = await client.evalsha(_SCRIPT_SHA, 2, *args)
                    except redis.exceptions.NoScriptError:
                        top = await client.eval(RESERVE_SCRIPT, 2, *args)
            except _CONNECTION_ERRORS as exc:  # asyncio.timeout raises TimeoutError, an OSError
                if attempt <= self.retries:
                    continue
                raise self._fail(exc, attempt, started) from exc
            except redis.exceptions.ResponseError as exc:
                return self._refused(exc, time_part, started)
            except redis.exceptions.RedisError as exc:
                raise self._fail(exc, attempt, started) from exc
            return self._block(shard_id, time_part, count, top)

    def after_fork_in_child(self) -> None:
        """Forget the parent's connections and the block sizes; the child connects anew on first use."""
        self._pid = os.getpid()
        self._state = {}
        self._used_up = {}
        if self._url is not None and self._client is not None:
            self._client = self._connect(self._url)

    async def close(self) -> None:
        """Close the client if this source created it; the source cannot reserve afterwards."""
        client, self._client = self._client, None
        if client is not None and self._owns_client and self._pid == os.getpid():
            await getattr(client, "aclose")()  # noqa: B009 (missing from some redis stubs)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def make_sequence(url: str, *, asyncio: bool = False, **options: Any) -> RedisSequence | AsyncRedisSequence:
    """The registered factory: a `RedisSequence` (or `AsyncRedisSequence` when ``asyncio``) for ``url``."""
    if not isinstance(url, str):
        raise ConfigError(f"a Redis sequence URL must be a str, got {url!r}")
    if asyncio:
        return AsyncRedisSequence(url, **options)
    return RedisSequence(url, **options)
