"""Contract: a deployment's index definitions and migrations are deployment-wide. A server added to the config for a
new shard range records nothing yet; `provision` gives it what the other servers record before creating its
shards, so they get the deployment's indexes (a unique one enforced), body index and migrations, on every backend,
sync and async; servers that disagree are a `MigrationError` before anything is created."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from fixtures.datastores import SyncFacade
from fixtures.schemadbs import SchemaSetup
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hvcore
from hvcore import DuplicateValue, MigrationError
from hvcore._backend import SupportsIndexes
from hvcore._schemadefs import IndexSpec

KIND = 5
FIRST, SECOND = "0-8", "8-16"
NEW_SHARDS = range(8, 16)
_names = itertools.count()


@pytest.fixture(params=["memory", "hstore", "jsonb"])
def backend_name(request: pytest.FixtureRequest) -> str:
    """Every backend, directly (schema changes are refused behind a transaction-mode pooler)."""
    return str(request.param)


class Growth:
    """Two servers: the deployment starts on the first (shards 0-8), then grows by the second (shards 8-16)."""

    def __init__(self, backend: str, api: str, request: pytest.FixtureRequest) -> None:
        self.backend, self.api = backend, api
        self.made: list[Any] = []
        if backend == "memory":
            run = next(_names)
            self.settings: list[dict[str, Any]] = [
                {"name": f"grow{run}a", "provisioned": False},
                {"name": f"grow{run}b", "provisioned": False},
            ]
        else:
            setup = SchemaSetup(request.getfixturevalue("pg_cluster"), backend, provision=False)
            self.made.append(setup)
            self.settings = setup.settings

    def datastore(self, *servers: tuple[int, str]) -> Any:
        """A datastore (sync, or async through `SyncFacade`) over these (server index, shard range) pairs."""
        config = [{**self.settings[index], "shards": shards} for index, shards in servers]
        if self.api == "sync":
            store: Any = hvcore.Datastore(config, backend=self.backend)
        else:
            store = SyncFacade(hvcore.AsyncDatastore(config, backend=self.backend))
        self.made.append(store)
        return store

    def first(self) -> Any:
        """The deployment before it grows: the first server only, provisioned."""
        store = self.datastore((0, FIRST))
        store.provision()
        return store

    def grown(self) -> Any:
        """The deployment grown by the second server (not provisioned yet)."""
        return self.datastore((0, FIRST), (1, SECOND))

    def shards_on_second(self) -> list[int]:
        """The shards that exist on the second server (read with a sync store of its own)."""
        with hvcore.Datastore([{**self.settings[1], "shards": FIRST}], backend=self.backend) as store:
            return sorted(store._stores[0].row_counts(list(NEW_SHARDS)))

    def close(self) -> None:
        for made in reversed(self.made):
            getattr(made, "shutdown", made.close)()


@pytest.fixture
def growth(backend_name: str, api: str, request: pytest.FixtureRequest) -> Iterator[Growth]:
    made = Growth(backend_name, api, request)
    yield made
    made.close()


def test_new_servers_shards_get_the_deployments_indexes(growth: Growth) -> None:
    first = growth.first()
    unique = first.create_index(KIND, "email", unique=True).index
    first.create_index(KIND, "age", type="bigint")
    first.create_body_index()
    grown = growth.grown()
    reports = grown.provision()
    assert [r.created for r in reports] == [0, 8]
    grown.put(12, KIND, email="ada@example.org")
    with pytest.raises(DuplicateValue, match="shard 12"):
        grown.put(12, KIND, email="ada@example.org")  # the unique index is enforced on the new server's shards
    infos = grown.list_indexes()
    assert len(infos) == 3 and infos[0].index.is_body
    for info in infos:
        assert (info.valid, info.missing, info.invalid) == (16, [], []), info
        assert len(info.servers) == 2, info
    assert any("recorded index " + unique.name in note for note in reports[1].notes), reports[1].notes
    found = list(grown.query(kind=KIND, where={"email": "ada@example.org"}))  # the body index answers
    assert len(found) == 1


def test_new_servers_shards_get_the_deployments_migrations(growth: Growth, tmp_path: Path) -> None:
    if growth.backend == "memory":
        pytest.skip("the memory backend runs no migrations (test_indexes.test_the_memory_backend_runs_no_migrations)")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "0001_notes.sql").write_text("CREATE TABLE notes (note text);\n", encoding="utf-8")
    (folder / "0002_more.sql").write_text("ALTER TABLE notes ADD COLUMN at int;\n", encoding="utf-8")
    growth.first().migrate(folder)
    grown = growth.grown()
    grown.provision()
    dry = grown.migrate(folder, dry_run=True)
    assert [(run.applied, run.already) for run in dry.runs] == [(0, 16), (0, 16)]
    assert grown.migration_status(folder).up_to_date
    config = [{**growth.settings[0], "shards": FIRST}, {**growth.settings[1], "shards": SECOND}]
    with hvcore.Datastore(config, backend=growth.backend) as app, app.cursor(12) as cur:
        cur.execute("INSERT INTO notes (note, at) VALUES ('hi', 1)")  # application code expecting the migrated
        cur.execute("SELECT count(*) AS n FROM notes")  # table works on a new server's shard
        assert cur.fetchone() == {"n": 1}


def test_disagreeing_index_definitions_are_refused_before_anything_is_created(growth: Growth) -> None:
    growth.first().create_index(KIND, "email")
    alone = growth.datastore((1, FIRST))  # the second server used on its own meanwhile (its shards 8-16 not made)
    alone.provision()
    alone.create_index(KIND, "email", type="bigint", unique=True)
    grown = growth.grown()
    with pytest.raises(MigrationError, match=r"field 'email' of kind 5 has different indexes") as refused:
        grown.provision()
    message = str(refused.value)
    assert "text" in message and "bigint, unique" in message
    labels = [info.servers for info in growth.datastore((0, FIRST)).list_indexes()]
    assert labels and all(len(servers) == 1 for servers in labels)
    assert growth.shards_on_second() == []


def test_an_index_dropped_on_one_server_and_active_on_another_is_refused(growth: Growth) -> None:
    growth.first().create_body_index()
    alone = growth.datastore((1, FIRST))
    (store,) = alone._stores if growth.api == "sync" else alone.inner._stores
    builder = store.index_builder()
    builder.record(IndexSpec.body())
    builder.mark_dropping(IndexSpec.body())  # a drop_body_index interrupted there
    with pytest.raises(MigrationError, match=r"body index .* being dropped on .* but active on ") as refused:
        growth.grown().provision()
    assert str(refused.value).count(":") >= 2  # both servers named (host:port/db or memory:name)
    assert growth.shards_on_second() == []


def test_disagreeing_migrations_are_refused_before_anything_is_created(growth: Growth, tmp_path: Path) -> None:
    if growth.backend == "memory":
        pytest.skip("the memory backend runs no migrations (test_indexes.test_the_memory_backend_runs_no_migrations)")
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, text in ((one, "CREATE TABLE a (x int);\n"), (two, "CREATE TABLE b (x int);\n")):
        folder.mkdir()
        (folder / "0001_first.sql").write_text(text, encoding="utf-8")
    growth.first().migrate(one)
    alone = growth.datastore((1, FIRST))  # the second server used on its own meanwhile: another 0001
    alone.provision()
    alone.migrate(two)
    with pytest.raises(MigrationError, match=r"version 1 is 0001_first\.sql \(checksum [0-9a-f]{12}\) on ") as refused:
        growth.grown().provision()
    assert refused.value.migration == "0001_first.sql"
    assert growth.shards_on_second() == []


# -- the class: any records spread over any servers --------------------------------------------------------------

_FIELDS = ["a", "b", "c", "d"]
_specs = st.builds(
    lambda kind, field, type_, unique: IndexSpec(kind=kind, field=field, type=type_, unique=unique),
    st.integers(1, 3),
    st.sampled_from(_FIELDS),
    st.sampled_from(["text", "bigint"]),
    st.booleans(),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    specs=st.lists(_specs, max_size=5, unique_by=lambda s: (s.kind, s.field)),
    body=st.booleans(),
    spread=st.lists(st.lists(st.booleans(), min_size=3, max_size=3), min_size=6, max_size=6),
    dropping=st.sampled_from([None, 0, 1, 2]),
    early=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_provision_gives_every_server_the_union_or_refuses(
    specs: list[IndexSpec], body: bool, spread: list[list[bool]], dropping: int | None, early: list[bool]
) -> None:
    """Memory servers recording any subsets of some definitions, some with their shards made before (provisioned on
    their own first): provisioning a three-server deployment records the union everywhere and every shard has every
    index, the ones that existed too; with one definition being dropped on a server while another records it
    active, `MigrationError` and nothing is recorded or created."""
    run = next(_names)
    config = [{"name": f"prop{run}{i}", "provisioned": False, "shards": f"{4 * i}-{4 * i + 4}"} for i in range(3)]
    for entry, made in zip(config, early, strict=True):
        if made:
            with hvcore.Datastore([entry], backend="memory") as alone:
                alone.provision()
    everything = specs + ([IndexSpec.body()] if body else [])
    with hvcore.Datastore(config, backend="memory") as ds:
        builders = [cast(SupportsIndexes, store).index_builder() for store in ds._stores]
        for spec, where in zip(everything, spread, strict=False):
            for i, (builder, put) in enumerate(zip(builders, where, strict=True)):
                if put:
                    builder.record(spec)
                    if early[i]:  # as create_index on that server alone: its shards have it
                        builder.build(spec, range(4 * i, 4 * i + 4), lambda _: None, lambda: False)
        recorded = [s for s in everything if any(s in b.definitions() for b in builders)]
        conflict = None
        if dropping is not None and recorded:
            victim = recorded[0]
            builders[dropping].record(victim)
            builders[dropping].mark_dropping(victim)
            if any(victim in b.definitions() for i, b in enumerate(builders) if i != dropping):
                conflict = victim
        before = [sorted(b.definitions(), key=lambda s: s.name) for b in builders]
        if conflict is not None:
            with pytest.raises(MigrationError, match="being dropped on memory:prop"):
                ds.provision()
            assert [sorted(b.definitions(), key=lambda s: s.name) for b in builders] == before
            for i, (store, made) in enumerate(zip(ds._stores, early, strict=True)):
                assert sorted(store.row_counts(list(range(12)))) == (list(range(4 * i, 4 * i + 4)) if made else [])
            return
        ds.provision()
        active = {s.name for defs in before for s in defs if s.state == "active"}
        for builder in builders:
            assert {s.name for s in builder.definitions() if s.state == "active"} == active
        for info in ds.list_indexes():
            if info.index.state == "active":
                assert (info.valid, info.missing) == (12, []), info


# -- a server that had shards before it joined -------------------------------------------------------------------


def test_a_joined_server_with_shards_gets_the_deployments_indexes_in_them(growth: Growth) -> None:
    """Provisioned on its own first, the second server's shards exist when it joins: provision builds the recorded
    indexes there too (not only in shards it creates), and the unique one is enforced in them."""
    first = growth.first()
    unique = first.create_index(KIND, "email", unique=True).index
    first.create_body_index()
    growth.datastore((1, SECOND)).provision()  # its shards 8-16 made before it joins
    grown = growth.grown()
    reports = grown.provision()
    assert [r.created for r in reports] == [0, 0]
    assert any(f"built index {unique.name}" in note and "8 shard(s)" in note for note in reports[1].notes), reports
    for info in grown.list_indexes():
        assert (info.valid, info.missing, info.invalid) == (16, [], []), info
    grown.put(12, KIND, email="ada@example.org")
    with pytest.raises(DuplicateValue, match="shard 12"):
        grown.put(12, KIND, email="ada@example.org")
    assert grown.provision()[1].notes == []  # nothing left to do: provision stays idempotent


def test_a_joined_server_with_shards_gets_the_deployments_migrations_in_them(growth: Growth, tmp_path: Path) -> None:
    if growth.backend == "memory":
        pytest.skip("the memory backend runs no migrations (test_indexes.test_the_memory_backend_runs_no_migrations)")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "0001_notes.sql").write_text("CREATE TABLE notes (note text);\n", encoding="utf-8")
    (folder / "0002_more.sql").write_text("ALTER TABLE notes ADD COLUMN at int;\n", encoding="utf-8")
    growth.first().migrate(folder)
    growth.datastore((1, SECOND)).provision()
    grown = growth.grown()
    reports = grown.provision()
    assert any("0002_more.sql in 8 shard(s)" in note for note in reports[1].notes), reports[1].notes
    assert grown.migration_status(folder).up_to_date
    dry = grown.migrate(folder, dry_run=True)
    assert [(run.applied, run.already) for run in dry.runs] == [(0, 16), (0, 16)]
    config = [{**growth.settings[0], "shards": FIRST}, {**growth.settings[1], "shards": SECOND}]
    with hvcore.Datastore(config, backend=growth.backend) as app, app.cursor(12) as cur:
        cur.execute("INSERT INTO notes (note, at) VALUES ('hi', 1)")
        cur.execute("SELECT count(*) AS n FROM notes")
        assert cur.fetchone() == {"n": 1}


def test_a_joined_servers_duplicates_are_a_migration_error_naming_shard_and_command(growth: Growth) -> None:
    """Duplicates stored in the joined server's shard before it joined: the unique build there fails loudly, naming
    the server, the shard and the command that completes it; after the data is fixed that command does."""
    first = growth.first()
    first.create_index(KIND, "email", unique=True)
    alone = growth.datastore((1, SECOND))
    alone.provision()
    keys = [alone.put(12, KIND, email="ada@example.org") for _ in range(2)]
    grown = growth.grown()
    with pytest.raises(
        MigrationError,
        match=r"(?s)\(shards 8-16\), which had shards before it joined.*failed in shard 12 on .*"
        r"hv index create --kind 5 --field email",
    ) as err:
        grown.provision()
    assert err.value.shard_id == 12 and err.value.server is not None
    assert "--unique" in str(err.value)
    alone.delete(keys[1])
    grown.create_index(KIND, "email", unique=True)  # the command it named
    (info,) = grown.list_indexes()
    assert (info.valid, info.missing, info.invalid) == (16, [], []), info
