"""The factory registered for ``redis://`` and ``rediss://`` sequence URLs."""

from __future__ import annotations

from typing import Any

from hvcore.errors import ConfigError
from hvplugin_redis._asequence import AsyncRedisSequence
from hvplugin_redis._sequence import RedisSequence

__all__ = ["make_sequence"]


def make_sequence(url: str, *, asyncio: bool = False, **options: Any) -> RedisSequence | AsyncRedisSequence:
    """The registered factory: a `RedisSequence` (or `AsyncRedisSequence` when ``asyncio``) for ``url``.

    Options in the URL's query and keyword ``options`` are merged (see `RedisSequence`)."""
    if not isinstance(url, str):
        raise ConfigError(f"a Redis sequence URL must be a str, got {url!r}")
    if asyncio:
        return AsyncRedisSequence(url, **options)
    return RedisSequence(url, **options)
