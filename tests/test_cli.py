"""The hv command line, run in-process and as the installed console script."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from fixtures.services import PG_HOST, PG_PORT, missing_service, port_open, require_module

from hvcore import ConfigError, Datastore, KeyLayout
from hvcore._config import server_endpoint
from hvcore.cli import main
from hvcore.cli._cmd_store import status_document


def require_server() -> None:
    if not port_open(PG_HOST, PG_PORT):
        missing_service(f"no PostgreSQL at {PG_HOST}:{PG_PORT}")


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out)
    return code, out.getvalue()


def test_decode_old_library_id_as_json() -> None:
    code, text = run("key", "decode", "307821103844175873", "--layout", "hypervault", "--json")
    assert code == 0
    assert json.loads(text) == {
        "id": "307821103844175873",
        "created": "2014-11-15T14:11:06.450Z",
        "shard_id": 12,
        "added_id": 1,
        "timestamp_ms": 1416060666450,
    }


def test_decode_with_epoch_matches_layout() -> None:
    _, by_name = run("key", "decode", "307821103844175873", "--layout", "hypervault", "--json")
    _, by_epoch = run("key", "decode", "307821103844175873", "--epoch", "1379365531352", "--json")
    assert by_name == by_epoch


def test_decode_table_output() -> None:
    code, text = run("key", "decode", "307821103844175873", "--layout", "hypervault")
    assert code == 0
    assert "2014-11-15T14:11:06.450Z" in text and "shard_id" in text


def test_decode_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("key", "decode", "12abc")
    assert code == 2
    assert "not a decimal key: '12abc'" in capsys.readouterr().err


def test_new_keys_are_unique_and_decode_to_the_shard() -> None:
    code, text = run("key", "new", "--shard", "42", "--count", "2500")
    assert code == 0
    ids = [int(line) for line in text.split()]
    assert len(ids) == len(set(ids)) == 2500
    assert {KeyLayout.DEFAULT.key(i).shard_id for i in ids} == {42}


def test_new_keys_are_written_as_they_are_made() -> None:
    """``hv key new --count N`` writes each batch at once (``| head`` sees ids before all N exist; 2,000,000 keys
    were held in memory, 382 MB, and printed after 20 s)."""

    class Sink(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            return super().write(text)

    out = Sink()
    assert main(["key", "new", "--shard", "3", "--count", "5000"], out) == 0
    assert len(out.getvalue().split()) == 5000
    assert out.writes >= 5, f"{out.writes} write(s) for 5,000 keys: not written batch by batch"


@pytest.mark.parametrize(
    ("args", "message"), [(["--shard", "8192"], "0..8191"), (["--shard", "1", "--count", "0"], "above 0")]
)
def test_new_bad_input(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code, _ = run("key", "new", *args)
    except SystemExit as exc:  # argparse's usage error (a bad --count): exit status 2 and an error line
        code = int(exc.code or 0)
    assert code == 2
    assert message in capsys.readouterr().err


def test_demo_on_memory() -> None:
    code, text = run("demo", "--backend", "memory", "--rows", "200", "--json")
    assert code == 0
    result = json.loads(text)
    assert result["written"] == result["read_back"] == 200
    assert sum(s["rows"] for s in result["servers"]) == 200
    assert len(result["servers"]) == 2


def test_init_and_status_with_a_memory_config(tmp_path: Path) -> None:
    config = tmp_path / "hv.toml"
    config.write_text(
        'backend = "memory"\npool_max = 4\n\n[[servers]]\nshards = "0-8"\nname = "cli-a"\n\n'
        '[[servers]]\nshards = "8-16"\nname = "cli-b"\n'
    )
    code, text = run("init", "--config", str(config), "--json")
    assert code == 0 and sum(s["shards"] for s in json.loads(text)["servers"]) == 16
    code, text = run("status", "--config", str(config))
    assert code == 0 and "memory:cli-a" in text and "0-8" in text


def test_bad_config_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('backend = "memory"\n[[servers]]\nshards = "5-1"\n')
    assert run("status", "--config", str(config))[0] == 2
    assert "reversed" in capsys.readouterr().err
    assert run("status", "--config", str(tmp_path / "missing.toml"))[0] == 2
    assert "does not exist" in capsys.readouterr().err


def test_config_show_masks_passwords(tmp_path: Path) -> None:
    config = tmp_path / "hv.toml"
    config.write_text(
        '[[servers]]\nshards = "0-8"\nhost = "db1"\npassword = "s3cret-pw"\n\n'
        '[[servers]]\nshards = "8-16"\nconninfo = "host=db2 password=other-s3cret user=u"\n'
    )
    code, text = run("config", "--config", str(config))
    assert code == 0
    assert "s3cret" not in text and "***" in text


def test_console_script_is_installed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hvcore.cli", "key", "decode", "307821103844175873", "--layout", "hypervault"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "2014-11-15T14:11:06.450Z" in result.stdout
    hv = Path(sys.executable).parent / "hv"
    assert hv.exists(), "the hv console script is not installed next to python"


def test_demo_on_embedded_postgresql() -> None:
    require_module("pgserver")
    code, text = run("demo", "--rows", "300", "--json")
    assert code == 0
    result = json.loads(text)
    assert result["written"] == result["read_back"] == 300
    assert [s["reachable"] for s in result["servers"]] == [True, True]
    assert sum(s["rows"] for s in result["servers"]) == 300
    assert "embedded" in result["setup"]


def test_version_says_how_keys_are_made(capsys: pytest.CaptureFixture[str]) -> None:
    from hvcore._keymaker import ACCELERATED

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("hypervault ")
    assert ("C accelerator" in out and "pure Python" not in out) if ACCELERATED else "pure Python" in out


# -- the package's shape -----------------------------------------------------------------------------------------


def test_the_cli_imports_no_backend_or_plugin() -> None:
    """hvcore (the CLI included) never imports a backend or plugin package: they come through hooks."""
    root = Path(__file__).resolve().parents[1] / "hvcore"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n.startswith(("hvbackend_", "hvplugin_"))]
    assert offenders == []
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, hvcore.cli; print(sorted(m for m in sys.modules if m.startswith('hv')))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "hvbackend" not in loaded and "hvplugin" not in loaded and "hvcore.cli" in loaded


def test_shared_options_are_declared_once() -> None:
    source = (Path(__file__).resolve().parents[1] / "hvcore" / "cli" / "_parser.py").read_text(encoding="utf-8")
    for option in ('"--config"', '"--json"', '"--layout"', '"--epoch"'):
        assert source.count(option) == 1, f"{option} is declared {source.count(option)} times in hvcore/cli/_parser.py"
    help_texts = {}
    for argv in (["init"], ["status"], ["config"], ["shard", "move"], ["shard", "plan"], ["shard", "export"]):
        out = io.StringIO()
        with pytest.raises(SystemExit), contextlib.redirect_stdout(out):
            main([*argv, "--help"])
        help_texts[" ".join(argv)] = out.getvalue()
    assert all("--config FILE" in text and "TOML config file" in text for text in help_texts.values()), help_texts


@pytest.mark.parametrize("action", ["plan", "export", "move"])
def test_shard_actions_have_descriptions(action: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["shard", action, "--help"])
    text = capsys.readouterr().out
    usage, _, rest = text.partition("\n\n")
    description = rest.split("\n\n")[0]
    assert usage.startswith(f"usage: hv shard {action}")
    assert not description.startswith(("positional arguments", "options")) and len(description) > 60, text


# -- hv demo without its extra -----------------------------------------------------------------------------------


def run_python_without(module: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``hv argv`` in a fresh interpreter where ``module`` cannot be imported, as if it were not installed."""
    code = f"import sys; sys.modules[{module!r}] = None\nfrom hvcore.cli import main\nsys.exit(main({argv!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("missing", ["pgserver", "psycopg"])
def test_demo_without_its_extra_is_one_error_line(missing: str) -> None:
    done = run_python_without(missing, ["demo", "--rows", "10"])
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("hv: error: hv demo runs on embedded PostgreSQL servers: ")
    assert "pip install 'hypervault[embedded]'" in lines[0] and "Traceback" not in done.stderr
    if missing == "psycopg":  # the PostgreSQL plugin itself did not load: say why, and what to install
        assert "postgres (ModuleNotFoundError: " in lines[0] and "pip install 'hypervault[postgres]'" in lines[0]


# -- hv config, hv status --json, shards=8 ------------------------------------------------------------------------


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_config_prints_a_readable_summary_and_json_when_asked(tmp_path: Path) -> None:
    config = write(
        tmp_path / "hv.toml",
        'backend = "jsonb"\npool_max = 4\nlayout = "hypervault"\n\n'
        '[[servers]]\nshards = "0-8"\nhost = "db1"\npassword = "s3cret-pw"\n\n'
        '[[servers]]\nshards = "8-16"\nconninfo = "postgresql://u:other-s3cret@db2:5433/app"\n',
    )
    code, text = run("config", "--config", config)
    assert code == 0 and "s3cret" not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert "backend             jsonb" in text and "4 connections per server" in text
    assert "hypervault (epoch 2013-09-16T21:05:31.352Z" in text
    assert "host=db1 password=***" in text and "postgresql://u:***@db2:5433/app" in text
    code, text = run("config", "--config", config, "--json")
    doc = json.loads(text)
    assert code == 0 and doc["backend"] == "jsonb" and doc["layout"] == "hypervault" and "s3cret" not in text
    assert [s["shards"] for s in doc["servers"]] == ["0-8", "8-16"] and doc["servers"][0]["password"] == "***"


def test_status_document_sorts_rows_per_shard() -> None:
    entry = {"server": "x", "reachable": True, "rows_per_shard": {9: 1, 2: 5, 10: 0, 3: 7}}
    (doc,) = status_document([entry])
    assert list(doc["rows_per_shard"]) == [2, 3, 9, 10] and doc["rows_per_shard"][3] == 7
    assert list(entry["rows_per_shard"]) == [9, 2, 10, 3]  # type: ignore[call-overload]  # the input is left alone


def test_status_json_lists_shards_in_order(tmp_path: Path) -> None:
    config = write(
        tmp_path / "hv.toml",
        'backend = "memory"\n[[servers]]\nshards = "8-12, 0-4"\nname = "sorted-a"\n\n'
        '[[servers]]\nshards = "4-8"\nname = "sorted-b"\n',
    )
    assert run("init", "--config", config)[0] == 0
    code, text = run("status", "--config", config, "--json")
    assert code == 0
    status = json.loads(text)
    assert [[int(s) for s in entry["rows_per_shard"]] for entry in status] == [[0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7]]
    assert status[0]["shards"] == "0-4,8-12"


@pytest.mark.parametrize("shards", ["8", "0"])
def test_an_int_shards_setting_is_refused_with_the_range_to_write(
    tmp_path: Path, shards: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "hv.toml", f'backend = "memory"\n[[servers]]\nshards = {shards}\nname = "int-shards"\n')
    for command in ("status", "config"):
        assert run(command, "--config", config)[0] == 2
        err = capsys.readouterr().err
        assert f"shards={shards} is an int" in err and f'write shards="{shards}-{int(shards) + 1}"' in err
    with pytest.raises(ConfigError, match='shards="8-9" for shard 8 alone'):
        Datastore([dict(shards=8)], backend="memory")


# -- hv shard export: every way a server can be given ---------------------------------------------------------------


@pytest.mark.postgres
def test_shard_export_reads_every_way_a_server_is_given(tmp_path: Path) -> None:
    """conninfo keyword strings, URLs, separate keys, and both (keys win); never a password."""
    require_server()
    password = "Exp0rt-s3cret"
    servers: list[tuple[str, dict[str, object]]] = [
        ("0-2", {"conninfo": "host=localhost port=5432 dbname=postgres"}),
        ("2-4", {"conninfo": f"host=db-c.invalid port=6543 dbname=other user=u password={password}"}),
        ("4-6", {"conninfo": f"postgresql://u:{password}@db-b.invalid:5433/appdb"}),
        ("6-8", {"conninfo": f"postgresql://u:{password}@db-d.invalid:5433/appdb", "port": 7000, "dbname": "k"}),
        ("8-10", {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "template1", "password": password}),
        ("10-12", {"host": "db-e.invalid", "user": "appuser"}),  # libpq: dbname defaults to the user name
    ]
    lines = ['backend = "jsonb"', "pool_block_timeout = 1", ""]
    for shards, settings in servers:
        lines += ["[[servers]]", f'shards = "{shards}"']
        lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        lines.append("")
    config = write(tmp_path / "hv.toml", "\n".join(lines))
    expected = [
        ("localhost", 5432, "postgres"),
        ("db-c.invalid", 6543, "other"),
        ("db-b.invalid", 5433, "appdb"),
        ("db-d.invalid", 7000, "k"),
        ("127.0.0.1", 5432, "template1"),
        ("db-e.invalid", 5432, "appuser"),
    ]

    code, text = run("shard", "export", "--format", "json", "--config", config)
    assert code == 0 and password not in text
    exported = json.loads(text)
    assert [(s["host"], s["port"], s["dbname"]) for s in exported["servers"]] == expected
    assert [s["label"] for s in exported["servers"]] == [f"{h}:{p}/{d}" for h, p, d in expected]  # as the stores say
    code, text = run("shard", "export", "--format", "citus", "--config", config)
    assert code == 0 and password not in text
    assert [line for line in text.splitlines() if "citus_add_node" in line] == [
        f"SELECT citus_add_node('{h}', {p});" for h, p, _ in expected
    ]
    assert "SELECT citus_schema_move('shard0005', 'db-b.invalid', 5433, 'block_writes') WHERE NOT EXISTS (" in text
    code, text = run("shard", "export", "--format", "pgdog", "--config", config)
    assert code == 0 and password not in text
    databases = tomllib.loads(text)["databases"]
    assert [(d["host"], d["port"], d["database_name"]) for d in databases] == expected


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"conninfo": "postgresql://u:p%zzBadS3cret@h/db"}, "invalid percent-encoded"),
        ({"conninfo": "host=a,b port=5432,5433 password=BadS3cret"}, "several hosts"),
        ({"host": "h", "port": "http", "password": "BadS3cret"}, "port must be a number in 1..65535"),
        ({"host": "h", "bogus_option": "1", "password": "BadS3cret"}, "unknown connection setting 'bogus_option'"),
    ],
)
def test_server_endpoint_refuses_what_libpq_would_without_the_password(settings: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        server_endpoint(settings)
    assert fragment in str(info.value) and "BadS3cret" not in str(info.value)


@pytest.mark.parametrize("keep", [False, True])
def test_demo_on_a_configs_servers_deletes_only_its_own_rows(
    pg_datastore_factory: Any, tmp_path: Path, keep: bool
) -> None:
    """``hv demo --config`` wrote its rows into the configured databases and left them there (a new user's finding):
    they carry a run mark and are deleted at the end, the application's rows untouched."""
    app = pg_datastore_factory("jsonb")
    mine = [app.put(s, 0, city="Oslo", user="app") for s in (1, 9)]
    lines = ['backend = "jsonb"']
    for server in app._config.servers:
        lines += ["[[servers]]"] + [f"{k} = {json.dumps(v)}" for k, v in server.items()]
    config = tmp_path / "hv.toml"
    config.write_text("\n".join(lines) + "\n")
    code, text = run("demo", "--config", str(config), "--rows", "40", *(["--keep"] if keep else []))
    assert code == 0, text
    rows = list(app.query())
    assert {r.key for r in rows} >= set(mine)
    if keep:
        assert len(rows) == 42 and "were kept" in text
    else:
        assert [r.key for r in rows] == sorted(mine) and "40 rows were deleted again" in text


def test_commands_that_make_no_keys_lease_no_worker_number(tmp_path: Path, pg_fresh_db: dict[str, Any]) -> None:
    """Datastores lease a worker number by default (worker="auto"); hv init/status/config/shard export make no
    keys, so they neither create the lease table nor hold a number."""
    import psycopg

    config = tmp_path / "hv.toml"
    settings = "\n".join(f"{k} = {json.dumps(v)}" for k, v in pg_fresh_db.items())
    config.write_text(f'backend = "jsonb"\n[[servers]]\nshards = "0-4"\n{settings}\n')
    for argv in (["init"], ["status"], ["shard", "export", "--format", "json"]):
        code, text = run(*argv, "--config", str(config))
        assert code == 0, (argv, text)
    with psycopg.connect(**pg_fresh_db) as conn:
        assert conn.execute("SELECT to_regclass('hypervault.worker_leases')").fetchone() == (None,)


def test_status_watch_json_prints_one_json_document_per_line_and_count_needs_watch(tmp_path: Path) -> None:
    """``--watch --json`` is JSON Lines (each round one document on one line: ``json.loads`` per line works);
    ``--count`` without ``--watch`` is a usage error naming both (it was ignored): ``hv status`` and ``hv metrics``."""
    config = tmp_path / "hv.toml"
    config.write_text('backend = "memory"\n[[servers]]\nshards = "0-8"\n')
    out = io.StringIO()
    assert main(["status", "--config", str(config), "--watch", "0.05", "--count", "3", "--json"], out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(isinstance(json.loads(line), list) for line in lines), out.getvalue()
    out = io.StringIO()
    assert main(["status", "--config", str(config), "--json"], out) == 0
    assert isinstance(json.loads(out.getvalue()), list) and out.getvalue().count("\n") > 1  # one document, indented
    alone = [["status", "--config", str(config), "--count", "2"], ["metrics", "http://127.0.0.1:9/", "--count", "2"]]
    for argv in alone:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(argv, io.StringIO()) == 2
        assert "--count 2" in err.getvalue() and "--watch" in err.getvalue(), err.getvalue()
