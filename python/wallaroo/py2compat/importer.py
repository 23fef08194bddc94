"""The import hook (finder and loader): an application module's code comes
from the code cache (:mod:`.codecache`), else from :mod:`.compiler`, which
is imported only then."""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import logging
import os
import site
import sys
import sysconfig
import types
from collections.abc import Iterable
from typing import Any, NamedTuple

from wallaroo.py2compat import codecache
from wallaroo.py2compat.codecache import cache_dir

log = logging.getLogger("wallaroo.py2compat")

#: The wallaroo package: never translated.
_WALLAROO_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


class Result(NamedTuple):
    """How a module was compiled (:func:`.compiler.compile_module`)."""

    code: types.CodeType
    #: "py3" (compiles as Python 3: compatibility layer only) or "py2" (fissix
    #: full fixer set, then the compatibility layer).
    mode: str
    #: Rewrites made by the compatibility layer (0: compiled as it is).
    rewrites: int
    #: For "py2": "hit" (translation read from the cache), "miss" (translated
    #: and cached), "off" (translated, not cached). "code": the compiled code
    #: was read from the code cache (:mod:`.codecache`), in either mode.
    cache: str | None = None
    cache_file: str | None = None
    #: For "py2": why the source is not Python 3.
    reason: str | None = None

    def describe(self) -> str:
        """One line for the log."""
        code = f"; code from cache {self.cache_file}" if self.cache == "code" else ""
        if self.mode == "py3":
            layer = f"{self.rewrites} rewrites" if self.rewrites else "nothing to rewrite"
            return f"mode py3 (compiles as Python 3; compat layer: {layer}){code}"
        text = (
            f"mode py2 ({self.reason}; fissix full fixer set + compat layer, "
            f"{self.rewrites} rewrites)"
        )
        if code:
            return f"{text}{code}"
        if self.cache == "hit":
            return f"{text}; translation from cache {self.cache_file}"
        if self.cache == "miss":
            return f"{text}; translation cached in {self.cache_file}"
        return f"{text}; translation not cached"


# ---------------------------------------------------------------------------
# Finder and loader
# ---------------------------------------------------------------------------


def _real(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _site_dirs() -> set:
    dirs = set()
    with contextlib.suppress(Exception):
        dirs.update(site.getsitepackages())
    with contextlib.suppress(Exception):
        dirs.add(site.getusersitepackages())
    paths = sysconfig.get_paths()
    dirs.update(paths[key] for key in ("purelib", "platlib") if key in paths)
    dirs.update(
        p
        for p in sys.path
        if os.path.basename(p.rstrip(os.sep)) in ("site-packages", "dist-packages")
    )
    return {_real(d) for d in dirs if d}


def _stdlib_dirs() -> set:
    dirs = {os.path.dirname(os.__file__)}
    for scheme_vars in (None, {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}):
        paths = sysconfig.get_paths(vars=scheme_vars) if scheme_vars else sysconfig.get_paths()
        dirs.update(paths[key] for key in ("stdlib", "platstdlib") if key in paths)
    return {_real(d) for d in dirs if d}


class Py2Loader(importlib.machinery.SourceFileLoader):
    """Compiles an application module through :func:`compile_module`; never
    writes bytecode."""

    def __init__(self, fullname: str, path: str, finder: Py2Finder) -> None:
        super().__init__(fullname, path)
        self._finder = finder

    def get_code(self, fullname: str) -> types.CodeType:
        path = self.get_filename(fullname)
        data = self.get_data(path)
        cache = self._finder.cache_dir
        cached = codecache.load(cache, path, data) if cache else None
        if cached is not None:
            code, mode, rewrites, reason, entry = cached
            result = Result(code, mode, rewrites, "code", entry, reason)
        else:
            from wallaroo.py2compat.compiler import compile_module

            result = compile_module(data, path, cache)
            if cache:
                codecache.store(cache, path, data, result)
        log.debug("%s (%s): %s", fullname, path, result.describe())
        return result.code


class Py2Finder:
    """Finds the ``.py`` modules under the application roots and loads them
    with :class:`Py2Loader`. The standard library is never handled; neither
    are site-packages nor the wallaroo package, unless a root lies inside them
    (an application installed there, a bundled example)."""

    def __init__(self, roots: Iterable[str] = (), cache: str | None = None) -> None:
        self.roots: list = []
        self.cache_dir = cache
        self._stdlib = _stdlib_dirs()
        self._sites = _site_dirs()
        self._guarded = self._sites | {_WALLAROO_DIR}
        for root in roots:
            self.add_root(root)

    def add_root(self, path: str) -> None:
        """Translate the modules under ``path`` (a directory, or one file)."""
        root = _real(path)
        if root not in self.roots:
            self.roots.append(root)
            log.debug("py2 compatibility: translating the modules under %s", root)

    def covers(self, filename: str) -> bool:
        """Whether the module file ``filename`` is translated."""
        path = _real(filename)
        if any(_under(path, d) for d in self._stdlib) and not any(
            _under(path, d) for d in self._sites
        ):
            return False
        for root in self.roots:
            if not _under(path, root):
                continue
            if any(
                _under(path, guarded) and not (root != guarded and _under(root, guarded))
                for guarded in self._guarded
            ):
                continue
            return True
        return False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if not self.roots or (path is None and fullname in sys.builtin_module_names):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or type(spec.loader) is not importlib.machinery.SourceFileLoader:
            return None
        if not spec.origin or not self.covers(spec.origin):
            return None
        spec.loader = Py2Loader(fullname, spec.origin, self)
        return spec

    def invalidate_caches(self) -> None:
        pass


_finder: Py2Finder | None = None


def application_roots(module: str) -> list:
    """Where the modules of application ``module`` live, found without
    importing it: the package directory of a package, else the directory
    holding the module (just the file itself if that directory is
    site-packages or the standard library)."""
    try:
        if module.partition(".")[0] == "wallaroo":
            spec = importlib.util.find_spec(module)
        else:
            spec = importlib.machinery.PathFinder.find_spec(module.partition(".")[0])
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return list(spec.submodule_search_locations)
    if not spec.has_location or not spec.origin or not spec.origin.endswith(".py"):
        return []
    directory = _real(os.path.dirname(spec.origin))
    if directory in _site_dirs() | _stdlib_dirs():
        return [spec.origin]
    return [directory]


def install_roots(roots: Iterable[str], cache: str | None = None) -> Py2Finder:
    """Translate the modules under ``roots`` from now on; returns the finder."""
    global _finder
    if _finder is None or _finder not in sys.meta_path:
        uninstall()
        _finder = Py2Finder(cache=cache_dir() if cache is None else cache)
        sys.meta_path.insert(0, _finder)
    elif cache is not None:
        _finder.cache_dir = cache
    for root in roots:
        _finder.add_root(root)
    return _finder


def install(module: str, *, enabled: bool = True, cache: str | None = None) -> Py2Finder | None:
    """Before the application ``module`` is imported: translate the modules of
    its directory (see :func:`application_roots`). With ``enabled`` false,
    remove any translation: modules import as they are."""
    if not enabled:
        uninstall()
        log.debug("py2 compatibility off: application modules import as they are")
        return None
    roots = application_roots(module)
    if not roots:
        return _finder
    return install_roots(roots, cache)


def uninstall() -> None:
    """Stop translating (modules already imported stay as they are)."""
    global _finder
    for finder in list(sys.meta_path):
        if isinstance(finder, Py2Finder):
            sys.meta_path.remove(finder)
    _finder = None
