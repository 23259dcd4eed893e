"""`AsyncRedisSequence`: Redis-backed blocks of sequence numbers for asyncio (``redis.asyncio``).

This module is the source of ``_sequence.py`` (`RedisSequence`), which tools/async_to_sync.py writes from it:
edit this one, then run the tool. What both share (scripts, options, block sizing, errors) is in ``_common.py``,
whose docstring explains the scheme.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Self, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.exceptions
from redis.backoff import NoBackoff

from hvcore._acompat import ALock
from hvcore._key import KeyLayout
from hvcore.errors import ConfigError, SequenceUnavailable
from hvplugin_redis._common import (
    _BORN_SHA,
    _CONNECTION_ERRORS,
    _SCRIPT_SHA,
    BORN_SCRIPT,
    DEFAULT_EXPIRE_MS,
    DEFAULT_KEY_PREFIX,
    RESERVE_SCRIPT,
    RedisSequenceBase,
    _AsyncClient,
    _is_young,
    given_options,
)

__all__ = ["AsyncRedisSequence"]


class AsyncRedisSequence(RedisSequenceBase):
    """A `SequenceSource` sharing each shard's milliseconds through Redis, unique across processes and hosts.

    ``target`` is a URL (``redis://host:port/db``, ``rediss://…``, ``unix:///path?db=0``; the source owns and
    closes that client) or a ready client (left open by `close`; its own timeouts apply). The URL's query may
    set any keyword argument but ``layout`` (``?key_prefix=myapp&retries=2&cluster=true``; an argument left at
    its default takes the URL's value, two different values are a `ConfigError`), ``socket_timeout`` /
    ``socket_connect_timeout`` (the same as ``read_timeout`` / ``connect_timeout``) and some of redis-py's
    connection options (``client_name``, ``db``, ``health_check_interval``, ``max_connections``, ``protocol``,
    ``socket_keepalive``, ``ssl_*`` with ``rediss://``); anything else is a `ConfigError` raised before connecting.
    ``cluster=True`` talks to a Redis Cluster (``RedisCluster.from_url``; the URL names one startup node) with
    cluster-safe key names (see the module's documentation).
    Blocks are sized adaptively between ``min_block`` and ``max_block`` (doubling while this process uses a
    block up within one millisecond, halving after idle milliseconds) unless ``block_size`` fixes them.
    Counters live ``expire_ms``; a millisecond more than ``max_skew_ms`` from the server's clock is refused
    (``check_clock=False`` turns that off, for tests with made-up clocks only). ``wait_replicas=N`` hands a block
    out only once N replicas acknowledged it (``WAIT``, pipelined with the reservation; up to ``wait_timeout``
    seconds), so a replica promoted after a failover cannot serve it again; not with ``cluster=True``. Every
    failure raises `SequenceUnavailable` within `max_wait` seconds: ``retries + 1`` attempts of connect + read
    timeouts (+ ``wait_timeout`` with ``wait_replicas``; a client handed in keeps its own socket timeouts). On
    asyncio (``redis.asyncio``) each attempt is also capped by its share of `max_wait`.
    """

    __module__ = "hvplugin_redis"
    __slots__ = ("_client", "_closed", "_lock", "_loop", "_ready")

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
        cluster: bool = False,
        wait_replicas: int = 0,
        wait_timeout: float = 0.5,
        layout: KeyLayout | None = None,
    ) -> None:
        super().__init__(target, given_options(locals()))
        self._closed = False
        self._lock = ALock()
        self._ready = not self.cluster  # a cluster client maps the cluster once, before its first command
        self._client: _AsyncClient | None = None
        self._loop: Any = None  # asyncio: the event loop the client's connections belong to (see _get_client)
        if self._url is None:
            self._client = cast(_AsyncClient, target)
        elif True:  # ASYNC
            self._client = self._connect(self._url)  # neither asyncio client connects before its first command
        elif not self.cluster:  # a sync cluster client maps the cluster when it is made: at the first reserve
            self._client = self._connect(self._url)

    def _connect(self, url: str) -> _AsyncClient:
        try:
            if self.cluster:
                options = self._client_options()
                del options["retry_on_timeout"]  # not an argument of RedisCluster
                if True:  # ASYNC
                    options["retry"] = redis.asyncio.retry.Retry(NoBackoff(), 0)
                return cast(_AsyncClient, redis.asyncio.cluster.RedisCluster.from_url(url, **options))
            return cast(_AsyncClient, redis.asyncio.Redis.from_url(url, **self._client_options()))
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {self.name!r}: {exc}") from exc

    async def _get_client(self) -> _AsyncClient:
        client = self._client
        if True:  # ASYNC
            if self._loop is not asyncio.get_running_loop():
                await self._follow_loop()
                client = self._client
        if client is not None:
            return client
        async with self._lock:
            if self._closed or self._url is None:
                raise SequenceUnavailable(f"Redis sequence at {self.name} is closed")
            if self._client is None:
                self._client = self._connect(self._url)
            return self._client

    async def reserve(self, shard_id: int, time_part: int, wanted: int) -> range:
        """Reserve about ``wanted`` numbers (one round trip); an empty range once the millisecond is used up."""
        if self._pid != os.getpid():
            self.after_fork_in_child()
        if self._closed:
            raise SequenceUnavailable(f"Redis sequence at {self.name} is closed")
        if self._skip(shard_id, time_part):
            return range(0)
        count = self._plan(shard_id, time_part, wanted)
        args = self._args(shard_id, time_part, count)
        started = time.monotonic()
        attempt = 0
        client: _AsyncClient | None = None
        while True:
            attempt += 1
            try:
                if True:  # ASYNC
                    async with asyncio.timeout(self._attempt_timeout):
                        client = await self._get_client()
                        if not self._ready:
                            await self._map_cluster(client)
                        top, acked = await self._attempt(client, args)
                else:
                    client = self._get_client()
                    top, acked = self._attempt(client, args)
            except _CONNECTION_ERRORS as exc:  # (asyncio.timeout raises TimeoutError, an OSError)
                if attempt <= self.retries:
                    continue
                raise self._fail(exc, attempt, started) from exc
            except redis.exceptions.ResponseError as exc:  # the guards, OOM, READONLY, NOPERM...: no retry
                if client is not None and self._groups > 1 and _is_young(exc):
                    await self._guard_all(client)
                return self._refused(exc, shard_id, time_part, started)
            except redis.exceptions.RedisError as exc:
                raise self._fail(exc, attempt, started) from exc
            if self.wait_replicas:
                self._check_acks(acked, started)
            return self._block(shard_id, time_part, count, top)

    async def _attempt(self, client: _AsyncClient, args: tuple[str, str, int, int, int, int]) -> tuple[object, object]:
        """One reservation: the script's reply, and the replicas' acknowledgement with ``wait_replicas`` (else None)."""
        if self.wait_replicas:
            return await self._reserve_and_wait(client, args)
        try:
            top = await client.evalsha(_SCRIPT_SHA, 2, *args)
        except redis.exceptions.NoScriptError:
            top = await client.eval(RESERVE_SCRIPT, 2, *args)
        return top, None

    async def _reserve_and_wait(
        self, client: _AsyncClient, args: tuple[str, str, int, int, int, int]
    ) -> tuple[object, object]:
        """The reservation and ``WAIT`` in one pipeline: one connection, so WAIT counts this very write."""
        async with cast(Any, client).pipeline(transaction=False) as pipe:  # (only wait_replicas pipelines)
            self._queue(pipe, args)
            replies = self._replies(await pipe.execute(raise_on_error=False))
            if replies is None:
                self._queue(pipe, args)
                replies = self._replies(await pipe.execute(raise_on_error=False))
        if replies is None:
            raise SequenceUnavailable(f"Redis sequence at {self.name} keeps losing its script (NOSCRIPT)")
        return replies

    if True:  # ASYNC

        async def _map_cluster(self, client: _AsyncClient) -> None:
            """``RedisCluster.initialize()`` by one task while the others wait: redis-py maps the cluster lazily on
            the first command, and tasks sending their first commands concurrently lose connections (redis-py 8.1)."""
            async with self._lock:
                if not self._ready:
                    initialize = getattr(client, "initialize", None)
                    if initialize is not None:
                        await initialize()
                    self._ready = True

    async def _guard_all(self, client: _AsyncClient) -> None:
        """Set every missing guard now (a fresh cluster, or a node that lost its data) so that all groups warm up
        together; best effort within `max_wait` seconds: the first failure stops it (a group not reached warms up by
        itself later)."""
        try:
            if True:  # ASYNC
                async with asyncio.timeout(self.max_wait):
                    await self._set_guards(client)
            else:
                self._set_guards(client)
        except (redis.exceptions.RedisError, *_CONNECTION_ERRORS):
            return

    async def _set_guards(self, client: _AsyncClient) -> None:
        for group, key in enumerate(self._born_keys):
            try:
                born = await client.evalsha(_BORN_SHA, 1, key)
            except redis.exceptions.NoScriptError:
                born = await client.eval(BORN_SCRIPT, 1, key)
            self._born(group, born)

    if True:  # ASYNC

        async def _follow_loop(self) -> None:
            """Used from another event loop: once the loop its connections belong to runs no more (an earlier
            ``asyncio.run()``), a client made from the URL is replaced by a new one (the old one's sockets cannot
            be closed without their loop); a running other loop (another thread's) keeps it: `WrongEventLoop`."""
            from hvcore._acompat import loop_gone, owned_elsewhere

            elsewhere = owned_elsewhere(self._loop, f"Redis sequence at {self.name}")
            if elsewhere is not None:
                raise elsewhere
            if loop_gone(self._loop):
                self._lock = ALock()  # it may wait on the old loop
                self._ready = not self.cluster
                if self._url is not None and self._client is not None:
                    self._client = self._connect(self._url)
            self._loop = asyncio.get_running_loop()

    def after_fork_in_child(self) -> None:
        """Forget the parent's connections (without closing them under the parent) and the block sizes."""
        self._forget()
        self._lock = ALock()
        self._ready = not self.cluster
        if self._url is not None and self._client is not None:
            # redis-py's pool notices the pid change too; a fresh client makes sure nothing is shared.
            if True:  # ASYNC
                self._client = self._connect(self._url)
            else:
                self._client = None if self.cluster else self._connect(self._url)

    async def close(self) -> None:
        """Close the client if this source created it; the source cannot reserve afterwards."""
        if True:  # ASYNC
            client, self._client, self._closed = self._client, None, True
        else:
            with self._lock:
                client, self._client, self._closed = self._client, None, True
        if client is not None and self._owns_client and self._pid == os.getpid():
            if True:  # ASYNC
                from hvcore._acompat import loop_gone

                if loop_gone(self._loop):  # its sockets belong to an event loop that runs no more: left to close
                    return
            await getattr(client, "aclose")()  # noqa: B009 (missing from some redis stubs)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
