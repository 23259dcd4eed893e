"""Secondary indexes and migrations over every server: the façade's side of them (blocking; servers in parallel).

The backends do the per-server work through `SupportsIndexes.index_builder()` and `SupportsMigrations.migrator()`
(``hvcore._backend``); this module checks what can be checked before any SQL, records definitions and migrations on
every server before building or applying anywhere (so a shard provisioned or moved meanwhile gets them), runs the
servers in parallel threads, stops the others when one fails, and adds up progress and reports. `Datastore` calls
it directly, `AsyncDatastore` in a worker thread (``ato_thread``): this is operator work, minutes of DDL.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from hvcore._backend import IndexBuilder, Migrator, SupportsIndexes, SupportsMigrations
from hvcore._schemadefs import (
    IndexInfo,
    IndexReport,
    IndexSpec,
    Migration,
    MigrationReport,
    MigrationRun,
    MigrationStatus,
    SchemaProgress,
    VersionStatus,
)
from hvcore._shardmap import format_ranges
from hvcore.errors import InvalidQuery, MigrationError

__all__ = [
    "INDEX_CACHE_SECONDS",
    "IndexCatalog",
    "Target",
    "add_rerun",
    "complete_definitions",
    "create_index",
    "drop_built",
    "drop_index",
    "index_builder_of",
    "list_indexes",
    "migrate",
    "migrate_again",
    "migration_status",
    "migrator_of",
    "share_definitions",
]

INDEX_CACHE_SECONDS = 60.0  # how long a process trusts the index definitions it read (a range filter miss rereads)

Target = tuple[Any, Sequence[int]]
"""A server store and the shards it serves (after moves)."""

_T = TypeVar("_T")


def _by_database(targets: Sequence[Target]) -> list[Target]:
    """Targets merged by server label: config entries naming the same database are one server for schema work
    (one schema-change lock, one build session)."""
    merged: dict[str, tuple[Any, list[int]]] = {}
    for store, shards in targets:
        entry = merged.setdefault(str(getattr(store, "label", id(store))), (store, []))
        entry[1].extend(shards)
    return [(store, sorted(shards)) for store, shards in merged.values()]


def index_builder_of(store: object) -> IndexBuilder:
    """The secondary-index operations of a server store; `MigrationError` if its backend has none."""
    if not isinstance(store, SupportsIndexes):
        raise MigrationError(f"the backend of {getattr(store, 'label', store)!r} has no secondary indexes")
    return store.index_builder()


def migrator_of(store: object) -> Migrator:
    """The migration operations of a server store; `MigrationError` if its backend cannot run SQL migrations."""
    if not isinstance(store, SupportsMigrations):
        raise MigrationError(
            f"the backend of {getattr(store, 'label', store)!r} cannot run SQL migrations (the PostgreSQL ones can)"
        )
    return store.migrator()


class _Progress:
    """Adds up shards done by the servers' threads and reports ``progress(label, done, total)`` under a lock."""

    def __init__(self, callback: SchemaProgress | None, label: str, total: int) -> None:
        self.callback = callback
        self.label = label
        self.total = total
        self.done = 0
        self.broken = threading.Event()  # the callback raised (a Ctrl-C, say): every server stops after its shard
        self._lock = threading.Lock()
        if callback is not None:
            callback(label, 0, total)

    def advance(self, count: int) -> None:
        with self._lock:
            self.done += count
            if self.callback is not None:
                try:
                    self.callback(self.label, self.done, self.total)
                except BaseException:
                    self.broken.set()
                    raise

    def stopper(self, stop: Callable[[], bool]) -> Callable[[], bool]:
        """``stop`` or the callback raised."""
        return lambda: stop() or self.broken.is_set()


def _parallel(work: Sequence[Callable[[Callable[[], bool]], _T]]) -> list[_T]:
    """Run each ``work(stop)`` in its own thread; when one fails the others are asked to stop; first error raised."""
    if len(work) == 1:
        return [work[0](lambda: False)]
    failed = threading.Event()

    def run(item: Callable[[Callable[[], bool]], _T]) -> _T:
        try:
            return item(failed.is_set)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(max_workers=len(work), thread_name_prefix="hv-schema") as pool:
        futures = [pool.submit(run, item) for item in work]
        errors: list[BaseException] = []
        results: list[_T] = []
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:
                errors.append(exc)
    if errors:
        raise next((e for e in errors if isinstance(e, MigrationError)), errors[0])
    return results


# -- indexes ---------------------------------------------------------------------------------------------------------


def _conflict(builders: Sequence[tuple[IndexBuilder, Any]], spec: IndexSpec) -> None:
    if spec.is_body:  # one body index per server: nothing to conflict with
        return
    for builder, store in builders:
        for other in builder.definitions():
            if (other.kind, other.field) != (spec.kind, spec.field) or other.name == spec.name:
                continue
            if other.state == "dropping":
                raise MigrationError(
                    f"the index {other.name} on field {spec.field!r} of kind {spec.kind} is being dropped on "
                    f"{store.label}: finish that first (drop_index({spec.kind}, {spec.field!r}) again)"
                )
            raise MigrationError(
                f"field {spec.field!r} of kind {spec.kind} already has an index ({other.type}"
                f"{', unique' if other.unique else ''}, {other.name}): drop it first to index it as {spec.type}"
                f"{', unique' if spec.unique else ''}"
            )


def create_index(targets: Sequence[Target], spec: IndexSpec, progress: SchemaProgress | None) -> IndexReport:
    """Record ``spec`` on every server, then build it in every shard (servers in parallel, shards one at a time)."""
    targets = _by_database(targets)
    started = time.perf_counter()
    builders = [(index_builder_of(store), store) for store, _ in targets]
    _conflict(builders, spec)
    for builder, _ in builders:
        builder.record(spec)
    report = IndexReport(index=spec, shards=sum(len(shards) for _, shards in targets))
    bar = _Progress(progress, spec.name, report.shards)
    work = [
        (lambda stop, b=builder, s=shards: b.build(spec, s, bar.advance, bar.stopper(stop)))
        for (builder, _), (_, shards) in zip(builders, targets, strict=True)
    ]
    for counts in _parallel(work):
        report.built += counts.get("built", 0)
        report.rebuilt += counts.get("rebuilt", 0)
        report.present += counts.get("present", 0)
    if report.rebuilt:
        report.notes.append(f"{report.rebuilt} shard(s) had an INVALID index left by an interrupted build: rebuilt")
    report.seconds = time.perf_counter() - started
    return report


def _recorded(builders: Sequence[tuple[IndexBuilder, Any]], kind: int | None, name: str | None) -> IndexSpec | None:
    for builder, _ in builders:
        for spec in builder.definitions():
            if not spec.is_body and (spec.kind, spec.field) == (kind, name):
                return spec
    return None


def drop_index(
    targets: Sequence[Target], kind: int | None, name: str | None, progress: SchemaProgress | None
) -> IndexReport:
    """Drop the index on (``kind``, ``name``) from every shard and forget it; resumable like `create_index`.

    ``kind`` and ``name`` None: the body index (`IndexSpec.body`), which is dropped (and forgotten) even where it is
    not recorded: the shards of a deployment provisioned before it was optional have it without a record."""
    targets = _by_database(targets)
    started = time.perf_counter()
    builders = [(index_builder_of(store), store) for store, _ in targets]
    if kind is None and name is None:
        spec: IndexSpec | None = IndexSpec.body(state="dropping")
    else:
        spec = _recorded(builders, kind, name)
    if spec is None:
        raise InvalidQuery(f"no index on field {name!r} of kind {kind} is recorded on any server: nothing to drop")
    for builder, _ in builders:
        builder.mark_dropping(spec)
    report = IndexReport(index=spec, shards=sum(len(shards) for _, shards in targets))
    bar = _Progress(progress, spec.name, report.shards)
    work = [
        (lambda stop, b=builder, s=shards: b.drop(spec, s, bar.advance, bar.stopper(stop)))
        for (builder, _), (_, shards) in zip(builders, targets, strict=True)
    ]
    report.dropped = sum(_parallel(work))
    for builder, _ in builders:
        builder.forget(spec)
    report.seconds = time.perf_counter() - started
    return report


def drop_built(targets: Sequence[Target], spec: IndexSpec) -> int:
    """Drop ``spec`` again from these shards (a shard moved while `drop_index` ran); returns how many had it."""
    targets = _by_database(targets)
    builders = [(index_builder_of(store), shards) for store, shards in targets]
    work = [(lambda stop, b=builder, s=shards: b.drop(spec, s, lambda _: None, stop)) for builder, shards in builders]
    return sum(_parallel(work))


def list_indexes(targets: Sequence[Target]) -> list[IndexInfo]:
    """Every recorded index with its shards: valid, INVALID (an interrupted build), missing."""
    targets = _by_database(targets)
    infos: dict[str, IndexInfo] = {}
    per_server = []
    for store, shards in targets:
        builder = index_builder_of(store)
        definitions = builder.definitions()
        for spec in definitions:
            info = infos.setdefault(spec.name, IndexInfo(index=spec))
            info.servers.append(store.label)
        per_server.append((builder.states(shards), definitions))
    for (live, states), _ in per_server:
        for name, info in infos.items():
            valid, invalid = states.get(name, ([], []))
            info.valid += len(valid)
            info.invalid += invalid
            have = set(valid) | set(invalid)
            info.missing += [s for s in live if s not in have]
    for info in infos.values():
        info.invalid.sort()
        info.missing.sort()
    return sorted(infos.values(), key=lambda i: (not i.index.is_body, i.index.kind or 0, i.index.field or ""))


class IndexCatalog:
    """The active index definitions as this process last read them (by (kind, field)), for query planning.

    Read again after `INDEX_CACHE_SECONDS`, or when a range filter names an index not seen yet; `create_index` and
    `drop_index` in this process refresh it at once.
    """

    def __init__(self) -> None:
        self.definitions: dict[tuple[int, str], IndexSpec] = {}
        self.loaded_at: float | None = None

    def stale(self, needed: Iterable[tuple[int, str]]) -> bool:
        """True if the definitions were never read, are old, or lack one of ``needed`` (read again then)."""
        if self.loaded_at is None or time.monotonic() - self.loaded_at > INDEX_CACHE_SECONDS:
            return True
        return any(key not in self.definitions for key in needed)

    def load(self, stores: Sequence[Any]) -> Mapping[tuple[int, str], IndexSpec]:
        """Read the active definitions of every server (blocking): their union. Unreachable servers are skipped
        (definitions are recorded on every one); if none answers, the first one's error is raised."""
        found: dict[tuple[int, str], IndexSpec] = {}
        errors: list[Exception] = []
        answered = False
        for store in stores:
            if not isinstance(store, SupportsIndexes):
                continue
            try:
                definitions = store.index_builder().definitions()
            except Exception as exc:  # an unreachable server: the others tell
                errors.append(exc)
                continue
            answered = True
            for spec in definitions:
                if spec.state == "active" and spec.kind is not None and spec.field is not None:  # not the body index
                    found[(spec.kind, spec.field)] = spec
        if errors and not answered:
            raise errors[0]
        self.definitions = found
        self.loaded_at = time.monotonic()
        return found

    def invalidate(self) -> None:
        """Forget what was read: the next query reads the definitions again."""
        self.loaded_at = None


# -- provisioning: one deployment, one set of definitions -----------------------------------------------------------


def _show_index(spec: IndexSpec) -> str:
    if spec.is_body:
        return f"the body index ({spec.name})"
    return f"index {spec.name} (kind {spec.kind}, field {spec.field!r}, {spec.type}{', unique' if spec.unique else ''})"


_IndexRead = tuple[str, IndexBuilder, list[IndexSpec]]
_MigrationRead = tuple[str, Migrator, list[Migration]]


def _index_union(read: Sequence[_IndexRead]) -> dict[str, IndexSpec]:
    """The active definitions some server records, by name; `MigrationError` for definitions that disagree."""
    problems: list[str] = []
    by_name: dict[str, list[tuple[str, IndexSpec]]] = {}
    by_field: dict[tuple[int | None, str | None], dict[str, list[str]]] = {}
    for label, _, specs in read:
        for spec in specs:
            by_name.setdefault(spec.name, []).append((label, spec))
            if not spec.is_body:
                by_field.setdefault((spec.kind, spec.field), {}).setdefault(spec.name, []).append(label)
    union: dict[str, IndexSpec] = {}
    for name, found in by_name.items():
        dropping = sorted(label for label, spec in found if spec.state == "dropping")
        active = sorted(label for label, spec in found if spec.state == "active")
        if dropping and active:
            problems.append(
                f"{_show_index(found[0][1])} is being dropped on {', '.join(dropping)} but active on "
                f"{', '.join(active)}: finish the drop (drop_index / drop_body_index again) or create it again "
                "(create_index / create_body_index), then provision"
            )
        elif active:
            union[name] = next(spec for _, spec in found if spec.state == "active")
    for (kind, field), names in by_field.items():
        if len(names) > 1:
            shown = "; ".join(
                f"{_show_index(next(s for _, s in by_name[n]))} on {', '.join(sorted(labels))}"
                for n, labels in sorted(names.items())
            )
            problems.append(
                f"field {field!r} of kind {kind} has different indexes on different servers ({shown}): drop the one "
                "that is wrong (drop_index), then provision"
            )
    if problems:
        raise MigrationError(
            "the servers of this deployment record different index definitions, and provisioning gives new shards "
            "what every server records (nothing was created): " + "; ".join(problems)
        )
    return union


def _migration_union(read: Sequence[_MigrationRead]) -> dict[int, Migration]:
    """The migrations some server records, by version; `MigrationError` when two servers record different files
    (name or checksum) under one version."""
    union: dict[int, tuple[str, Migration]] = {}
    problems: list[str] = []
    first: Migration | None = None
    for label, _, migrations in read:
        for migration in migrations:
            seen = union.get(migration.version)
            if seen is None:
                union[migration.version] = (label, migration)
                continue
            other_label, other = seen
            if (other.filename, other.checksum) != (migration.filename, migration.checksum):
                first = first or migration
                problems.append(
                    f"version {migration.version} is {other.filename} (checksum {other.checksum[:12]}) on "
                    f"{other_label} but {migration.filename} (checksum {migration.checksum[:12]}) on {label}"
                )
    if problems:
        raise MigrationError(
            "the servers of this deployment record different migrations under one version, and provisioning gives "
            "new shards what every server records (nothing was created): "
            + "; ".join(problems)
            + ". Run hv migrate with the right files (it records them on every server), then provision",
            migration=first.filename if first is not None else None,
        )
    return {version: migration for version, (_, migration) in union.items()}


def _label(store: object) -> str:
    return str(getattr(store, "label", store))


def share_definitions(targets: Sequence[Target]) -> dict[str, list[str]]:
    """Record on every server the index definitions (the body index too) and migrations some server records, before
    provisioning creates shards, so new shards everywhere get the deployment's indexes and migrations (a server
    added for a new shard range records nothing yet). Returns per server label what was recorded there.

    `MigrationError` before anything is recorded when servers disagree: an index being dropped on one server and
    active on another, two indexes on one field, or two files under one migration version. Servers whose backend
    has no indexes (or no migrations) are left out of that part; one server has nothing to share."""
    stores = [store for store, _ in _by_database(targets)]
    if len(stores) < 2:
        return {}
    notes: dict[str, list[str]] = {}

    def read(store: Any) -> tuple[_IndexRead | None, _MigrationRead | None]:
        index = migration = None
        if isinstance(store, SupportsIndexes):
            builder = store.index_builder()
            index = (_label(store), builder, builder.definitions())
        if isinstance(store, SupportsMigrations):
            migrator = store.migrator()
            migration = (_label(store), migrator, list(migrator.recorded()))
        return index, migration

    with ThreadPoolExecutor(max_workers=min(len(stores), 16), thread_name_prefix="hv-schema") as pool:
        found = list(pool.map(read, stores))  # servers read at once (the first error raised)
    index_read = [index for index, _ in found if index is not None]
    migration_read = [migration for _, migration in found if migration is not None]
    indexes = _index_union(index_read)
    migrations = _migration_union(migration_read)
    for label, migrator, known in migration_read:  # migrations first: as hv migrate records them before applying
        versions = {m.version for m in known}
        missing = [migrations[v] for v in sorted(migrations) if v not in versions]
        if missing:
            migrator.record(missing)
            notes.setdefault(label, []).append(
                "recorded migration(s) " + ", ".join(m.filename for m in missing) + " that other servers record"
            )
    for label, builder, have in index_read:
        names = {spec.name for spec in have if spec.state == "active"}
        for name, spec in sorted(indexes.items()):
            if name not in names:
                builder.record(spec)
                notes.setdefault(label, []).append(f"recorded {_show_index(spec)}, which other servers record")
    return notes


def _index_command(spec: IndexSpec) -> str:
    if spec.is_body:
        return "hv index create --body"
    return (
        f"hv index create --kind {spec.kind} --field {spec.field} --type {spec.type}"
        f"{' --unique' if spec.unique else ''}"
    )


def complete_definitions(targets: Sequence[Target], labels: Iterable[str]) -> dict[str, list[str]]:
    """Bring the shards of the servers named by ``labels`` (those `share_definitions` just recorded definitions
    on: a server that had shards of its own before it joined) up to what they record: recorded migrations applied
    to the shards that lack them (as `migrate` does), then recorded indexes built in the shards that lack them
    (as `create_index` does: CONCURRENTLY, one shard at a time, resumable). Returns per label what was done.

    `MigrationError` naming the server, the shard and the command that completes the work when a build or a
    migration fails there (a duplicate value for a unique index, say): the shards done before it keep it."""
    wanted = set(labels)
    notes: dict[str, list[str]] = {}
    for store, shards in _by_database(targets):
        label = _label(store)
        if label not in wanted or not shards:
            continue
        target: list[Target] = [(store, shards)]
        if isinstance(store, SupportsMigrations):
            recorded = store.migrator().recorded()
            if recorded:
                try:
                    report = migrate(target, recorded, dry_run=False, progress=None, wait=0.0)
                except MigrationError as exc:
                    raise MigrationError(
                        f"provisioning recorded the deployment's migrations on {label} (shards "
                        f"{format_ranges(shards)}), which had shards before it joined, and applying them there "
                        f"failed: {exc}. Fix that, then run hv migrate with the deployment's migration directory "
                        "(it continues where this stopped)",
                        server=exc.server or label,
                        shard_id=exc.shard_id,
                        migration=exc.migration,
                        statement=exc.statement,
                    ) from exc
                done = [f"{run.name} in {run.applied} shard(s)" for run in report.runs if run.applied]
                if done:
                    notes.setdefault(label, []).append(
                        "applied the recorded migration(s) to the shards it had before it joined: " + ", ".join(done)
                    )
        if isinstance(store, SupportsIndexes):
            for spec in sorted(store.index_builder().definitions(), key=lambda s: s.name):
                if spec.state != "active":
                    continue
                try:
                    built = create_index(target, spec, None)
                except MigrationError as exc:
                    raise MigrationError(
                        f"provisioning recorded {_show_index(spec)} on {label} (shards "
                        f"{format_ranges(shards)}), which had shards before it joined, and building it there "
                        f"failed: {exc}. Fix that, then run {_index_command(spec)} (it continues where this stopped)",
                        server=exc.server or label,
                        shard_id=exc.shard_id,
                        migration=exc.migration,
                        statement=exc.statement,
                    ) from exc
                if built.built or built.rebuilt:
                    notes.setdefault(label, []).append(
                        f"built {_show_index(spec)} in {built.built + built.rebuilt} shard(s) it had before it joined"
                    )
    return notes


# -- migrations ------------------------------------------------------------------------------------------------------


def _check_registries(
    migrations: Sequence[Migration],
    registries: Sequence[tuple[str, Mapping[int, tuple[str, str]]]],
    applied_anywhere: Callable[[int], bool],
) -> None:
    """Files against what the servers recorded: changed files, missing files, out-of-order versions."""
    by_version = {m.version: m for m in migrations}
    recorded_max = 0
    for label, registry in registries:
        for version, (filename, checksum) in registry.items():
            recorded_max = max(recorded_max, version)
            migration = by_version.get(version)
            if migration is None and not applied_anywhere(version):
                continue  # recorded, applied nowhere, and its file is gone: forgotten below (a bad file withdrawn)
            if migration is None:
                raise MigrationError(
                    f"migration {filename} is recorded on {label} but missing from the directory: run hv migrate "
                    "with the complete set of migration files",
                    server=label,
                    migration=filename,
                )
            if migration.checksum != checksum and applied_anywhere(version):
                raise MigrationError(
                    f"migration {migration.filename} changed after it was applied (its checksum on {label} differs): "
                    "an applied migration is never edited; write a new one",
                    server=label,
                    migration=migration.filename,
                )
    recorded = {version for _, registry in registries for version in registry if version in by_version}
    recorded_max = max(recorded, default=0)
    for migration in migrations:
        if migration.version not in recorded and migration.version < recorded_max:
            raise MigrationError(
                f"migration {migration.filename} is new but older than the newest recorded one (version "
                f"{recorded_max}): number new migrations after it",
                migration=migration.filename,
            )


def migrate(
    targets: Sequence[Target],
    migrations: Sequence[Migration],
    *,
    dry_run: bool,
    progress: SchemaProgress | None,
    wait: float,
) -> MigrationReport:
    """Apply ``migrations`` in version order to every shard that lacks them (see `Datastore.migrate`)."""
    started = time.perf_counter()
    migrators = [(migrator_of(store), store, shards) for store, shards in _by_database(targets)]
    parsed = migrators[0][0].check(migrations)  # every file parsed before any SQL runs
    report = MigrationReport(dry_run=dry_run)
    with contextlib.ExitStack() as locks:
        if not dry_run:
            for migrator, _, _ in migrators:  # always in config order: two migrators never wait on each other
                locks.enter_context(migrator.lock(wait))
        applied = [migrator.applied(shards) for migrator, _, shards in migrators]
        report.shards = sum(len(a) for a in applied)
        registries = [(store.label, migrator.registry()) for migrator, store, _ in migrators]

        def applied_anywhere(version: int) -> bool:
            return any(version in versions for server in applied for versions in server.values())

        _check_registries(migrations, registries, applied_anywhere)
        if not dry_run:
            wanted = {m.version for m in migrations}
            wrote = False
            for (migrator, _, _), (_, registry) in zip(migrators, registries, strict=True):
                withdrawn = sorted(set(registry) - wanted)
                if withdrawn:
                    migrator.forget(withdrawn)
                changed = [m for m in migrations if registry.get(m.version) != (m.filename, m.checksum)]
                if changed:
                    migrator.record(changed)
                wrote = wrote or bool(withdrawn or changed)
            if wrote:  # read again: a shard provisioned while the records were written has them from provisioning
                applied = [migrator.applied(shards) for migrator, _, shards in migrators]
                report.shards = sum(len(a) for a in applied)
        for migration, (transactional, statements) in zip(migrations, parsed, strict=True):
            todo = [sorted(s for s, versions in a.items() if migration.version not in versions) for a in applied]
            run = MigrationRun(
                version=migration.version,
                name=migration.filename,
                transactional=transactional,
                applied=sum(len(t) for t in todo),
                already=report.shards - sum(len(t) for t in todo),
            )
            report.runs.append(run)
            if dry_run:
                run.statements = statements
                continue
            t0 = time.perf_counter()
            bar = _Progress(progress, migration.filename, run.applied)
            work = [
                (lambda stop, m=migrator, f=migration, s=shards, b=bar: m.apply(f, s, b.advance, b.stopper(stop)))
                for (migrator, _, _), shards in zip(migrators, todo, strict=True)
                if shards
            ]
            if work:
                _parallel(work)
            for server, shards in zip(applied, todo, strict=True):
                for shard in shards:
                    server[shard].add(migration.version)
            run.seconds = time.perf_counter() - t0
    report.seconds = time.perf_counter() - started
    return report


def migrate_again(targets: Sequence[Target], migrations: Sequence[Migration], wait: float) -> MigrationReport:
    """`migrate` once more, without progress (shards that moved while the first run read placement)."""
    return migrate(targets, migrations, dry_run=False, progress=None, wait=wait)


def add_rerun(report: MigrationReport, again: MigrationReport) -> None:
    """Count into ``report`` what a second run (shards that moved during the first) applied."""
    runs = {run.version: run for run in report.runs}
    report.shards = max(report.shards, again.shards)
    for run in again.runs:
        first = runs.get(run.version)
        if first is None:
            report.runs.append(run)
            continue
        first.applied += run.applied
        first.already = max(report.shards - first.applied, 0)
        first.seconds += run.seconds
    report.seconds += again.seconds


def migration_status(targets: Sequence[Target], migrations: Sequence[Migration] | None) -> MigrationStatus:
    """Versions (recorded on the servers, and in the directory if given) and the shards behind on each."""
    targets = _by_database(targets)
    names: dict[int, str] = {}
    recorded: set[int] = set()
    applied: dict[int, set[int]] = {}
    for store, shards in targets:
        migrator = migrator_of(store)
        for version, (filename, _) in migrator.registry().items():
            names.setdefault(version, filename)
            recorded.add(version)
        applied.update(migrator.applied(shards))
    for migration in migrations or ():
        names.setdefault(migration.version, migration.filename)
    status = MigrationStatus(shards=len(applied))
    for version in sorted(names):
        behind = sorted(shard for shard, versions in applied.items() if version not in versions)
        status.versions.append(
            VersionStatus(
                version=version,
                name=names[version],
                recorded=version in recorded,
                applied=len(applied) - len(behind),
                behind=behind,
            )
        )
    return status
