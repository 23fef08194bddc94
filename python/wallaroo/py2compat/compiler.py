"""Compiling one application module: as Python 3 with the compatibility
layer, or translated from Python 2 first. Imported only when a module's
compiled code is not in the code cache (:mod:`.codecache`)."""

from __future__ import annotations

import ast
import importlib.util
import os
import warnings
from typing import Any

from wallaroo.py2compat.cache import _cache_file, _read_cache, _write_cache
from wallaroo.py2compat.importer import Result
from wallaroo.py2compat.rewrite import apply_compat_layer
from wallaroo.py2compat.translate import _remap_lines, _source_line, _translate_py2


def _parse(source: Any, path: str) -> ast.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile(source, path, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)


def compile_module(data: bytes, path: str, cache: str | None = None) -> Result:
    """Compile the source ``data`` of the module file ``path`` (see the module
    docstring); ``cache`` is the translation cache directory (None: none)."""
    try:
        tree = _parse(data, path)
    except SyntaxError as err:
        py3 = err
    else:
        rewrites = apply_compat_layer(tree, path, data)
        if rewrites:
            code = compile(tree, path, "exec", dont_inherit=True)
        else:
            code = compile(data, path, "exec", dont_inherit=True)
        return Result(code, "py3", rewrites)

    try:
        text = importlib.util.decode_source(data)
    except (UnicodeDecodeError, LookupError, SyntaxError):
        raise py3 from None
    reason = f"not Python 3: {py3.msg}, line {py3.lineno}"
    cache_file = _cache_file(cache, os.path.abspath(path), data, "py2") if cache else None
    cached = _read_cache(cache_file) if cache_file else None
    tree = None
    if cached is not None:
        translated, lines = cached
        state = "hit"
        try:
            tree = _parse(translated, path)
        except SyntaxError:
            cached = None  # a damaged cache entry: translate again
    if cached is None:
        translated, lines = _translate_py2(text, path, py3)
        state = "off"
        if cache_file and _write_cache(cache_file, translated, lines):
            state = "miss"
    try:
        if tree is None:
            tree = _parse(translated, path)
    except SyntaxError as err:
        line = lines[min(err.lineno, len(lines)) - 1] if lines and err.lineno else err.lineno
        raise SyntaxError(
            f"{err.msg} (in the Python 2 translation)",
            (path, line, err.offset, _source_line(text, line)),
        ) from None
    rewrites = apply_compat_layer(tree, path, translated)
    if lines is not None:
        _remap_lines(tree, lines)
    code = compile(tree, path, "exec", dont_inherit=True)
    return Result(code, "py2", rewrites, state, cache_file if state != "off" else None, reason)
