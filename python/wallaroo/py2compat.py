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
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import functools
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import json
import logging
import os
import site
import struct as _struct
import sys
import sysconfig
import tempfile
import threading
import types
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ModuleCompat",
    "Py2Finder",
    "Py2Loader",
    "Result",
    "application_roots",
    "cache_dir",
    "compile_module",
    "install",
    "install_roots",
    "uninstall",
]

log = logging.getLogger("wallaroo.py2compat")

#: Bump when the translation changes: it is part of the cache key.
TRANSLATOR_VERSION = "1"

#: The global a translated module uses to reach its compatibility helpers.
HELPER = "__py2compat__"

_WALLAROO_DIR = os.path.dirname(os.path.realpath(__file__))
_BUILTIN_ORD = builtins.ord


# ---------------------------------------------------------------------------
# Compatibility builtins and helpers (what translated modules call at run time)
# ---------------------------------------------------------------------------


class _Py2TypeMeta(type):
    """``isinstance``/``issubclass`` of a Python 2 type stand-in test its
    ``_py2_kinds`` (subclasses of the stand-in behave as usual)."""

    def __instancecheck__(cls, obj: Any) -> bool:
        kinds = cls.__dict__.get("_py2_kinds")
        return isinstance(obj, kinds) if kinds else type.__instancecheck__(cls, obj)

    def __subclasscheck__(cls, sub: type) -> bool:
        kinds = cls.__dict__.get("_py2_kinds")
        return issubclass(sub, kinds) if kinds else type.__subclasscheck__(cls, sub)


class unicode(str, metaclass=_Py2TypeMeta):
    """Python 2 ``unicode``: ``str``; built from bytes it decodes them (UTF-8)."""

    _py2_kinds = (str,)

    def __new__(cls, obj: Any = "", encoding: str | None = None, errors: str | None = None):
        if encoding is None and errors is None:
            if isinstance(obj, (bytes, bytearray)):
                value = bytes(obj).decode("utf-8")
            else:
                value = str(obj)
        else:
            value = str(obj, encoding or "utf-8", errors or "strict")
        return value if cls is unicode else str.__new__(cls, value)


class basestring(metaclass=_Py2TypeMeta):
    """Python 2 ``basestring``: ``isinstance`` is true for ``str`` and ``bytes``
    (payloads are ``bytes`` where Python 2 applications saw ``str``)."""

    _py2_kinds = (str, bytes)

    def __new__(cls, *args: Any, **kwargs: Any):
        raise TypeError("The basestring type cannot be instantiated")


class file(metaclass=_Py2TypeMeta):
    """Python 2 ``file(name, mode, buffering)``: ``open``."""

    _py2_kinds = (io.IOBase,)

    def __new__(cls, name: Any, mode: str = "r", buffering: int = -1):
        return open(name, mode, buffering)


def cmp(a: Any, b: Any) -> int:
    """Python 2 ``cmp``."""
    return (a > b) - (a < b)


def apply(func: Any, args: Iterable = (), kwargs: dict | None = None) -> Any:
    """Python 2 ``apply``."""
    return func(*args, **(kwargs or {}))


def execfile(filename: str, globals: dict | None = None, locals: Any = None) -> None:
    """Python 2 ``execfile``."""
    if globals is None:
        caller = sys._getframe(1)
        globals, locals = caller.f_globals, caller.f_locals
    with open(filename, "rb") as f:
        code = compile(f.read(), filename, "exec", dont_inherit=True)
    exec(code, globals, globals if locals is None else locals)


def ord(c: Any) -> int:
    """``ord`` that returns an int unchanged: ``ord(data[0])`` on a ``bytes``
    payload (Python 2 code indexed a ``str`` there)."""
    if type(c) is int:
        return c
    return _BUILTIN_ORD(c)


#: Python 2 builtins that Python 3 does not have (used only where a name is
#: not defined by the module nor by the builtins).
MISSING_BUILTINS: dict = {
    "xrange": range,
    "unicode": unicode,
    "long": int,
    "basestring": basestring,
    "raw_input": input,
    "unichr": chr,
    "reduce": functools.reduce,
    "intern": sys.intern,
    "cmp": cmp,
    "apply": apply,
    "execfile": execfile,
    "file": file,
    "reload": importlib.reload,
    "StandardError": Exception,
}

#: Builtins replaced in translated modules (unless the module defines the name).
OVERRIDDEN_BUILTINS: dict = {"ord": ord}

_NAMES = frozenset(MISSING_BUILTINS) | frozenset(OVERRIDDEN_BUILTINS)


def _iter_items(m: Mapping) -> Any:
    return lambda: iter(m.items())


def _iter_keys(m: Mapping) -> Any:
    return lambda: iter(m.keys())


def _iter_values(m: Mapping) -> Any:
    return lambda: iter(m.values())


_MAPPING_METHODS: dict = {
    "iteritems": _iter_items,
    "iterkeys": _iter_keys,
    "itervalues": _iter_values,
    "has_key": lambda m: m.__contains__,
    "viewitems": lambda m: m.items,
    "viewkeys": lambda m: m.keys,
    "viewvalues": lambda m: m.values,
}

_MAPPING_FUNCTIONS: dict = {
    "iteritems": lambda m: iter(m.items()),
    "iterkeys": lambda m: iter(m.keys()),
    "itervalues": lambda m: iter(m.values()),
    "has_key": lambda m, key: key in m,
    "viewitems": lambda m: m.items(),
    "viewkeys": lambda m: m.keys(),
    "viewvalues": lambda m: m.values(),
}

#: Attributes rewritten into :func:`attr` calls.
_ATTRS = frozenset(_MAPPING_METHODS) | {"next", "maxint"}


def _py2_attribute(obj: Any, name: str) -> Any:
    if name in _MAPPING_METHODS:
        if isinstance(obj, Mapping):
            return _MAPPING_METHODS[name](obj)
        if isinstance(obj, type) and issubclass(obj, Mapping):
            return _MAPPING_FUNCTIONS[name]
    elif name == "next":
        if hasattr(type(obj), "__next__"):
            return obj.__next__
    elif name == "maxint" and obj is sys:
        return sys.maxsize
    return None


def attr(obj: Any, name: str) -> Any:
    """``obj.name``; if that fails and ``obj`` is a mapping (or an iterator for
    ``next``, or ``sys`` for ``maxint``), the Python 2 equivalent."""
    try:
        return getattr(obj, name)
    except AttributeError:
        fallback = _py2_attribute(obj, name)
        if fallback is None:
            raise
        return fallback


def print_to(printer: Any, stream: Any, *values: Any, newline: bool = True) -> Any:
    """``print >>stream, values...`` of Python 2 (``newline`` false: a trailing
    comma). That is ``(print >> stream, values...)`` on Python 3, which fails
    unless ``print`` was rebound or ``stream`` defines ``__rrshift__``: then
    the Python 3 meaning stands."""
    if printer is builtins.print:
        try:
            result = printer >> stream
        except TypeError:
            printer(
                *values, file=sys.stdout if stream is None else stream, end="\n" if newline else " "
            )
            return None
    else:
        result = printer >> stream
    return (result, *values) if values else result


def _utf8_args(values: tuple) -> tuple | None:
    if not any(isinstance(v, str) for v in values):
        return None
    return tuple(v.encode("utf-8") if isinstance(v, str) else v for v in values)


def pack(fmt: Any, *values: Any) -> bytes:
    """``struct.pack`` that also takes ``str`` (UTF-8) for ``s``/``p``/``c`` fields."""
    try:
        return _struct.pack(fmt, *values)
    except _struct.error as err:
        fixed = _utf8_args(values)
        if fixed is None:
            raise
        try:
            return _struct.pack(fmt, *fixed)
        except _struct.error:
            raise err from None


def pack_into(fmt: Any, buffer: Any, offset: int, *values: Any) -> None:
    """``struct.pack_into`` that also takes ``str`` (UTF-8) for ``s``/``p``/``c`` fields."""
    try:
        return _struct.pack_into(fmt, buffer, offset, *values)
    except _struct.error as err:
        fixed = _utf8_args(values)
        if fixed is None:
            raise
        try:
            return _struct.pack_into(fmt, buffer, offset, *fixed)
        except _struct.error:
            raise err from None


class Struct(_struct.Struct):
    """``struct.Struct`` whose ``pack``/``pack_into`` also take ``str`` (UTF-8)."""

    __slots__ = ()

    def pack(self, *values: Any) -> bytes:
        try:
            return super().pack(*values)
        except _struct.error as err:
            fixed = _utf8_args(values)
            if fixed is None:
                raise
            try:
                return super().pack(*fixed)
            except _struct.error:
                raise err from None

    def pack_into(self, buffer: Any, offset: int, *values: Any) -> None:
        try:
            return super().pack_into(buffer, offset, *values)
        except _struct.error as err:
            fixed = _utf8_args(values)
            if fixed is None:
                raise
            try:
                return super().pack_into(buffer, offset, *fixed)
            except _struct.error:
                raise err from None


def _make_struct_module() -> types.ModuleType:
    module = types.ModuleType("struct", _struct.__doc__)
    for key, value in vars(_struct).items():
        if not key.startswith("__"):
            setattr(module, key, value)
    module.pack = pack
    module.pack_into = pack_into
    module.Struct = Struct

    def __getattr__(name: str) -> Any:
        return getattr(_struct, name)

    module.__getattr__ = __getattr__
    return module


#: What ``import struct`` binds in a translated module.
struct = _make_struct_module()
_STRUCT_MEMBERS = {"pack": pack, "pack_into": pack_into, "Struct": Struct}


def wrap_struct(module: Any) -> Any:
    """The compatibility ``struct`` module if ``module`` is the real one."""
    return struct if module is _struct else module


def struct_member(name: str, value: Any) -> Any:
    """The compatibility version of ``struct.<name>`` if ``value`` is the real one."""
    if value is getattr(_struct, name, None):
        return _STRUCT_MEMBERS.get(name, value)
    return value


class ModuleCompat:
    """The ``__py2compat__`` global of a translated module.

    ``__py2compat__.NAME`` resolves a Python 2 builtin the way Python resolves
    a global (the module, then its builtins), falling back to the
    compatibility builtins only where Python 3 would raise ``NameError``.
    """

    __slots__ = ("_namespace",)

    @staticmethod
    def missing(module: str) -> bool:
        """Whether the exception being handled says ``module`` does not exist."""
        err = sys.exc_info()[1]
        name = getattr(err, "name", None)
        return (
            isinstance(err, ModuleNotFoundError)
            and bool(name)
            and (module == name or module.startswith(f"{name}."))
        )

    attr = staticmethod(attr)
    print_to = staticmethod(print_to)
    wrap_struct = staticmethod(wrap_struct)
    struct_member = staticmethod(struct_member)

    def __init__(self, namespace: dict) -> None:
        self._namespace = namespace

    def __getattr__(self, name: str) -> Any:
        namespace = self._namespace
        try:
            return namespace[name]
        except KeyError:
            pass
        if name in OVERRIDDEN_BUILTINS:
            return OVERRIDDEN_BUILTINS[name]
        module_builtins = namespace.get("__builtins__", builtins)
        if isinstance(module_builtins, dict):
            if name in module_builtins:
                return module_builtins[name]
        elif hasattr(module_builtins, name):
            return getattr(module_builtins, name)
        try:
            return MISSING_BUILTINS[name]
        except KeyError:
            raise NameError(f"name {name!r} is not defined") from None

    def __repr__(self) -> str:
        return f"<wallaroo Python 2 compatibility of {self._namespace.get('__name__')!r}>"


# ---------------------------------------------------------------------------
# The compatibility layer: an AST rewrite that only matters where Python 3 fails
# ---------------------------------------------------------------------------


class _Bindings(ast.NodeVisitor):
    """Names one scope binds (an over-approximation) and declares global."""

    def __init__(self) -> None:
        self.bound: set = set()
        self.declared_global: set = set()

    def collect(self, nodes: Iterable[ast.AST]) -> _Bindings:
        for node in nodes:
            self.visit(node)
        return self

    def visit_Name(self, node: ast.Name) -> None:
        if not isinstance(node.ctx, ast.Load):
            self.bound.add(node.id)

    def _visit_function(self, node: Any) -> None:
        if not isinstance(node, ast.Lambda):
            self.bound.add(node.name)
            for decorator in node.decorator_list:
                self.visit(decorator)
        for default in [*node.args.defaults, *node.args.kw_defaults]:
            if default is not None:
                self.visit(default)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.bound.add(node.name)
        for child in [*node.decorator_list, *node.bases, *node.keywords]:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.bound.add(alias.asname or alias.name.partition(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self.bound.add(alias.asname or alias.name)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.bound.add(node.name)
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        self.declared_global.update(node.names)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.bound.update(node.names)

    def _visit_capture(self, node: Any) -> None:
        name = getattr(node, "name", None) or getattr(node, "rest", None)
        if name:
            self.bound.add(name)
        self.generic_visit(node)

    visit_MatchAs = visit_MatchStar = visit_MatchMapping = _visit_capture


def _arg_names(args: ast.arguments) -> set:
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    names.update(a.arg for a in (args.vararg, args.kwarg) if a is not None)
    return names


def _caught(handlers: list) -> set:
    names: set = set()
    for handler in handlers:
        if handler.type is None:
            names.add("*")
            continue
        types_ = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        for t in types_:
            if isinstance(t, ast.Name):
                names.add(t.id)
            elif isinstance(t, ast.Attribute):
                names.add(t.attr)
    return names


def _probe_shaped(stmt: ast.stmt) -> bool:
    """``NAME``, ``x.ATTR``, ``v = NAME`` or ``v = x.ATTR`` alone: a feature probe."""
    value = stmt.value if isinstance(stmt, (ast.Expr, ast.Assign)) else None
    return isinstance(value, (ast.Name, ast.Attribute))


def _is_print_chevron(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.RShift)
        and isinstance(node.left, ast.Name)
        and node.left.id == "print"
    )


def _located(new: ast.AST, old: ast.AST) -> ast.AST:
    """Give the nodes of ``new`` that have no position the position of ``old``."""
    for node in ast.walk(new):
        if "lineno" in node._attributes and getattr(node, "lineno", None) is None:
            ast.copy_location(node, old)
    return new


def _helper(attribute: str) -> ast.expr:
    return ast.Attribute(value=ast.Name(id=HELPER, ctx=ast.Load()), attr=attribute, ctx=ast.Load())


class _CompatTransformer(ast.NodeTransformer):
    """Rewrite what fails on Python 3 into ``__py2compat__`` look-ups."""

    def __init__(self, path: str | None = None, source: Any = None) -> None:
        self.source = source
        self._lines: list | None = None
        self.scopes: list = []  # (kind, bound names, names declared global)
        self.skip_names = 0
        self.skip_attrs = 0
        self.skip_imports = 0
        self.rewrites = 0
        self.package_dir = None
        if path and os.path.isfile(os.path.join(os.path.dirname(path), "__init__.py")):
            self.package_dir = os.path.dirname(path)

    # -- helpers ----------------------------------------------------------

    def _visit_list(self, nodes: list) -> list:
        out = []
        for node in nodes:
            if node is None:
                out.append(None)
                continue
            new = self.visit(node)
            if new is None:
                continue
            if isinstance(new, list):
                out.extend(new)
            else:
                out.append(new)
        return out

    def _is_global(self, name: str) -> bool:
        for depth, (kind, bound, declared_global) in enumerate(reversed(self.scopes)):
            if name in declared_global:
                return True
            if kind == "class":
                if depth == 0 and name in bound:
                    return False
                continue
            if name in bound:
                return False
        return True

    # -- module -------------------------------------------------------------

    def apply(self, tree: ast.Module) -> ast.Module:
        tree.body = self._visit_list(tree.body)
        if self.rewrites:
            index = 0
            body = tree.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                index = 1
            while (
                index < len(body)
                and isinstance(body[index], ast.ImportFrom)
                and body[index].module == "__future__"
            ):
                index += 1
            setup = ast.parse(
                f"{HELPER} = __import__({__name__!r}, None, None, ('ModuleCompat',))"
                ".ModuleCompat(globals())"
            ).body[0]
            line = body[index].lineno if index < len(body) else 1
            for node in ast.walk(setup):
                if "lineno" in node._attributes:
                    node.lineno = node.end_lineno = line
                    node.col_offset = node.end_col_offset = 0
            body.insert(index, setup)
        return tree

    # -- scopes -------------------------------------------------------------

    def _visit_function(self, node: Any) -> Any:
        if not isinstance(node, ast.Lambda):
            node.decorator_list = self._visit_list(node.decorator_list)
        node.args.defaults = self._visit_list(node.args.defaults)
        node.args.kw_defaults = self._visit_list(node.args.kw_defaults)
        body = node.body if isinstance(node.body, list) else [node.body]
        found = _Bindings().collect(body)
        bound = (_arg_names(node.args) | found.bound) - found.declared_global
        self.scopes.append(("function", bound, found.declared_global))
        try:
            if isinstance(node.body, list):
                node.body = self._visit_list(node.body)
            else:
                node.body = self.visit(node.body)
        finally:
            self.scopes.pop()
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_function

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.ClassDef:
        node.decorator_list = self._visit_list(node.decorator_list)
        node.bases = self._visit_list(node.bases)
        node.keywords = self._visit_list(node.keywords)
        found = _Bindings().collect(node.body)
        self.scopes.append(("class", found.bound - found.declared_global, found.declared_global))
        try:
            node.body = self._visit_list(node.body)
        finally:
            self.scopes.pop()
        return node

    def _visit_comprehension(self, node: Any) -> Any:
        first = node.generators[0]
        first.iter = self.visit(first.iter)
        found = _Bindings().collect([node])
        self.scopes.append(("function", found.bound, set()))
        try:
            for index, generator in enumerate(node.generators):
                generator.target = self.visit(generator.target)
                if index:
                    generator.iter = self.visit(generator.iter)
                generator.ifs = self._visit_list(generator.ifs)
            if isinstance(node, ast.DictComp):
                node.key = self.visit(node.key)
                node.value = self.visit(node.value)
            else:
                node.elt = self.visit(node.elt)
        finally:
            self.scopes.pop()
        return node

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _visit_comprehension

    # -- what is not rewritten ---------------------------------------------

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.JoinedStr:
        return node  # f-strings are Python 3 code

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AnnAssign:
        node.target = self.visit(node.target)
        if node.value is not None:
            node.value = self.visit(node.value)
        return node  # the annotation is left as written

    def _visit_try(self, node: Any) -> Any:
        caught = _caught(node.handlers)
        broad = bool(caught & {"*", "Exception", "BaseException"})
        names = "NameError" in caught
        attrs = "AttributeError" in caught
        imports = broad or bool(caught & {"ImportError", "ModuleNotFoundError"})
        self.skip_names += names
        self.skip_attrs += attrs
        self.skip_imports += imports
        try:
            body = []
            for stmt in node.body:
                if broad and _probe_shaped(stmt):
                    body.append(stmt)
                else:
                    body.extend(self._visit_list([stmt]))
            node.body = body
        finally:
            self.skip_names -= names
            self.skip_attrs -= attrs
            self.skip_imports -= imports
        node.handlers = self._visit_list(node.handlers)
        node.orelse = self._visit_list(node.orelse)
        node.finalbody = self._visit_list(node.finalbody)
        return node

    visit_Try = visit_TryStar = _visit_try

    # -- rewrites -----------------------------------------------------------

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if (
            isinstance(node.ctx, ast.Load)
            and node.id in _NAMES
            and not self.skip_names
            and self._is_global(node.id)
        ):
            self.rewrites += 1
            return _located(_helper(node.id), node)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.expr:
        if isinstance(node.ctx, ast.Load) and node.attr in _ATTRS and not self.skip_attrs:
            value = self.visit(node.value)
            self.rewrites += 1
            call = ast.Call(
                func=_helper("attr"), args=[value, ast.Constant(node.attr)], keywords=[]
            )
            return _located(call, node)
        return self.generic_visit(node)

    def _trailing_comma(self, node: ast.Tuple) -> bool:
        last = node.elts[-1]
        if self._lines is None and self.source is not None:
            text = self.source
            if isinstance(text, bytes):
                try:
                    text = importlib.util.decode_source(text)
                except Exception:
                    text = None
            self._lines = [line.encode("utf-8") for line in text.split("\n")] if text else []
        if not self._lines or last.end_lineno is None or node.end_lineno is None:
            return (last.end_lineno, last.end_col_offset) != (node.end_lineno, node.end_col_offset)
        first, final = last.end_lineno - 1, node.end_lineno - 1
        if final >= len(self._lines):
            return False
        if first == final:
            between = self._lines[first][last.end_col_offset : node.end_col_offset]
        else:
            between = b"".join(
                [self._lines[first][last.end_col_offset :], *self._lines[first + 1 : final]]
                + [self._lines[final][: node.end_col_offset]]
            )
        return b"," in between

    def visit_Expr(self, node: ast.Expr) -> ast.stmt:
        """``print >>stream, ...`` (it compiles as Python 3 but fails there)."""
        value = node.value
        chevron, items, newline = None, [], True
        if _is_print_chevron(value):
            chevron = value
        elif (
            isinstance(value, ast.Tuple)
            and value.elts
            and _is_print_chevron(value.elts[0])
            and (value.lineno, value.col_offset) == (value.elts[0].lineno, value.elts[0].col_offset)
        ):
            chevron, items = value.elts[0], value.elts[1:]
            newline = not (items and self._trailing_comma(value))
        if chevron is None:
            return self.generic_visit(node)
        call = ast.Call(
            func=_helper("print_to"),
            args=[chevron.left, self.visit(chevron.right), *self._visit_list(items)],
            keywords=[ast.keyword(arg="newline", value=ast.Constant(newline))],
        )
        self.rewrites += 1
        return _located(ast.Expr(value=call), node)

    def _assign(self, target: str, value: ast.expr, where: ast.stmt) -> ast.stmt:
        assign = ast.Assign(targets=[ast.Name(id=target, ctx=ast.Store())], value=value)
        return _located(assign, where)

    def _sibling(self, module: str) -> bool:
        """Whether ``module`` names a module beside this one in its package
        (a Python 2 implicit relative import)."""
        if self.package_dir is None or self.skip_imports:
            return False
        base = os.path.join(self.package_dir, module.partition(".")[0])
        return os.path.isfile(base + ".py") or os.path.isdir(base)

    def _relative_fallback(self, node: ast.stmt, module: str, relative: str) -> ast.stmt:
        """``try: <node> except ImportError: <relative>`` when ``module`` is missing."""
        template = ast.parse(
            "try:\n    pass\nexcept ImportError:\n"
            f"    if not {HELPER}.missing({module!r}):\n        raise\n    {relative}\n"
        ).body[0]
        template.body = [node]
        for child in ast.walk(template):
            if child is not node and "lineno" in child._attributes:
                for name in ("lineno", "col_offset", "end_lineno", "end_col_offset"):
                    setattr(child, name, getattr(node, name))
        self.rewrites += 1
        return template

    def visit_Import(self, node: ast.Import) -> Any:
        if not any("." not in alias.name and self._sibling(alias.name) for alias in node.names):
            extra = self._struct_module(node)
            return [node, *extra] if extra else node
        out = []
        for alias in node.names:
            single = ast.copy_location(ast.Import(names=[alias]), node)
            if "." not in alias.name and self._sibling(alias.name):
                relative = f"from . import {alias.name}"
                if alias.asname:
                    relative += f" as {alias.asname}"
                out.append(self._relative_fallback(single, alias.name, relative))
            else:
                out.append(single)
            out.extend(self._struct_module(single))
        return out

    def _struct_module(self, node: ast.Import) -> list:
        extra = []
        for alias in node.names:
            if alias.name == "struct":
                bound = alias.asname or "struct"
                value = ast.Call(
                    func=_helper("wrap_struct"),
                    args=[ast.Name(id=bound, ctx=ast.Load())],
                    keywords=[],
                )
                extra.append(self._assign(bound, value, node))
        self.rewrites += len(extra)
        return extra

    def visit_ImportFrom(self, node: ast.ImportFrom) -> Any:
        if not node.level and node.module and self._sibling(node.module):
            names = ", ".join(
                alias.name + (f" as {alias.asname}" if alias.asname else "") for alias in node.names
            )
            relative = f"from .{node.module} import {names}"
            fallback = self._relative_fallback(node, node.module, relative)
            return [fallback, *self._struct_members(node)]
        if node.module != "struct" or node.level:
            return node
        extra = self._struct_members(node)
        if not extra:
            return node
        return [node, *extra]

    def _struct_members(self, node: ast.ImportFrom) -> list:
        if node.module != "struct" or node.level:
            return []
        extra = []
        for alias in node.names:
            names = sorted(_STRUCT_MEMBERS) if alias.name == "*" else [alias.name]
            for name in names:
                if name not in _STRUCT_MEMBERS:
                    continue
                bound = name if alias.name == "*" else (alias.asname or name)
                value = ast.Call(
                    func=_helper("struct_member"),
                    args=[ast.Constant(name), ast.Name(id=bound, ctx=ast.Load())],
                    keywords=[],
                )
                extra.append(self._assign(bound, value, node))
        self.rewrites += len(extra)
        return extra


def apply_compat_layer(tree: ast.Module, path: str | None = None, source: Any = None) -> int:
    """Rewrite ``tree`` (of the module file ``path``, parsed from ``source``)
    in place; return the number of rewrites (0: unchanged)."""
    transformer = _CompatTransformer(path, source)
    transformer.apply(tree)
    return transformer.rewrites


# ---------------------------------------------------------------------------
# Translation of modules that do not compile as Python 3 (fissix)
# ---------------------------------------------------------------------------

_tool: Any = None
_tool_lock = threading.Lock()
_fissix_version: str | None = None
_GRAMMAR_LOG = ("Generating grammar tables", "Writing grammar tables", "Writing failed")


class _DropGrammarLog(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_GRAMMAR_LOG)


@contextlib.contextmanager
def _quiet_grammar_log() -> Iterator[None]:
    """fissix logs the generation of its grammar pickles on the root logger."""
    drop = _DropGrammarLog()
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _refactoring_tool() -> Any:
    global _tool
    if _tool is not None:
        return _tool
    with _quiet_grammar_log():
        try:
            from fissix import refactor
        except OSError:  # its grammar cache directory is not writable
            import fissix

            fissix.CACHE_DIR = type(fissix.CACHE_DIR)(tempfile.mkdtemp(prefix="fissix-"))
            from fissix import refactor

    class Tool(refactor.RefactoringTool):
        def log_message(self, msg: str, *args: Any) -> None:
            pass

        def log_debug(self, msg: str, *args: Any) -> None:
            pass

    _tool = Tool(refactor.get_fixers_from_package("fissix.fixes"))
    return _tool


def fissix_version() -> str:
    """The installed fissix version ("missing" if it is not installed)."""
    global _fissix_version
    if _fissix_version is None:
        try:
            from importlib.metadata import version

            _fissix_version = version("fissix")
        except Exception:
            _fissix_version = "missing"
    return _fissix_version


def _expand_tabs(tree: Any) -> None:
    """Python 2 indentation: a tab goes to the next multiple of 8 columns.
    Python 3 rejects inconsistent tabs, so indentation is expanded."""
    from fissix.pgen2 import token

    for leaf in tree.leaves():
        if "\t" in leaf.prefix:
            leaf.prefix = leaf.prefix.expandtabs(8)
        if leaf.type == token.INDENT and "\t" in leaf.value:
            leaf.value = leaf.value.expandtabs(8)


def _line_map(tree: Any) -> list | None:
    """For each line of the translation, the original line it comes from
    (None when fissix added or removed no line)."""
    mapping: dict = {}
    line = 1
    for leaf in tree.leaves():
        line += leaf.prefix.count("\n")
        value = leaf.value
        if leaf.lineno and value.strip():
            mapping.setdefault(line, leaf.lineno)
            for i in range(1, value.count("\n") + 1):
                mapping.setdefault(line + i, leaf.lineno + i)
        line += value.count("\n")
    lines = []
    previous = 1
    for number in range(1, line + 1):
        previous = mapping.get(number, previous)
        lines.append(previous)
    if all(number == original for number, original in mapping.items()):
        return None
    return lines


def _remap_lines(tree: ast.AST, lines: list) -> None:
    def original(number: int) -> int:
        return lines[min(number, len(lines)) - 1] if number >= 1 else number

    for node in ast.walk(tree):
        if getattr(node, "lineno", None) is None:
            continue
        node.lineno = original(node.lineno)
        if getattr(node, "end_lineno", None) is not None:
            node.end_lineno = max(original(node.end_lineno), node.lineno)
            if (
                node.end_lineno == node.lineno
                and node.end_col_offset is not None
                and node.col_offset is not None
                and node.end_col_offset < node.col_offset
            ):
                node.end_col_offset = node.col_offset


def _fissix_problem(err: BaseException) -> tuple:
    """``(line, column, reason)`` of a fissix parse failure."""
    from fissix.pgen2.parse import ParseError
    from fissix.pgen2.tokenize import TokenError

    if isinstance(err, ParseError):
        line, column = err.context[1]
        reason = "invalid syntax" if err.msg == "bad input" else err.msg
        if err.value and err.value.strip():
            reason += f" at {err.value!r}"
        elif err.value:
            reason += " at the end of the line"
        return line, column + 1, reason
    if isinstance(err, TokenError):
        line, column = err.args[1]
        return line, column + 1, err.args[0]
    if isinstance(err, SyntaxError):
        return err.lineno, err.offset, err.msg
    return None, None, f"{type(err).__name__}: {err}"


def _source_line(text: str, line: int | None) -> str | None:
    if not line:
        return None
    lines = text.split("\n")
    return lines[line - 1] if 0 < line <= len(lines) else None


def _statement_end(text: str, line: int) -> int | None:
    """The last line of the (Python 2) statement holding ``line``, or None
    if it never ends (an unclosed bracket or string)."""
    from fissix.pgen2 import token, tokenize

    try:
        for kind, _value, start, _end, _line in tokenize.generate_tokens(
            io.StringIO(text).readline
        ):
            if kind == token.NEWLINE and start[0] >= line:
                return start[0]
    except Exception:
        return None
    return None


def _untranslatable(path: str, text: str, py3: SyntaxError, py2: BaseException) -> SyntaxError:
    """The error of a module neither Python 3 nor fissix can parse. When
    Python 2 read past the statement where Python 3 stopped, that statement
    was Python 2 and fissix's position is the mistake; otherwise Python 3's."""
    line2, column2, reason2 = _fissix_problem(py2)
    line3 = py3.lineno or 0
    if line2 and line3 and line2 > line3:
        end = _statement_end(text, line3)
        if end is not None and end < line2:
            msg = f"{reason2} (read as Python 2; as Python 3: {py3.msg}, line {line3})"
            return SyntaxError(msg, (path, line2, column2, _source_line(text, line2)))
    where = f", line {line2}" if line2 else ""
    msg = f"{py3.msg} (not Python 2 either: {reason2}{where})"
    return SyntaxError(msg, (path, py3.lineno, py3.offset, py3.text))


def _translate_py2(text: str, path: str, py3: SyntaxError) -> tuple:
    """fissix's full default fixer set: ``(translated source, line map or None)``."""
    try:
        tool = _refactoring_tool()
    except ImportError as err:
        raise ImportError(
            f"{path} is not Python 3 ({py3.msg}, line {py3.lineno}) and cannot be "
            f"translated: {err} (pip install fissix)",
            path=path,
        ) from err
    source = text if text.endswith("\n") else text + "\n"
    with _tool_lock:
        try:
            tree = tool.refactor_string(source, path)
        except Exception as err:
            raise _untranslatable(path, text, py3, err) from None
    _expand_tabs(tree)
    return str(tree), _line_map(tree)


# ---------------------------------------------------------------------------
# Cache of translations
# ---------------------------------------------------------------------------

_TRAILER = "# wallaroo-rs py2compat line map: "


def cache_dir() -> str:
    """``$WALLAROO_CACHE_DIR``, else ``$XDG_CACHE_HOME/wallaroo-rs/py2``, else
    ``~/.cache/wallaroo-rs/py2``."""
    explicit = os.environ.get("WALLAROO_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "wallaroo-rs", "py2")


def _cache_file(directory: str, path: str, data: bytes, mode: str) -> str:
    digest = hashlib.sha256()
    for part in ("wallaroo-rs py2compat", TRANSLATOR_VERSION, fissix_version(), mode, path):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    digest.update(data)
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(directory, f"{stem}-{digest.hexdigest()[:32]}.py")


def _read_cache(cache_file: str) -> tuple | None:
    try:
        with open(cache_file, encoding="utf-8") as f:
            content = f.read()
    except (OSError, ValueError):
        return None
    body, sep, trailer = content.rpartition("\n" + _TRAILER)
    if not sep:
        return None
    try:
        lines = json.loads(trailer)
    except ValueError:
        return None
    if lines == "same":
        lines = None
    elif not (isinstance(lines, list) and all(isinstance(n, int) for n in lines)):
        return None
    return body + "\n", lines


def _write_cache(cache_file: str, translated: str, lines: list | None) -> bool:
    content = f"{translated}{_TRAILER}{json.dumps('same' if lines is None else lines)}\n"
    directory = os.path.dirname(cache_file)
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".py")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        os.replace(tmp, cache_file)
        return True
    except OSError as err:
        log.debug("cannot write the translation cache %s: %s", cache_file, err)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False


# ---------------------------------------------------------------------------
# Compiling one module
# ---------------------------------------------------------------------------


@dataclass
class Result:
    """How :func:`compile_module` compiled a module."""

    code: types.CodeType
    #: "py3" (compiles as Python 3: compatibility layer only) or "py2" (fissix
    #: full fixer set, then the compatibility layer).
    mode: str
    #: Rewrites made by the compatibility layer (0: compiled as it is).
    rewrites: int
    #: For "py2": "hit" (translation read from the cache), "miss" (translated
    #: and cached), "off" (translated, not cached).
    cache: str | None = None
    cache_file: str | None = None
    #: For "py2": why the source is not Python 3.
    reason: str | None = None

    def describe(self) -> str:
        """One line for the log."""
        if self.mode == "py3":
            layer = f"{self.rewrites} rewrites" if self.rewrites else "nothing to rewrite"
            return f"mode py3 (compiles as Python 3; compat layer: {layer})"
        text = (
            f"mode py2 ({self.reason}; fissix full fixer set + compat layer, "
            f"{self.rewrites} rewrites)"
        )
        if self.cache == "hit":
            return f"{text}; translation from cache {self.cache_file}"
        if self.cache == "miss":
            return f"{text}; translation cached in {self.cache_file}"
        return f"{text}; translation not cached"


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
        result = compile_module(data, path, self._finder.cache_dir)
        log.debug("%s (%s): %s", fullname, path, result.describe())
        return result.code


class Py2Finder(importlib.abc.MetaPathFinder):
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
