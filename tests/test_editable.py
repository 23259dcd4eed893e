"""``pip install -e .`` gives type checkers a static path to every package (see tools/editable.py)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
from test_packaging import _tracked_copy

ROOT = Path(__file__).resolve().parent.parent

USER_CODE = """
import hvcore
import hvbackend_memory
import hvplugin_redis

db = hvcore.Datastore([dict(shards="0-4", name="x")], backend="memory")
with db.cursor(1) as cur:
    row = cur.fetchone()
reveal_type(row)
"""


@pytest.mark.slow
def test_an_editable_install_is_visible_to_mypy(tmp_path: Path) -> None:
    """Build the editable wheel from a copy of the tracked files, install its .pth in a bare venv, run mypy there."""
    source = _tracked_copy(tmp_path / "source")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    build = f"from setuptools import build_meta; print(build_meta.build_editable({str(wheels)!r}))"
    done = subprocess.run([sys.executable, "-c", build], cwd=source, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = wheels.glob("hypervault-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        pth_names = [n for n in archive.namelist() if n.endswith(".pth")]
        assert not [n for n in archive.namelist() if "finder" in n], "an import hook: static tools cannot follow it"
        (pth_name,) = pth_names
        lines = archive.read(pth_name).decode().split()
    assert not any(line.startswith("import") for line in lines)
    assert sorted(lines) == sorted(str(p) for p in (source, source / "backends", source / "plugins"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / pth_name).write_text("\n".join(lines) + "\n")
    (site / "hv-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # psycopg, pluggy, redis
    (tmp_path / "app.py").write_text(textwrap.dedent(USER_CODE))
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-executable", str(python), "app.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert 'Revealed type is "hvcore._row.Row | None"' in checked.stdout


@pytest.mark.slow
def test_the_sdist_carries_the_editable_command(tmp_path: Path) -> None:
    """pyproject.toml names tools/editable.py as a setuptools command: a build from the sdist imports it."""
    source = _tracked_copy(tmp_path / "source")
    build = "from setuptools import build_meta; print(build_meta.build_sdist('dist'))"
    done = subprocess.run([sys.executable, "-c", build], cwd=source, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (sdist,) = (source / "dist").glob("hypervault-*.tar.gz")
    with tarfile.open(sdist) as archive:
        assert any(name.endswith("/tools/editable.py") for name in archive.getnames())
