"""The public surface: sorted exports, public module path, docstrings everywhere."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import hvcore


def test_all_is_sorted_and_complete() -> None:
    assert hvcore.__all__ == sorted(hvcore.__all__)
    for name in hvcore.__all__:
        assert hasattr(hvcore, name), name


def test_public_classes_report_the_public_module() -> None:
    for name in hvcore.__all__:
        obj = getattr(hvcore, name)
        if inspect.isclass(obj):
            assert obj.__module__ == "hvcore", f"{name}.__module__ is {obj.__module__}"


def test_every_module_and_public_name_has_a_docstring() -> None:
    packages = ["hvcore", "hvbackend_memory", "hvbackend_postgres", "hvplugin_redis", "hvplugin_pytest"]
    missing = []
    for package_name in packages:
        package = importlib.import_module(package_name)
        modules = [package] + [
            importlib.import_module(f"{package_name}.{info.name}") for info in pkgutil.iter_modules(package.__path__)
        ]
        for module in modules:
            if not (module.__doc__ or "").strip():
                missing.append(module.__name__)
            for name, obj in vars(module).items():
                if name.startswith("_") or getattr(obj, "__module__", None) not in (module.__name__, "hvcore"):
                    continue
                if (inspect.isclass(obj) or inspect.isfunction(obj)) and not (obj.__doc__ or "").strip():
                    missing.append(f"{module.__name__}.{name}")
    assert not missing, f"no docstring: {sorted(set(missing))}"
