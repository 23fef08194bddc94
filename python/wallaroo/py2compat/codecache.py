"""Where the package caches what it made of application modules
(:func:`cache_dir`), and the compiled code kept there between runs.

Compiling an application module (parse, compatibility layer, perhaps a
fissix translation, compile: :mod:`.compiler`) takes tens of milliseconds at
every start. The code object is kept in ``cache_dir()/code``, one file per
module path. An entry is used only for the same path, the same source bytes,
the same bytecode version of Python and the same compiler (its
:data:`TRANSLATOR_VERSION` and its own files' sizes and times), and for a
translated module the same fissix version; anything else is a miss, after
which the entry is written again. Written atomically (a file of this
process, then renamed), so workers starting together never read half an
entry. This module imports nothing heavy: a start that hits the cache never
loads the compiler.
"""

from __future__ import annotations

import importlib.util
import logging
import marshal
import os
import types
from typing import Any

log = logging.getLogger("wallaroo.py2compat")

#: Bump when the translation changes: it is part of both caches' keys.
TRANSLATOR_VERSION = "1"
#: The first bytes of a code cache entry.
_TAG = b"wallaroo-rs code\0"
#: The compiler's own files: a change to any of them is a new compiler.
_COMPILER_FILES = ("compiler.py", "rewrite.py", "runtime.py", "translate.py")
_stamp: bytes | None = None


def cache_dir() -> str:
    """``$WALLAROO_CACHE_DIR``, else ``$XDG_CACHE_HOME/wallaroo-rs/py2``, else
    ``~/.cache/wallaroo-rs/py2``."""
    explicit = os.environ.get("WALLAROO_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "wallaroo-rs", "py2")


def _compiler_stamp() -> bytes:
    """What identifies the compiler: Python's bytecode version, the
    translator's version and its files' sizes and modification times."""
    global _stamp
    if _stamp is None:
        here = os.path.dirname(os.path.abspath(__file__))
        parts = [TRANSLATOR_VERSION]
        for name in _COMPILER_FILES:
            try:
                info = os.stat(os.path.join(here, name))
                parts.append(f"{name}:{info.st_size}:{info.st_mtime_ns}")
            except OSError:
                parts.append(f"{name}:missing")
        _stamp = importlib.util.MAGIC_NUMBER + importlib.util.source_hash("|".join(parts).encode())
    return _stamp


def _header(data: bytes) -> bytes:
    return (_TAG + _compiler_stamp() + importlib.util.source_hash(data)
            + len(data).to_bytes(8, "little"))


def entry_file(directory: str, path: str) -> str:
    """The code cache file of the module file ``path``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    key = importlib.util.source_hash(os.fsencode(path)).hex()
    return os.path.join(directory, "code", f"{stem}-{key}.code")


def load(directory: str, path: str, data: bytes) -> tuple | None:
    """``(code, mode, rewrites, reason, entry file)`` of the module file
    ``path`` whose source is ``data``, from the cache in ``directory``; None
    when it holds no valid entry."""
    file = entry_file(directory, path)
    try:
        with open(file, "rb") as f:
            content = f.read()
    except OSError:
        return None
    header = _header(data)
    if not content.startswith(header):
        return None
    try:
        entry = marshal.loads(content[len(header):])
        stored_path, mode, rewrites, reason, fissix, code = entry
    except (EOFError, ValueError, TypeError):
        return None
    if stored_path != path or not isinstance(code, types.CodeType):
        return None
    if mode == "py2":
        from wallaroo.py2compat.translate import fissix_version

        if fissix != fissix_version():
            return None
    return code, mode, rewrites, reason, file


def store(directory: str, path: str, data: bytes, result: Any) -> bool:
    """Keep ``result`` (a :class:`.importer.Result`) of compiling ``data``,
    the source of the module file ``path``; False when it cannot be written
    (the run goes on without the cache)."""
    fissix = None
    if result.mode == "py2":
        from wallaroo.py2compat.translate import fissix_version

        fissix = fissix_version()
    entry = (path, result.mode, result.rewrites, result.reason, fissix, result.code)
    file = entry_file(directory, path)
    tmp = f"{file}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(file), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(_header(data) + marshal.dumps(entry))
        os.replace(tmp, file)
        return True
    except OSError as err:
        log.debug("cannot write the code cache %s: %s", file, err)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
