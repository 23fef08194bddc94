"""Run Python 2 application modules on Python 3: import-time translation.

:func:`install` puts a meta path finder in front of the normal import
machinery. It handles only the ``.py`` files under the application's
directory (never the standard library, site-packages or this package) and
compiles them itself, without writing ``.pyc`` files:

* A module that compiles as Python 3 keeps Python 3 semantics. Only what would
  fail on Python 3 is rewritten (on the AST, so line numbers stay): a global
  name that Python 2 had as a builtin (``xrange``, ``unicode``, ``long``,
  ``basestring``, ``raw_input``, ...) is looked up at run time in the module,
  then in the builtins, and only then in the compatibility builtins; an
  attribute Python 2 dicts had (``.iteritems``, ``.has_key``, ...) is looked
  up on the object first and replaced by the dict equivalent only when a
  mapping lacks it, so a class that defines its own ``iteritems`` keeps it.
* A module that does not compile as Python 3 is translated by fissix (a
  maintained lib2to3 fork) with its full default fixer set, then gets the same
  compatibility layer. The translation is cached (see :func:`cache_dir`) and
  compiled with the module's real path; the AST line numbers are mapped back
  to the original lines where a fixer added lines.
* In both cases ``ord()`` of an int (an item of a ``bytes`` payload) returns
  it, and ``struct.pack``/``pack_into`` (also through ``from struct import
  pack`` and ``struct.Struct``) accept ``str`` for ``s``/``p``/``c`` fields,
  encoded as UTF-8.
* A module neither Python 3 nor fissix can parse raises a ``SyntaxError``
  naming the file and the line.

Each handled module is logged at DEBUG on the ``wallaroo.py2compat`` logger
with the mode used. ``python -m wallaroo --no-py2-compat`` turns it all off.

The package, by concern: :mod:`.runtime` (what translated modules call at run
time), :mod:`.rewrite` (the AST rewrite), :mod:`.translate` (fissix),
:mod:`.cache` (translations kept on disk), :mod:`.compiler` (compiling one
module), :mod:`.codecache` (compiled code kept on disk, so a start compiles
nothing) and :mod:`.importer` (the finder and loader).
"""

from __future__ import annotations

from wallaroo._lazy import lazy_names
from wallaroo.py2compat.codecache import TRANSLATOR_VERSION, cache_dir
from wallaroo.py2compat.importer import (
    Py2Finder,
    Py2Loader,
    Result,
    application_roots,
    install,
    install_roots,
    uninstall,
)

#: Imported on first use: a start whose modules are all in the code cache
#: loads neither the compiler nor (unless a module uses it) the runtime.
_RUNTIME = ("HELPER", "ModuleCompat", "Struct", "apply", "attr", "basestring", "cmp",
            "execfile", "file", "ord", "pack", "pack_into", "print_to", "unicode")
__getattr__ = lazy_names(
    __name__,
    {
        "compile_module": "compiler",
        "apply_compat_layer": "rewrite",
        "fissix_version": "translate",
        **dict.fromkeys(_RUNTIME, "runtime"),
    },
)

__all__ = [
    "HELPER",
    "TRANSLATOR_VERSION",
    "ModuleCompat",
    "Py2Finder",
    "Py2Loader",
    "Result",
    "Struct",
    "application_roots",
    "apply",
    "apply_compat_layer",
    "attr",
    "basestring",
    "cache_dir",
    "cmp",
    "compile_module",
    "execfile",
    "file",
    "fissix_version",
    "install",
    "install_roots",
    "ord",
    "pack",
    "pack_into",
    "print_to",
    "uninstall",
    "unicode",
]
