"""Translation of modules that do not compile as Python 3 (fissix)."""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("wallaroo.py2compat")

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
