"""Which relations' blocks a put touches and reads at thousands of shards per server (issue 14), as counts.

Usage: ``python benchmarks/bench_put_blocks.py [--shards 4096] [--layouts body_index,shipped,...] [--puts N]``.
Starts one throwaway server at PostgreSQL's default settings (fsync off, as ``fixtures.localpg``; the default
128 MB ``shared_buffers``, or ``--shared-buffers``), creates ``--shards`` shard schemas with each ``--layouts``
entry's DDL (one database per layout), 2 rows per shard, then, as the stores do: ``--sessions`` sessions, every
shard's insert and fetch prepared and run with generic plans, a warm-up in which every session puts to and gets
from every shard (in its own random order), then ``--puts`` puts to a random one of all shards and as many to a
random one of 8 (one server's half of the fanout benchmark's 16), each shard on one session (shard-affine).

Counted per put, from the server's own statistics (``pg_statio_user_tables``/``_indexes``, flushed with
``pg_stat_force_next_flush()``), so the machine's load does not move them: blocks read from the OS (misses of
``shared_buffers``) and hit, per relation kind (heap incl. its FSM/VM forks, TOAST, each index), plus the catalog's;
the relation files each shard has (``pg_relation_filepath`` + forks on disk); and what fills ``shared_buffers``
afterwards (``pg_buffercache``, per relation kind and fork). ``--strace`` adds the sessions' ``openat``/``pread64``
per put.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _shared import syscalls_per_call
from fixtures.localpg import LocalServer, find_bin_dir, servers_dir

TABLE = "entities"


def _ddl(shard: int, layout: str) -> str:
    """DDL of one shard for a layout (see `LAYOUTS`; ``shipped`` is what `_schema.shard_ddl` makes for jsonb,
    ``body_index`` that plus what ``create_body_index`` builds)."""
    schema = f"shard{shard:04d}"
    table = f'"{schema}".{TABLE}'
    parts = [f'CREATE SCHEMA "{schema}";']
    storage = " WITH (toast_tuple_target = 8160)" if layout == "toast_target" else ""
    parts.append(
        f"CREATE TABLE {table} (id bigint NOT NULL, kind smallint NOT NULL, body jsonb NOT NULL, "
        f"CONSTRAINT entities_pkey PRIMARY KEY (id)){storage};"
    )
    if layout not in ("no_kind", "pkey_only"):
        parts.append(f"CREATE INDEX entities_kind_id_idx ON {table} (kind, id);")
    if layout in ("body_index", "fastupdate_on", "no_kind", "toast_target"):
        opts = "" if layout in ("fastupdate_on", "no_kind") else " WITH (fastupdate = off)"
        parts.append(f"CREATE INDEX entities_body_idx ON {table} USING gin (body jsonb_path_ops){opts};")
    return "".join(parts)


LAYOUTS = ("fastupdate_on", "body_index", "shipped", "no_gin", "no_kind", "pkey_only", "toast_target")
"""``fastupdate_on``: the layout before issue 14's fifth session (the body GIN with a pending list); ``body_index``:
its pending list off (what ``create_body_index`` builds, and every shard's layout until the body index was made
optional); ``shipped``: no body index, as shards are provisioned now (``no_gin``: the same, its earlier name);
``no_kind``: no (kind, id) index (GIN with a pending list, as measured); ``pkey_only``: neither; ``toast_target``:
``body_index`` with ``toast_tuple_target = 8160`` (a TOAST table all the same)."""


def _insert(shard: int) -> str:
    return f'INSERT INTO "shard{shard:04d}".{TABLE} (id, kind, body) VALUES (%s, %s, %s)'


def _fetch(shard: int) -> str:
    return f'SELECT kind, body FROM "shard{shard:04d}".{TABLE} WHERE id = %s'


STATIO_SQL = """
SELECT 'heap' AS rel, sum(heap_blks_read), sum(heap_blks_hit) FROM pg_statio_user_tables WHERE schemaname LIKE 'shard%'
UNION ALL SELECT 'toast', sum(coalesce(toast_blks_read, 0)), sum(coalesce(toast_blks_hit, 0))
  FROM pg_statio_user_tables WHERE schemaname LIKE 'shard%'
UNION ALL SELECT 'toast index', sum(coalesce(tidx_blks_read, 0)), sum(coalesce(tidx_blks_hit, 0))
  FROM pg_statio_user_tables WHERE schemaname LIKE 'shard%'
UNION ALL SELECT indexrelname, sum(idx_blks_read), sum(idx_blks_hit) FROM pg_statio_user_indexes
  WHERE schemaname LIKE 'shard%' GROUP BY indexrelname
UNION ALL SELECT 'catalog', sum(coalesce(heap_blks_read, 0) + coalesce(idx_blks_read, 0)),
  sum(coalesce(heap_blks_hit, 0) + coalesce(idx_blks_hit, 0)) FROM pg_statio_sys_tables
UNION ALL SELECT 'database', blks_read, blks_hit FROM pg_stat_database WHERE datname = current_database()
"""

BUFFERS_SQL = """
SELECT CASE WHEN n.nspname LIKE 'shard%' THEN CASE c.relkind WHEN 'r' THEN 'heap' ELSE c.relname END
            WHEN n.nspname = 'pg_toast' AND c.relname ~ '^pg_toast_[0-9]+$' THEN 'toast'
            WHEN n.nspname = 'pg_toast' THEN 'toast index' ELSE 'other' END AS rel,
       CASE b.relforknumber WHEN 0 THEN 'main' WHEN 1 THEN 'fsm' WHEN 2 THEN 'vm' ELSE 'init' END AS fork,
       count(*)
FROM pg_buffercache b JOIN pg_class c ON b.relfilenode = pg_relation_filenode(c.oid)
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE b.reldatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
GROUP BY 1, 2 ORDER BY 3 DESC
"""


def _stat_totals(settings: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """`STATIO_SQL` from a connection of its own (whose own reads are flushed only when it ends, after these)."""
    with psycopg.connect(**settings, autocommit=True) as conn:
        return {str(r[0]): (int(r[1] or 0), int(r[2] or 0)) for r in conn.execute(STATIO_SQL)}


def _files_per_shard(server: LocalServer, conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Relations and files on disk (every fork) of shard 0 and, over the database, of every shard schema."""
    rows = conn.execute(
        "WITH t AS (SELECT reltoastrelid FROM pg_class WHERE oid = 'shard0000.entities'::regclass) "
        "SELECT c.relname, c.relkind, pg_relation_filepath(c.oid) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE pg_relation_filepath(c.oid) IS NOT NULL AND "
        "(n.nspname = 'shard0000' OR c.oid = (SELECT reltoastrelid FROM t) "
        "OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = (SELECT reltoastrelid FROM t)))"
    ).fetchall()
    files: dict[str, list[str]] = {}
    for name, _kind, path in rows:
        base = server.data / path
        files[name] = sorted(p.name.replace(base.name, "") or "main" for p in base.parent.glob(base.name + "*"))
    relations = conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname LIKE 'shard%' "
        "AND c.relkind IN ('r', 'i') "
    ).fetchone()
    toast = conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname LIKE 'shard%' "
        "AND c.reltoastrelid <> 0"
    ).fetchone()
    return {
        "shard0_files": files,
        "files_per_shard": sum(len(v) for v in files.values()),
        "relations_per_shard_with_toast": ((relations[0] if relations else 0) + 2 * (toast[0] if toast else 0))
        / max(1, conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'shard%'").fetchone()[0]),  # type: ignore[index]
    }


def measure_layout(
    server: LocalServer, layout: str, shards: int, sessions: int, puts: int, use_strace: bool
) -> dict[str, Any]:
    """Create the layout's database and count what puts to all shards vs to 8 of them read (see the docstring)."""
    dbname = f"hv_blocks_{layout}"
    admin = {**server.settings, "autocommit": True}
    with psycopg.connect(**admin) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(dbname)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    settings = {**server.settings, "dbname": dbname}
    ids = itertools.count(1 << 40)
    started = time.perf_counter()
    with psycopg.connect(**settings, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_buffercache")
        for first in range(0, shards, 16):
            with conn.transaction():
                conn.execute("".join(_ddl(s, layout) for s in range(first, min(shards, first + 16))))
        for first in range(0, shards, 64):
            with conn.transaction():
                for s in range(first, min(shards, first + 64)):
                    conn.execute(
                        f'INSERT INTO "shard{s:04d}".{TABLE} VALUES (%s, 1, %s), (%s, 1, %s)',
                        (next(ids), json.dumps({"n": 0, "city": "Oslo"}), next(ids), json.dumps({"n": 1})),
                    )
        conn.execute("ANALYZE")
        conn.execute("CHECKPOINT")
    provision_s = time.perf_counter() - started
    conns = [
        psycopg.connect(**settings, autocommit=True, prepare_threshold=0, application_name="hv_blocks")
        for _ in range(sessions)
    ]
    try:
        for c in conns:
            c.prepared_max = 1 << 20
            c.execute("SET plan_cache_mode = force_generic_plan")
        pids = [int(c.info.backend_pid) for c in conns]
        last_key: dict[int, int] = {}

        def put(shard: int, conn: psycopg.Connection[Any], body: str = '{"n": 1}') -> None:
            key = next(ids)
            conn.execute(_insert(shard), (key, 3, body))
            last_key[shard] = key

        started = time.perf_counter()
        for index, conn in enumerate(conns):  # every session touches every shard, as the benchmark's warm-up
            order = list(range(shards))
            random.Random(index).shuffle(order)
            for shard in order:
                put(shard, conn, json.dumps({"w": index}))
                conn.execute(_fetch(shard), (last_key[shard],)).fetchall()
        warm_s = time.perf_counter() - started
        rng = random.Random(3)
        few = [s * (shards // 8) + 7 for s in range(8)]
        out: dict[str, Any] = {"layout": layout, "provision_s": provision_s, "warm_s": warm_s}
        with psycopg.connect(**settings, autocommit=True) as observer:
            for label, pool in (("all", list(range(shards))), ("8", few)):
                picks = [rng.choice(pool) for _ in range(puts)]
                for shard in picks[: puts // 5]:  # settle
                    put(shard, conns[shard % sessions])
                for c in conns:
                    c.execute("SELECT pg_stat_force_next_flush()")
                time.sleep(1.5)
                before = _stat_totals(settings)
                for shard in picks:
                    put(shard, conns[shard % sessions])
                for c in conns:
                    c.execute("SELECT pg_stat_force_next_flush()")
                time.sleep(0.5)
                after = _stat_totals(settings)
                per_put = {
                    name: (
                        round((after[name][0] - before.get(name, (0, 0))[0]) / puts, 3),
                        round((after[name][1] - before.get(name, (0, 0))[1]) / puts, 3),
                    )
                    for name in after
                }
                out[f"read_hit_per_put_{label}"] = per_put
                if use_strace:
                    fresh = iter([rng.choice(pool) for _ in range(puts)])  # not the shards just put to

                    def put_fresh(shards_left: Any = fresh) -> None:
                        shard = next(shards_left)
                        put(shard, conns[shard % sessions])

                    out[f"syscalls_per_put_{label}"] = syscalls_per_call(pids, put_fresh, puts // 2)
            out["buffers"] = {f"{r[0]}/{r[1]}": int(r[2]) for r in observer.execute(BUFFERS_SQL)}
            out.update(_files_per_shard(server, observer))
            out["explain_cold_insert"] = "\n".join(
                str(r[0])
                for r in observer.execute(
                    f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) {_insert(shards - 1)}".replace(
                        "%s", "{}"
                    ).format(next(ids), 3, "'{\"n\": 1}'")
                )
            )
    finally:
        for c in conns:
            c.close()
    with psycopg.connect(**admin) as conn, suppress(psycopg.Error):
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(dbname)))
    return out


def _print(r: dict[str, Any]) -> None:
    """A few lines per layout: blocks read/hit per put by relation, what fills shared_buffers, files per shard."""
    print(
        f"== {r['layout']}: {r['files_per_shard']} files per shard (shard0000: {r['shard0_files']}), "
        f"provision {r['provision_s']:.0f} s, warm-up {r['warm_s']:.0f} s"
    )
    for label in ("all", "8"):
        rows = r[f"read_hit_per_put_{label}"]
        shard_rels = {k: v for k, v in rows.items() if k not in ("catalog", "database")}
        reads = sum(v[0] for v in shard_rels.values())
        hits = sum(v[1] for v in shard_rels.values())
        parts = " ".join(f"{k} {v[0]:.2f}/{v[1]:.2f}" for k, v in shard_rels.items() if v != (0, 0))
        syscalls = r.get(f"syscalls_per_put_{label}")
        extra = (" | " + " ".join(f"{k} {v:.2f}" for k, v in syscalls.items())) if syscalls else ""
        print(
            f"  puts to {label:>3} shards, blocks read/hit per put: shard relations {reads:.2f}/{hits:.2f} ({parts}); "
            f"catalog {rows['catalog'][0]:.2f}/{rows['catalog'][1]:.2f}; database {rows['database'][0]:.2f}/"
            f"{rows['database'][1]:.2f}{extra}"
        )
    print("  shared_buffers hold: " + ", ".join(f"{k} {v}" for k, v in r["buffers"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4096, help="shards on the server (the fanout bench: 4096)")
    parser.add_argument("--layouts", default="body_index,shipped", help=f"comma-separated of {','.join(LAYOUTS)}")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--puts", type=int, default=4000)
    parser.add_argument("--shared-buffers", default="", help="e.g. 512MB (default: PostgreSQL's, 128MB)")
    parser.add_argument("--strace", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    bin_dir = find_bin_dir()
    assert bin_dir is not None, "no PostgreSQL binaries"
    top = servers_dir(bin_dir)
    extra = [f"shared_buffers = '{args.shared_buffers}'"] if args.shared_buffers else []
    server = LocalServer(top / "blocks", bin_dir=bin_dir, settings=extra)
    results = []
    try:
        server.init()
        server.start()
        for layout in args.layouts.split(","):
            r = measure_layout(server, layout, args.shards, args.sessions, args.puts, args.strace)
            results.append(r)
            _print(r)
    finally:
        server.stop("immediate")
        shutil.rmtree(top / "blocks", ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
