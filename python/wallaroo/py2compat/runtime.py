"""The run-time layer: what translated modules call through ``__py2compat__``."""

from __future__ import annotations

import builtins
import functools
import importlib
import io
import logging
import struct as _struct
import sys
import types
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger("wallaroo.py2compat")

#: The global a translated module uses to reach its compatibility helpers.
HELPER = "__py2compat__"

_BUILTIN_ORD = builtins.ord

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
