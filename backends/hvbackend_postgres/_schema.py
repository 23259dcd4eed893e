"""Schema layout of the PostgreSQL backends: a schema per logical shard, its DDL and hot-path SQL (psycopg.sql)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from hvcore._schemadefs import BODY_INDEX_NAME
from hvcore.errors import ShardMoved

__all__ = [
    "BODY_INDEX",
    "BODY_INDEX_UNSET",
    "BODY_TYPES",
    "KIND_INDEX",
    "MOVED_SQLSTATE",
    "PKEY_INDEX",
    "STUB_PLANNING_STATES",
    "TABLE",
    "ShardSQL",
    "body_index_ddl",
    "catalog_query",
    "count_query",
    "drop_stub_sql",
    "moved_error",
    "required_relations",
    "shard_ddl",
    "shard_schema",
    "stub_probe_sql",
    "stub_sql",
    "truncate_query",
]

TABLE = "entities"
PKEY_INDEX = "entities_pkey"
KIND_INDEX = "entities_kind_id_idx"
BODY_INDEX = BODY_INDEX_NAME
BODY_INDEX_UNSET = f"{BODY_INDEX} (fastupdate unset)"  # how `catalog_query` lists a body index of an earlier release
BODY_TYPES = {"hstore": "hstore", "jsonb": "jsonb"}


def required_relations(backend: str) -> frozenset[str]:
    """Relations a provisioned shard has: the table, its primary key and the kind index.

    The body index (`BODY_INDEX`, for ``where``) is optional: built by ``create_body_index`` and then given to
    every new shard of the server (it is recorded there, ``hvbackend_postgres._indexes``), not part of the layout.
    """
    del backend  # every backend has the same relations; kept for callers that name it
    return frozenset({TABLE, PKEY_INDEX, KIND_INDEX})


def shard_schema(shard_id: int) -> str:
    """The schema holding one logical shard: ``shard0012`` for shard 12 (the 2015 library's naming)."""
    return f"shard{shard_id:04d}"


def _render(query: sql.Composable) -> str:
    return query.as_string(None)


def body_index_ddl(schema: str, ext_schema: str | None, *, concurrently: bool) -> sql.Composed:
    """``CREATE INDEX [CONCURRENTLY] IF NOT EXISTS entities_body_idx`` on ``schema``'s table: the body index.

    GIN ``jsonb_path_ops``, which hashes values so any size fits; for hstore (``ext_schema`` given) on the
    expression ``hstore_to_jsonb(body)``, what ``where`` filters compare (``gin_hstore_ops`` stores whole values, so
    a value over ~2.7 kB would make an insert fail; GiST has no limit but cost 33 µs per inserted row here, GIN
    2.7 µs). ``fastupdate = off``: no pending list, so a write pays its own index update and no later one pays a
    flush of everyone's.
    """
    if ext_schema is not None:
        indexed: sql.Composable = sql.SQL("(({}.hstore_to_jsonb(body)) jsonb_path_ops)").format(
            sql.Identifier(ext_schema)
        )
    else:
        indexed = sql.SQL("(body jsonb_path_ops)")
    return sql.SQL(
        "CREATE INDEX {concurrently}IF NOT EXISTS {name} ON {schema}.{table} USING gin {indexed} "
        "WITH (fastupdate = off)"
    ).format(
        concurrently=sql.SQL("CONCURRENTLY " if concurrently else ""),
        name=sql.Identifier(BODY_INDEX),
        schema=sql.Identifier(schema),
        table=sql.Identifier(TABLE),
        indexed=indexed,
    )


def shard_ddl(shard_id: int, backend: str, ext_schema: str | None) -> str:
    """Idempotent DDL creating the schema, table and indexes of one shard (several statements, no parameters).

    ``entities(id bigint primary key, kind smallint, body)`` plus an index on ``(kind, id)`` for queries by kind and
    key range. No body index: a server that records one adds `body_index_ddl` (``_migrate.new_shard_ddl``); on a
    shard that has one without a ``fastupdate`` option of its own (made by an earlier release), the pending list
    is turned off.
    """
    schema = sql.Identifier(shard_schema(shard_id))
    if backend == "hstore":
        if ext_schema is None:
            raise ValueError("the hstore backend needs the schema of the hstore extension")
        body_type: sql.Composable = sql.SQL("{}.hstore").format(sql.Identifier(ext_schema))
    else:
        body_type = sql.SQL("jsonb")
    query = sql.SQL(
        "CREATE SCHEMA IF NOT EXISTS {schema};"
        "CREATE TABLE IF NOT EXISTS {schema}.{table} ("
        "id bigint NOT NULL, kind smallint NOT NULL, body {body_type} NOT NULL, "
        "CONSTRAINT {pkey} PRIMARY KEY (id));"
        "CREATE INDEX IF NOT EXISTS {kind_idx} ON {schema}.{table} (kind, id);"
        # a body index made before: the pending list turned off, unless the index says fastupdate itself (an
        # ALTER INDEX ... SET (fastupdate = on) by its owner is kept)
        "DO $hv$BEGIN IF to_regclass({body_idx_name}) IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_class c, "
        "unnest(coalesce(c.reloptions, '{{}}')) o WHERE c.oid = to_regclass({body_idx_name}) "
        "AND starts_with(o, 'fastupdate=')) "
        "THEN ALTER INDEX {schema}.{body_idx} SET (fastupdate = off); END IF; END$hv$;"
    ).format(
        schema=schema,
        table=sql.Identifier(TABLE),
        body_type=body_type,
        pkey=sql.Identifier(PKEY_INDEX),
        kind_idx=sql.Identifier(KIND_INDEX),
        body_idx=sql.Identifier(BODY_INDEX),
        body_idx_name=sql.Literal(sql.SQL("{}.{}").format(schema, sql.Identifier(BODY_INDEX)).as_string(None)),
    )
    return _render(query)


def catalog_query() -> str:
    """One catalog query listing, per ``shard%`` schema given as ``%s`` (text[]), its relations and the body type.

    The body index (when its name is among the relations asked for) is listed as `BODY_INDEX` with a
    ``fastupdate`` option of its own (`body_index_ddl` makes it ``off``), and as `BODY_INDEX_UNSET` without one: a
    shard provisioned by an earlier release, which provisioning (``hv init``) gives ``fastupdate = off``; an index
    its owner set to ``fastupdate = on`` is kept so.
    """
    return (
        "SELECT n.nspname, array_remove(array_agg(CASE WHEN c.relname = "
        f"'{BODY_INDEX}' AND NOT EXISTS (SELECT FROM unnest(coalesce(c.reloptions, '{{}}')) o "
        f"WHERE starts_with(o, 'fastupdate=')) THEN '{BODY_INDEX_UNSET}' ELSE c.relname::text END), NULL), "
        "max(format_type(a.atttypid, a.atttypmod)) "
        "FROM pg_namespace n "
        "LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = ANY(%s) "
        "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND c.relkind = 'r' AND a.attname = 'body' "
        "WHERE n.nspname = ANY(%s) GROUP BY n.nspname"
    )


def count_query(shard_ids: Iterable[int]) -> str:
    """One query counting the rows of several shards: rows of (shard id, count)."""
    parts = [
        sql.SQL("SELECT {shard}::int, count(*) FROM {schema}.{table}").format(
            shard=sql.Literal(shard),
            schema=sql.Identifier(shard_schema(shard)),
            table=sql.Identifier(TABLE),
        )
        for shard in shard_ids
    ]
    return _render(sql.SQL(" UNION ALL ").join(parts))


def truncate_query(shard_ids: Sequence[int]) -> str:
    """Delete every row of these shards (for test fixtures)."""
    return _render(
        sql.SQL("").join(
            sql.SQL("DELETE FROM {}.{};").format(sql.Identifier(shard_schema(s)), sql.Identifier(TABLE))
            for s in shard_ids
        )
    )


@dataclass(frozen=True, slots=True)
class ShardSQL:
    """The hot-path statements of one shard, rendered once (schema-qualified, parameters bound by the server)."""

    insert: str
    fetch: str

    @classmethod
    def build(cls, shard_id: int, backend: str, ext_schema: str | None) -> ShardSQL:
        """Render the insert and fetch statements of one shard for a backend."""
        target = sql.SQL("{}.{}").format(sql.Identifier(shard_schema(shard_id)), sql.Identifier(TABLE))
        if backend == "hstore":
            if ext_schema is None:
                raise ValueError("the hstore backend needs the schema of the hstore extension")
            ext = sql.Identifier(ext_schema)
            insert = sql.SQL(
                "INSERT INTO {target} (id, kind, body) VALUES (%s, %s, {ext}.hstore(%s::text[], %s::text[]))"
            ).format(target=target, ext=ext)
            fetch = sql.SQL("SELECT kind, {ext}.hstore_to_json(body) FROM {target} WHERE id = %s").format(
                target=target, ext=ext
            )
        else:
            insert = sql.SQL("INSERT INTO {target} (id, kind, body) VALUES (%s, %s, %s)").format(target=target)
            fetch = sql.SQL("SELECT kind, body FROM {target} WHERE id = %s").format(target=target)
        return cls(insert=_render(insert), fetch=_render(fetch))


# -- the forwarding stub: what a moved shard leaves on its old server ---------------------------------------------

MOVED_SQLSTATE = "ZHV01"  # raised by the forwarding stub a moved shard leaves on its old server
STUB_PLANNING_STATES = frozenset({"42P10", "42809", "42704", "42703", "0A000"})
"""What PostgreSQL raises, while planning, for a statement the stub cannot take (a view over a function): ON
CONFLICT naming a target or constraint, TRUNCATE/ALTER/CREATE INDEX/COPY TO, a system column, FOR UPDATE. The stub's
``ZHV01`` never comes then: raw SQL failing so is checked with `stub_probe_sql`."""


def stub_probe_sql(shard_id: int) -> sql.Composed:
    """A cheap read of ``shardNNNN.entities``: one row of a table, or the stub's ``ZHV01`` (`moved_error`)."""
    return sql.SQL("SELECT 1 FROM {}.{} LIMIT 1").format(sql.Identifier(shard_schema(shard_id)), sql.Identifier(TABLE))


def moved_error(exc: psycopg.Error) -> ShardMoved:
    """The `ShardMoved` a forwarding stub's ``ZHV01`` error stands for (detail: JSON shard, server, version and,
    from stubs left since identities were recorded, the target database's ``identity``)."""
    message = exc.diag.message_primary or "shard moved"
    try:
        detail = json.loads(exc.diag.message_detail or "{}")
        return ShardMoved(
            message,
            shard_id=int(detail["shard"]),
            server=str(detail["server"]),
            version=int(detail["version"]),
            identity=str(detail.get("identity") or ""),
        )
    except (ValueError, KeyError, TypeError):
        return ShardMoved(message, shard_id=-1, server="", version=0)


def stub_sql(shard_id: int, body_type: sql.Composable, server: str, version: int, identity: str = "") -> sql.Composed:
    """DDL of the forwarding stub: ``shardNNNN.entities`` as a view whose reads and writes raise ``ZHV01``.

    The detail names the target by the mover's label (``server``) and by its database ``identity``
    (`hvbackend_postgres._move.database_identity`), so a process whose config spells that server otherwise
    (``localhost``, a PgBouncer in front) still follows the move."""
    schema = sql.Identifier(shard_schema(shard_id))
    message = f"shard {shard_id} moved to {server} (placement version {version})"
    detail = json.dumps({"shard": shard_id, "server": server, "version": version, "identity": identity})
    raise_sql = sql.SQL("RAISE EXCEPTION USING ERRCODE = {code}, MESSAGE = {msg}, DETAIL = {detail};").format(
        code=sql.Literal(MOVED_SQLSTATE), msg=sql.Literal(message), detail=sql.Literal(detail)
    )
    return sql.SQL(
        "DROP VIEW IF EXISTS {schema}.entities;"
        "CREATE OR REPLACE FUNCTION {schema}.hv_moved() RETURNS trigger LANGUAGE plpgsql AS $hv$BEGIN {r} END$hv$;"
        "DROP FUNCTION IF EXISTS {schema}.hv_moved_rows();"
        "CREATE FUNCTION {schema}.hv_moved_rows() RETURNS TABLE (id bigint, kind smallint, body {body_type}) "
        "LANGUAGE plpgsql AS $hv$BEGIN {r} END$hv$;"
        "CREATE VIEW {schema}.entities AS SELECT * FROM {schema}.hv_moved_rows();"
        "CREATE TRIGGER hv_moved INSTEAD OF INSERT OR UPDATE OR DELETE ON {schema}.entities "
        "FOR EACH ROW EXECUTE FUNCTION {schema}.hv_moved();"
    ).format(schema=schema, r=raise_sql, body_type=body_type)


def drop_stub_sql(shard_id: int) -> sql.Composed:
    """DDL removing the forwarding stub of ``shard_id`` (view and its functions)."""
    schema = sql.Identifier(shard_schema(shard_id))
    return sql.SQL(
        "DROP VIEW IF EXISTS {schema}.entities;"
        "DROP FUNCTION IF EXISTS {schema}.hv_moved_rows();"
        "DROP FUNCTION IF EXISTS {schema}.hv_moved();"
    ).format(schema=schema)
