"""An editable install that type checkers can see: a static ``.pth`` listing the package roots.

setuptools installs a project whose packages live in several folders (``hvcore/``, ``backends/hvbackend_*``,
``plugins/hvplugin_*``) in editable mode through an import hook (a meta path finder written to site-packages).
Python imports through it, but static tools cannot run it: mypy, pyright and friends read only path lines of
``.pth`` files, so after ``pip install -e .`` mypy reported ``Cannot find implementation or library stub for module
named "hvcore"`` (setuptools issue 3518, mypy issue 13392). ``editable_mode=compat`` writes a static ``.pth`` but
only with the project root, and ``editable_mode=strict`` links files, so a module added later needs a reinstall.

`StaticPathEditableWheel` (``[tool.setuptools.cmdclass]`` in pyproject.toml) keeps setuptools' editable build and
replaces only the import hook with setuptools' own static-``.pth`` strategy listing the folders that hold the
top-level packages: the project root (``hvcore``), ``backends`` and ``plugins``. New modules are seen at once, as
with the hook. Explicit ``--config-settings editable_mode=strict|compat`` are left alone. If a setuptools release
drops the private strategy classes this relies on, the import hook is used as before (tests/test_editable.py
then fails and says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from setuptools.command.editable_wheel import editable_wheel

__all__ = ["StaticPathEditableWheel"]


class StaticPathEditableWheel(editable_wheel):  # type: ignore[misc]  # setuptools ships no types for it
    """setuptools' ``editable_wheel`` command with a static ``.pth`` of the package roots instead of an import hook."""

    def _select_strategy(self, name: str, tag: str, build_lib: Any) -> Any:
        strategy = super()._select_strategy(name, tag, build_lib)
        try:
            from setuptools.command.editable_wheel import _StaticPth, _TopLevelFinder
        except ImportError:  # pragma: no cover - a setuptools without them keeps its import hook
            return strategy
        if not isinstance(strategy, _TopLevelFinder):
            return strategy  # strict or compat mode, asked for explicitly
        project = Path(self.project_dir or ".").resolve()
        package_dir: dict[str, str] = dict(self.distribution.package_dir or {})
        top_level = [pkg for pkg in self.distribution.packages or [] if "." not in pkg]
        roots = sorted({(project / package_dir.get(pkg, pkg)).parent for pkg in top_level})
        return _StaticPth(self.distribution, name, roots)
