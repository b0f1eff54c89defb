"""The public API: ``__all__`` is sorted, complete and importable; modules import alone."""

from __future__ import annotations

import importlib
import pkgutil
import types

import chassis


def test_all_is_sorted_and_unique() -> None:
    assert list(chassis.__all__) == sorted(set(chassis.__all__))


def test_all_matches_the_public_names() -> None:
    public = {
        name
        for name, value in vars(chassis).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    } | {"__version__"}
    assert set(chassis.__all__) == public


def test_every_exported_name_resolves() -> None:
    for name in chassis.__all__:
        assert getattr(chassis, name) is not None, name


def test_every_module_declares_all_of_real_names() -> None:
    for info in pkgutil.walk_packages(chassis.__path__, prefix="chassis."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", ()):
            assert hasattr(module, name), f"{info.name}.__all__ names missing {name}"
