"""Find and import the application module named on the command line."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from wallaroo import py2compat

#: Example applications shipped in the wheel, each a directory holding NAME/NAME.py.
EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples")


class AppNotFound(Exception):
    """The application could not be found or imported; the message says why."""


def _insert_path(directory: str) -> None:
    directory = os.path.abspath(directory)
    if directory not in sys.path:
        sys.path.insert(0, directory)


def _import(name: str, origin: str, py2_compat: bool = True) -> ModuleType:
    py2compat.install(name, enabled=py2_compat)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == name or name.startswith(f"{err.name}."):
            raise AppNotFound(f"cannot import application {origin!r}: {err}") from None
        raise


def is_bundled(module: ModuleType) -> bool:
    """Whether ``module`` is an example shipped with the package (not a module of
    the user's with the same name, which :func:`load_app` prefers)."""
    path = getattr(module, "__file__", None)
    if not path:
        return False
    examples = os.path.realpath(EXAMPLES_DIR) + os.sep
    return os.path.realpath(path).startswith(examples)


def load_app(spec: str, py2_compat: bool = True) -> ModuleType:
    """Import the application ``spec``.

    ``spec`` is, in this order: a ``.py`` file or a directory given as a path
    (its directory goes on ``sys.path`` so sibling modules import), a module
    importable from the current directory or ``PYTHONPATH``, or an example
    bundled with the package. Unless ``py2_compat`` is false, the modules of
    the application's directory are translated from Python 2 as they are
    imported (:mod:`wallaroo.py2compat`).
    """
    if spec.endswith(".py") or os.sep in spec or os.path.isdir(spec):
        path = os.path.abspath(spec)
        if os.path.isfile(path) and path.endswith(".py"):
            _insert_path(os.path.dirname(path))
            return _import(os.path.splitext(os.path.basename(path))[0], spec, py2_compat)
        if os.path.isdir(path):
            name = os.path.basename(path.rstrip(os.sep))
            if os.path.isfile(os.path.join(path, f"{name}.py")):
                _insert_path(path)
                return _import(name, spec, py2_compat)
            if os.path.isfile(os.path.join(path, "__init__.py")):
                _insert_path(os.path.dirname(path))
                return _import(name, spec, py2_compat)
            raise AppNotFound(
                f"application directory {spec!r} has neither {name}.py nor __init__.py"
            )
        raise AppNotFound(f"application file {spec!r} does not exist")
    _insert_path(os.getcwd())
    try:
        return _import(spec, spec, py2_compat)
    except AppNotFound:
        bundled = os.path.join(EXAMPLES_DIR, spec)
        if os.path.isfile(os.path.join(bundled, f"{spec}.py")):
            _insert_path(bundled)
            return _import(spec, spec, py2_compat)
        raise AppNotFound(
            f"cannot find application {spec!r}: not a .py file, not a directory, "
            "not importable from the current directory or PYTHONPATH, not a bundled example"
        ) from None
