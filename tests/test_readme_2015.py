"""The 2015 ``hv`` README's code runs as written (only its import line differs) on hstore, jsonb and memory.

`OLD_README` is the code of that README (PyPI ``hv`` 0.1.1), block after block, with its own values; the test swaps
only the literal values of the connection dicts for the suite's servers (keeping their types: the port is a
string there, and the database is given as ``database=``, psycopg2's spelling).
"""

from __future__ import annotations

import itertools
import os
import textwrap
from typing import Any

import psycopg
import pytest
from fixtures.pgservers import SECRET_PASSWORD, SECRET_ROLE

import hvcore

OLD_README = textwrap.dedent(
    """
    connections = [
      dict(shards='1-9', host='192.168.2.23', port='5432', user='x', password='x', database='x'),
      dict(shards='9-17', host='192.168.2.24', port='5432', user='x', password='x', database='x')
    ]
    db = Datastore(connections)

    with db.cursor(5) as cur:
      cur.execute('SELECT version()')
      ver = cur.fetchone()

    data = dict(beep='boop')
    key = db.put(12, 1, **data)

    key = Key(307821103844175873)
    res = db.get(key)

    db.disconnect()

    db.reinstantiate()
    """
)

IMPORTS = {
    "hstore": "from hvcore import Datastore, Key",  # hstore is the default backend, as in 2015
    "jsonb": "import functools, hvcore\nDatastore = functools.partial(hvcore.Datastore, backend='jsonb')\n"
    "Key = hvcore.Key",
    "memory": "import functools, hvcore\nDatastore = functools.partial(hvcore.Datastore, backend='memory')\n"
    "Key = hvcore.Key",
    # the import line of an application keeping its 2015 ids (see "Coming from hv 0.1" in the README)
    "hstore-2015-ids": "import functools, hvcore\n"
    "Datastore = functools.partial(hvcore.Datastore, layout='hypervault')\n"
    "Key = hvcore.KeyLayout.HYPERVAULT.key_type",
}
_dbs = itertools.count()


def servers_for(request: pytest.FixtureRequest, backend: str, layout: str) -> list[dict[str, Any]]:
    """Two fresh provisioned databases on two of the suite's servers, logged in with a password."""
    cluster = request.getfixturevalue("pg_cluster")
    name = f"hv2015_{os.getpid()}_{next(_dbs)}"
    servers = []
    for index, shards in enumerate(("1-9", "9-17")):
        settings = cluster.settings(index)
        with psycopg.connect(**settings, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        servers.append(dict(shards=shards, host=settings["host"], port=str(settings["port"]), database=name))
    setup = [dict(s, user=SECRET_ROLE, password=SECRET_PASSWORD) for s in servers]
    with hvcore.Datastore(setup, backend=backend, layout=layout) as db:
        db.provision()  # the 2015 library left creating the schemas to its users
    return servers


@pytest.mark.parametrize(
    "variant", [pytest.param(v, marks=[] if v == "memory" else [pytest.mark.postgres]) for v in IMPORTS]
)
def test_the_2015_readme_runs_as_written(request: pytest.FixtureRequest, variant: str) -> None:
    backend = variant.split("-")[0]
    code = OLD_README
    if backend != "memory":
        layout = "hypervault" if variant.endswith("2015-ids") else "default"
        first, second = servers_for(request, backend, layout)
        for old, new in [
            ("host='192.168.2.23', port='5432'", f"host={first['host']!r}, port={first['port']!r}"),
            ("host='192.168.2.24', port='5432'", f"host={second['host']!r}, port={second['port']!r}"),
            (
                "user='x', password='x', database='x'",
                f"user={SECRET_ROLE!r}, password={SECRET_PASSWORD!r}, database={first['database']!r}",
            ),
        ]:
            assert old in code
            code = code.replace(old, new)
    namespace: dict[str, Any] = {}
    exec(IMPORTS[variant], namespace)
    exec(code, namespace)
    db = namespace["db"]
    try:
        ver = namespace["ver"]
        assert ver[0] == ver["version"] and isinstance(ver[0], str)  # DictRow's two ways, as in 2015
        assert ("PostgreSQL" if backend != "memory" else "memory backend") in ver["version"]
        assert namespace["res"] is None  # the README's example id is not stored here
        assert type(namespace["key"]) is namespace["Key"]
        (record,) = db.query(shards=[12])  # the put survived disconnect() and reinstantiate()
        assert record.kind == 1 and record.data == {"beep": "boop"} and type(record.data) is dict
        assert record.key.layout == db.layout
    finally:
        db.close()
