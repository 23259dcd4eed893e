"""Data written before hypervault or with another layout: checks `provision` runs on shards that exist (no I/O).

The 2015 ``hv`` library made its ids on the server, in a PL/pgSQL ``next_id()`` per shard schema holding its epoch
(1379365531352 ms, `KeyLayout.HYPERVAULT`), and stored the kind in a column named ``type``. Ids decode to a time
only with the layout they were made with: a store whose layout does not match the ids already in a shard would
read their times wrongly and make new ids among the old ones (today's ids of the default layout read as 2016
under the 2015 one). Three signs of a mismatch are read from a database before anything is created:

- a ``next_id()`` function in a shard schema whose epoch is not the store's layout's;
- the newest id of a shard decoding to a time later than now (plus a day of clock skew) under the store's layout:
  it was made with an earlier epoch;
- the 2015 table itself (a ``type`` column instead of ``kind``), which must be renamed before hypervault uses it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping

from psycopg import sql

from hvbackend_postgres._schema import TABLE, shard_schema
from hvcore._key import KeyLayout
from hvcore.errors import ConfigError

__all__ = [
    "FUTURE_SKEW_MS",
    "LAYOUT_SAMPLE",
    "LAYOUT_SAMPLE_SQL",
    "LEGACY_SQL",
    "describe_layout",
    "epoch_of_next_id",
    "layout_argument",
    "layout_problem",
    "legacy_signs",
    "legacy_table_error",
    "max_id_query",
]

FUTURE_SKEW_MS = 366 * 86_400_000
"""How far a stored id may be ahead of the local clock before it counts as made with another epoch: a year. Ids of
another preset layout land 10.3 years away (the two epochs' distance), while a writer whose clock ran ahead (or
this host's clock behind) leaves ids hours or days ahead: those are the right layout and must not close the
store (a newcomer's finding: one id two days ahead made every new store refuse to work)."""
PRESETS = {"default": KeyLayout.DEFAULT, "hypervault": KeyLayout.HYPERVAULT}

LEGACY_SQL = (
    "SELECT n.nspname, a.attname IS NOT NULL, p.prosrc, c.relpages > 0 OR c.reltuples > 0 "
    "FROM pg_catalog.pg_namespace n "
    "LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = 'entities' AND c.relkind = 'r' "
    "LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'type' AND NOT a.attisdropped "
    "LEFT JOIN pg_catalog.pg_proc p ON p.pronamespace = n.oid AND p.proname = 'next_id' "
    "WHERE n.nspname = ANY(%s)"
)
"""Per shard schema given as ``%s`` (text[]): its name, whether ``entities`` has the 2015 ``type`` column, the
source of a ``next_id()`` function in it (or NULL), and whether the catalog's statistics say its ``entities``
table holds rows (NULL when the shard has no table: a moved shard's forwarding view). Statistics, not the files:
reading the size of 8192 tables doubled the cost of this query."""
LAYOUT_SAMPLE_SQL = (
    "SELECT n.nspname FROM pg_catalog.pg_namespace n "
    "JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = 'entities' AND c.relkind = 'r' "
    "WHERE n.nspname ~ '^shard[0-9]{4,}$' "
    "AND pg_catalog.has_schema_privilege(n.oid, 'USAGE') AND pg_catalog.has_table_privilege(c.oid, 'SELECT') "
    "ORDER BY c.relpages > 0 OR c.reltuples > 0 DESC, n.nspname LIMIT %s"
)
"""Up to ``%s`` shard schemas of this database with an ``entities`` table the connecting role may read, those whose
statistics say it holds rows first (a table written since its last ANALYZE has none: the first shards by name fill
the sample). Shards the role may not read are left out: the check must not fail a call on another shard (the call's
own statement then says which privilege is missing, as `PermissionDenied`)."""
LAYOUT_SAMPLE = 64
"""Shards whose newest id `provision` reads: the layout is one per database, so any shard holding rows shows a
mismatch; reading every shard's would make a re-run of `provision` on 8192 shards several times slower."""

_EPOCH = re.compile(r"(?<!\d)(1\d{12})(?!\d)")  # a Unix epoch in ms between 2001 and 2286


def max_id_query(shard_ids: Iterable[int]) -> str:
    """One statement returning ``(shard, max(id))`` for each of these shards (a backward primary-key scan each)."""
    parts = [
        sql.SQL("SELECT {shard}::int, max(id) FROM {schema}.{table}").format(
            shard=sql.Literal(shard), schema=sql.Identifier(shard_schema(shard)), table=sql.Identifier(TABLE)
        )
        for shard in shard_ids
    ]
    return sql.SQL(" UNION ALL ").join(parts).as_string(None)


def epoch_of_next_id(source: str | None) -> int | None:
    """The epoch (Unix ms) written in a 2015 ``next_id()`` function's source, or None if it holds none."""
    if not source:
        return None
    match = _EPOCH.search(source)
    return int(match.group(1)) if match else None


def layout_argument(layout: KeyLayout) -> str:
    """How to ask for ``layout``: ``layout='hypervault'``, or ``layout=<epoch ms>`` for a custom one."""
    names = [name for name, preset in PRESETS.items() if preset == layout]
    return f"layout={names[0]!r}" if names else f"layout={layout.epoch_ms}"


def describe_layout(layout: KeyLayout) -> str:
    """``layout='hypervault' (epoch 2013-09-16 21:05:31.352 UTC)``."""
    epoch = dt.datetime.fromtimestamp(layout.epoch_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return f"{layout_argument(layout)} (epoch {epoch} UTC)"


def _decoded(key: int, layout: KeyLayout) -> int:
    return layout.epoch_ms + (key >> layout.time_shift)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def layout_problem(
    shard_id: int, label: str, layout: KeyLayout, *, max_id: int | None, next_id_epoch: int | None, now_ms: int
) -> ConfigError | None:
    """The `ConfigError` naming both layouts if a shard's ids do not match ``layout``, else None."""
    if next_id_epoch is not None and next_id_epoch != layout.epoch_ms:
        theirs = KeyLayout(epoch_ms=next_id_epoch)
        return ConfigError(
            f"shard {shard_id} on {label} holds ids made by the 2015 library's next_id() with "
            f"{describe_layout(theirs)}, but this datastore uses {describe_layout(layout)}: open it with "
            f"{layout_argument(theirs)} (see 'Coming from hv 0.1' in the README)"
        )
    if max_id is None or max_id < 0 or _decoded(max_id, layout) <= now_ms + FUTURE_SKEW_MS:
        return None
    fits = [p for p in PRESETS.values() if p != layout and _decoded(max_id, p) <= now_ms + FUTURE_SKEW_MS]
    hint = f"; under {describe_layout(fits[0])} it was made {_iso(_decoded(max_id, fits[0]))}" if fits else ""
    return ConfigError(
        f"shard {shard_id} on {label} holds id {max_id}, which under {describe_layout(layout)} was made "
        f"{_iso(_decoded(max_id, layout))}, more than a year in the future: its ids were made with an earlier "
        f"epoch{hint}. Open the datastore with the layout the ids were made with (see 'Coming from hv 0.1' in the "
        "README); if the layout is right, a clock that ran ahead wrote it: check the clocks of the writers"
    )


def legacy_table_error(shard_ids: Iterable[int], label: str) -> ConfigError:
    """The error for shards whose ``entities`` table is the 2015 one (its kind column is named ``type``)."""
    shards = sorted(shard_ids)
    first = shard_schema(shards[0])
    return ConfigError(
        f"{len(shards)} shard(s) on {label} (first: {shards[0]}) have the 2015 library's table, whose kind column is "
        f"named type: rename it in each, e.g. ALTER TABLE {first}.entities RENAME COLUMN type TO kind, then provision "
        "again (see 'Coming from hv 0.1' in the README)"
    )


def legacy_signs(
    rows: Iterable[tuple[str, bool, str | None, bool | None]], shards_by_schema: Mapping[str, int]
) -> tuple[list[int], dict[int, int], list[int]]:
    """From `LEGACY_SQL` rows: shards with the 2015 ``type`` column, shard → epoch of its ``next_id()``, and the
    `LAYOUT_SAMPLE` shard tables whose newest id to check: spread evenly over those the statistics say hold rows,
    then over the others (statistics lag behind recent writes)."""
    old_tables: list[int] = []
    epochs: dict[int, int] = {}
    filled: list[int] = []
    unknown: list[int] = []
    for schema, old_column, source, has_rows in rows:
        shard = shards_by_schema[schema]
        if old_column:
            old_tables.append(shard)
        epoch = epoch_of_next_id(source)
        if epoch is not None:
            epochs[shard] = epoch
        if has_rows is not None:
            (filled if has_rows else unknown).append(shard)
    sample = _spread(sorted(filled), LAYOUT_SAMPLE)
    return old_tables, epochs, sample + _spread(sorted(unknown), LAYOUT_SAMPLE - len(sample))


def _spread(items: list[int], count: int) -> list[int]:
    """At most ``count`` of ``items``, evenly spaced."""
    if count <= 0 or not items:
        return []
    step = max(1, -(-len(items) // count))
    return items[::step][:count]
