"""The built wheel: only our own import names at the top level, typed, with the entry points users rely on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fixtures.services import IN_CI

ROOT = Path(__file__).resolve().parent.parent


def _tracked_copy(into: Path) -> Path:
    """A copy of the files git tracks: a build from it sees no compiled module or build/ left by an earlier build."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, into / name)
    return into


@pytest.mark.slow
def test_wheel_installs_no_generic_top_level_names(tmp_path: Path) -> None:
    source = _tracked_copy(tmp_path / "source")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source), "-w", tmp_path],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("hypervault-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    top = {n.split("/")[0] for n in names if not n.startswith("hypervault-")}
    assert top == {"hvcore", "hvbackend_memory", "hvbackend_postgres", "hvplugin_redis", "hvplugin_pytest"}
    for package in top:
        assert f"{package}/py.typed" in names, f"{package} ships no py.typed"
    assert "hvcore/_speedups.pyi" in names
    if IN_CI:  # a compiler is there: the accelerator must be in the wheel (elsewhere the build may fall back)
        assert any(n.startswith("hvcore/_speedups.") and n.endswith((".so", ".pyd")) for n in names), names
    assert "hv = hvcore.cli:main" in entry_points
    cli_modules = {n.removeprefix("hvcore/cli/") for n in names if n.startswith("hvcore/cli/")}
    assert {"__init__.py", "__main__.py", "_main.py", "_parser.py", "_output.py"} <= cli_modules, cli_modules
    assert not [n for n in names if "bench" in n.lower() or "/tests/" in n or "_testing" in n]  # checkout-only code
    assert "[hypervault.backends]" in entry_points and "[pytest11]" in entry_points


@pytest.mark.slow
def test_a_build_without_a_c_compiler_still_makes_a_working_wheel(tmp_path: Path) -> None:
    """The accelerator is optional: with a compiler that always fails, the wheel is built without it."""
    source = _tracked_copy(tmp_path / "source")
    env = {**os.environ, "CC": "/bin/false"}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source), "-w", tmp_path],
        check=True,
        capture_output=True,
        env=env,
    )
    (wheel,) = tmp_path.glob("hypervault-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "hvcore/_keymaker.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyd"))], names
