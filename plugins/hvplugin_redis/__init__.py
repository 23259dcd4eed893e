"""hypervault plugin: a Redis sequence source, so keys stay unique across processes and hosts sharing a shard."""

from hvcore.hookspecs import SequenceRegistrar, hookimpl
from hvplugin_redis._asequence import AsyncRedisSequence
from hvplugin_redis._common import (
    BORN_SCRIPT,
    CLUSTER_GROUPS,
    DEFAULT_EXPIRE_MS,
    DEFAULT_KEY_PREFIX,
    DEFAULT_MAX_SKEW_MS,
    RESERVE_SCRIPT,
)
from hvplugin_redis._factory import make_sequence
from hvplugin_redis._sequence import RedisSequence

__all__ = [
    "BORN_SCRIPT",
    "CLUSTER_GROUPS",
    "DEFAULT_EXPIRE_MS",
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_MAX_SKEW_MS",
    "RESERVE_SCRIPT",
    "AsyncRedisSequence",
    "RedisSequence",
    "hypervault_register_sequences",
    "make_sequence",
]


@hookimpl
def hypervault_register_sequences(register: SequenceRegistrar) -> None:
    """Register `make_sequence` for ``redis://`` and ``rediss://`` (TLS) URLs."""
    register("redis", make_sequence)
    register("rediss", make_sequence)
