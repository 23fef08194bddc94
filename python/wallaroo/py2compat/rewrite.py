"""The compatibility layer: an AST rewrite that only matters where Python 3 fails."""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
from collections.abc import Iterable
from typing import Any

from wallaroo.py2compat.runtime import _ATTRS, _NAMES, _STRUCT_MEMBERS, HELPER, ModuleCompat

log = logging.getLogger("wallaroo.py2compat")

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
                f"{HELPER} = __import__({ModuleCompat.__module__!r}, None, None, ('ModuleCompat',))"
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
