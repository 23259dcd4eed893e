"""Servers that front a distributed database (Citus): adopting a config's shards, node status, moves between nodes.

The façade's side of the `ShardCluster` contract (``hvcore._backend``): a store whose backend knows such engines
answers ``store.shard_cluster()`` (`SupportsShardCluster`); this module picks the stores, checks the arguments and
turns a missing capability into a clear error. The engine's work (Citus's SQL) lives in the backend
(``hvbackend_postgres._citus``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hvcore._backend import AdoptionReport, MoveProgress, MoveReport, ShardCluster, SupportsShardCluster
from hvcore._shardmap import format_ranges
from hvcore.errors import ConfigError, LoginRefused, MoveError, ServerUnavailable

__all__ = ["ADOPT_BATCH", "adopt_shards", "cluster_of", "cluster_status", "move_within_cluster"]

ADOPT_BATCH = 64  # shards staged, distributed and handed over together (one transaction per step and server)


def cluster_of(store: object) -> ShardCluster | None:
    """The distributed database ``store``'s server fronts, or None (a plain server, or a backend without any)."""
    if not isinstance(store, SupportsShardCluster):
        return None
    return store.shard_cluster()


def adopt_shards(
    source: Any,
    coordinator: Any,
    *,
    progress: MoveProgress | None = None,
    batch: int = ADOPT_BATCH,
) -> AdoptionReport:
    """Hand every shard of ``source`` (a `Datastore` over plain servers) to the cluster ``coordinator`` fronts.

    ``coordinator`` is a `Datastore` with one server, the coordinator (a Citus 12-13 coordinator for the PostgreSQL
    backends), of the same backend. Shards stay on the server that holds them (which must be, or become, a worker
    node); no row is copied. Resumable. Raises `ConfigError` when the coordinator or a server cannot take part,
    `MoveError` when a shard cannot be handed over or verified. Progress: ``progress("adopt", done, total)``.
    """
    if type(batch) is not int or batch < 1:
        raise ConfigError(f"batch must be an int ≥ 1, got {batch!r}")
    targets = coordinator.servers
    if len(targets) != 1:
        raise ConfigError(f"the coordinator must be one server, got {len(targets)}")
    if coordinator.backend != source.backend:
        raise ConfigError(
            f"the config stores {source.backend} bodies; open the coordinator with backend={source.backend!r}"
        )
    cluster = cluster_of(targets[0])
    if cluster is None:
        raise ConfigError(
            f"{targets[0].label} is not a Citus coordinator: install Citus 12.0 or newer there "
            "(shared_preload_libraries = 'citus', CREATE EXTENSION citus) and give its connection settings"
        )
    source.reload_placement()  # shards moved by hv shard move are adopted where they are now
    stores = source.servers
    holders = {shard: stores[index] for shard, index in source.shard_map}
    return cluster.adopt(holders, progress=progress, batch=batch)


def cluster_status(db: Any) -> list[dict[str, Any]]:
    """Per server that fronts a distributed database: its engine and, per node, the shards it holds and their size.

    ``[{"server": label, "engine": "Citus 13.0.5", "nodes": [{"node": "host:port", "shards": "0-32",
    "shard_count": 32, "bytes": 1234}, ...]}]``; plain and unreachable servers are left out.
    """
    out: list[dict[str, Any]] = []
    for index, store in enumerate(db.servers):
        try:
            cluster = cluster_of(store)
        except (ServerUnavailable, LoginRefused):
            continue  # hv status reports it as unreachable
        if cluster is None:
            continue
        shards = db.shard_map.shards_of(index)
        placed = cluster.placement(shards)
        by_node: dict[str, list[int]] = {node: [] for node in cluster.nodes()}
        size: dict[str, int] = {}
        for shard, where in placed.items():
            by_node.setdefault(where.node, []).append(shard)
            size[where.node] = size.get(where.node, 0) + where.size_bytes
        nodes = [
            {"node": node, "shards": format_ranges(ids), "shard_count": len(ids), "bytes": size.get(node, 0)}
            for node, ids in by_node.items()
        ]
        undistributed = [s for s in shards if s not in placed]
        entry: dict[str, Any] = {"server": store.label, "engine": cluster.describe(), "nodes": nodes}
        if undistributed:
            entry["not_distributed"] = format_ranges(undistributed)
        out.append(entry)
    return out


def move_within_cluster(
    db: Any, shard_id: int, to_server: int | str, *, progress: MoveProgress | None = None
) -> MoveReport | None:
    """Move a shard between the nodes of the cluster its server fronts, when ``to_server`` names such a node.

    Returns None when ``to_server`` is one of the config's servers (a hypervault move), or the shard's server
    fronts no cluster and the name is unknown (`MoveError`, listing servers and nodes).
    """
    try:
        db._server_index(to_server)
    except MoveError as unknown:
        store = db.store_for(shard_id)
        cluster = cluster_of(store)
        if cluster is None or not isinstance(to_server, str):
            raise
        nodes: Sequence[str] = cluster.nodes()
        if to_server not in nodes:
            raise MoveError(f"{unknown}; or a node of the {cluster.describe()} cluster: {', '.join(nodes)}") from None
        return cluster.move_to_node(shard_id, to_server, progress=progress)
    return None
