"""Make sure `argparse` and `pathlib` are the standard library's own.

The `nsenter` package (0.2) declares dependencies on the PyPI backports `argparse` and
`pathlib`, written for Python 2. In a venv the standard library comes first on sys.path and
they are harmless, but under PYTHONPATH or `pip install --target` layouts they come first and
shadow the standard library (the old pathlib breaks on 3.11). This runs before nsnet imports
either module, and before it imports nsenter, which imports both.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import sysconfig

SHADOWED = ("argparse", "pathlib")


def _stdlib_dir() -> str:
    return os.path.realpath(sysconfig.get_paths()["stdlib"])


def _is_stdlib(origin: str | None, stdlib: str) -> bool:
    return origin is not None and os.path.realpath(origin).startswith(stdlib + os.sep)


def ensure_stdlib(names: tuple[str, ...] = SHADOWED) -> list[str]:
    """Load the standard library's version of each name; return the names that were shadowed."""
    stdlib = _stdlib_dir()
    replaced = []
    for name in names:
        loaded = sys.modules.get(name)
        if loaded is not None:
            if _is_stdlib(getattr(loaded, "__file__", None), stdlib):
                continue
        else:
            spec = importlib.util.find_spec(name)
            if spec is None or _is_stdlib(spec.origin, stdlib):
                continue
        spec = importlib.machinery.PathFinder.find_spec(name, [stdlib])
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        replaced.append(name)
    return replaced
