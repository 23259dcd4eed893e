"""The C extension on every other CPython found on the machine (3.12, 3.13: a different int layout than 3.11)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest

ROOT = Path(__file__).resolve().parents[2]
PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"


def _other_pythons() -> list[Path]:
    """One interpreter per CPython minor version 3.12+ installed by pyenv (there is nothing to test without one)."""
    found: dict[str, Path] = {}
    for python in sorted(PYENV.glob("3.1[2-9].*/bin/python3")):
        minor = ".".join(python.parent.parent.name.split(".")[:2])
        found.setdefault(minor, python)
    return list(found.values())


CHECKS = r"""
import gc, json, os, random, sys, threading
from hvcore import Key, KeyGenerator, KeyLayout, _keymaker
from hvcore import _speedups as c

out = {"version": sys.version.split()[0], "accelerated": _keymaker.ACCELERATED, "direct": c.DIRECT}
rng = random.Random(7)
cases = [0, 1, 2**30 - 1, 2**30, 2**60, 2**63 - 1] + [rng.randrange(2**63) for _ in range(2000)]
for cls in (Key, KeyLayout.HYPERVAULT.key_type):
    for value in cases:
        key = c.make_key(cls, value)
        assert type(key) is cls and key == value and repr(key) == f"Key({value})", (cls, value, key)
        assert not gc.is_tracked(key)
    for start in cases[:200]:
        count = min(rng.randrange(1100), 2**63 - start)
        assert c.make_keys(cls, start, count) == list(range(start, start + count)), (start, count)
class Wide(int):
    pass
try:
    c.make_key(Wide, 1)
    raise AssertionError("a class with a __dict__ was accepted")
except TypeError:
    pass
gen = KeyGenerator()
for i in range(5_000):  # warm: the generator's state refers to Key already
    gen.next_key(i % 64)
refs = sys.getrefcount(Key)
for i in range(50_000):
    gen.next_key(i % 64)
    c.make_keys(Key, 1 << 40, 4)
gc.collect()
assert sys.getrefcount(Key) == refs, (refs, sys.getrefcount(Key))
keys, lock = [], threading.Lock()
def work():
    mine = [gen.next_key(i % 5) for i in range(20_000)] + gen.next_keys(3, 2000)
    with lock:
        keys.extend(mine)
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
assert len(set(keys)) == len(keys) == 4 * 22_000
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read)
    child = [gen.next_key(s % 100) for s in range(20_000)] + gen.next_keys(7, 3000)
    os.write(write, json.dumps(child).encode())
    os._exit(0)
os.close(write)
parent = [gen.next_key(s % 100) for s in range(20_000)] + gen.next_keys(7, 3000)
with os.fdopen(read) as pipe:
    child = json.loads(pipe.read())
os.waitpid(pid, 0)
both = parent + child + keys
assert len(set(both)) == len(both), "parent and child repeated an id"
out["keys"] = len(both)
print(json.dumps(out))
"""


def _build(python: Path, into: Path) -> None:
    """hvcore (sources and the extension compiled for ``python``) and pluggy, in ``into``."""
    info = json.loads(
        subprocess.run(
            [
                python,
                "-c",
                "import json, sysconfig as s; print(json.dumps([s.get_paths()['include'], "
                "s.get_config_var('EXT_SUFFIX')]))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    include, suffix = info
    package = into / "hvcore"
    shutil.copytree(ROOT / "hvcore", package, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copytree(Path(pluggy.__file__).parent, into / "pluggy", ignore=shutil.ignore_patterns("__pycache__"))
    compiler = os.environ.get("CC", "gcc")
    subprocess.run(
        [
            compiler,
            "-O2",
            "-shared",
            "-fPIC",
            "-Wall",
            "-Werror",
            "-Wno-missing-field-initializers",
            f"-I{include}",
            str(ROOT / "hvcore" / "_speedups.c"),
            "-o",
            str(package / f"_speedups{suffix}"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="the checks fork")
@pytest.mark.parametrize("python", _other_pythons() or [None], ids=lambda p: p.parent.parent.name if p else "none")
def test_the_extension_on_other_cpythons(python: Path | None, tmp_path: Path) -> None:
    if python is None:
        pytest.skip(f"no CPython 3.12+ under {PYENV}: only the running {sys.version.split()[0]} is tested")
    if shutil.which(os.environ.get("CC", "gcc")) is None:
        pytest.skip("no C compiler")
    _build(python, tmp_path)
    done = subprocess.run(
        [python, "-c", CHECKS],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["accelerated"] and result["keys"] == 4 * 22_000 + 2 * 23_000
    minor = tuple(int(x) for x in result["version"].split(".")[:2])
    assert result["direct"] == (1 if minor <= (3, 13) else 0)
