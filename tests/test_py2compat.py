"""Python 2 applications on Python 3: ``wallaroo.py2compat``.

Unit tests import the modules of ``tests/py2apps/units`` through the finder;
end-to-end tests run the applications of ``tests/py2apps`` through the runner
(``python -m wallaroo APP``) with a file source and a file sink.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import logging
import os
import shutil
import struct
import sys
import traceback
from pathlib import Path

import pytest
from wallaroo import py2compat

PY2APPS = Path(__file__).resolve().parent / "py2apps"
UNITS = PY2APPS / "units"
LEGACY = PY2APPS / "legacy"


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


def _forget_modules(directory: Path) -> None:
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None) or ""
        if origin.startswith(str(directory) + os.sep):
            del sys.modules[name]


@pytest.fixture
def units(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The finder, translating ``tests/py2apps/units`` (on ``sys.path``)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(UNITS))
    finder = py2compat.install_roots([str(UNITS)], cache=str(tmp_path / "cache"))
    try:
        yield finder
    finally:
        py2compat.uninstall()
        _forget_modules(UNITS)


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``(directory, finder)``: an empty application directory, translated."""
    directory = tmp_path / "app"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    finder = py2compat.install_roots([str(directory)], cache=str(tmp_path / "cache"))
    try:
        yield directory, finder
    finally:
        py2compat.uninstall()
        _forget_modules(directory)
        importlib.invalidate_caches()


def _plain_import(path: Path, name: str):
    """Import ``path`` as module ``name`` with the normal machinery (no compat)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------
# Modules that compile as Python 3: compat layer only
# ---------------------------------------------------------------------------


def test_dict_methods_of_python_2(units) -> None:
    import py3_idioms

    assert isinstance(py3_idioms.__spec__.loader, py2compat.Py2Loader)
    assert py3_idioms.dict_methods({"a": 1, "b": 2}) == (
        [("a", 1), ("b", 2)],
        ["a", "b"],
        [1, 2],
        True,
        False,
        ["a", "b"],
        [("a", 1), ("b", 2)],
        [("a", 1), ("b", 2)],
    )


def test_python_2_builtins(units) -> None:
    import py3_idioms

    assert py3_idioms.builtins_() == (
        [0, 1, 2],
        "café",
        "7",
        12,
        True,
        True,
        False,
        True,
        "é",
        24,
        "abc",
        -1,
        True,
    )
    assert py3_idioms.iterator_next() == (1, 2)
    assert py3_idioms.MAXINT == sys.maxsize
    # local and class-level names are never replaced
    assert py3_idioms.shadowed() is None
    assert py3_idioms.Holder.value == "class attribute"
    # the names are not injected into the module
    assert not hasattr(py3_idioms, "xrange") and not hasattr(py3_idioms, "unicode")


def test_ord_on_bytes_items_and_struct_pack_with_str(units) -> None:
    import py3_idioms

    assert py3_idioms.first_byte(b"xy") == (120, 65, 66)
    assert py3_idioms.packed("abc") == (
        b"\x00\x07abc",
        b"ab",
        b"abc\x00",
        b"z",
        b"abc",
        b"abc\x00\x00\x00\x00\x00",
        (5,),
    )
    # the struct module seen by the application is a thin wrapper
    assert py3_idioms.struct.error is struct.error
    assert py3_idioms.struct.calcsize(">I") == 4
    assert py3_idioms.st is py3_idioms.struct


def test_python_3_module_behaves_exactly_as_before(units, monkeypatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    import own_iteritems as translated

    plain = _plain_import(UNITS / "own_iteritems.py", "own_iteritems_plain")
    assert translated.__spec__.loader.__class__ is py2compat.Py2Loader
    assert plain.__spec__.loader.__class__ is not py2compat.Py2Loader

    def outcome(module, name, *args):
        try:
            return ("ok", getattr(module, name)(*args))
        except Exception as err:
            return (type(err).__name__, str(err))

    for name, args in [
        ("bag_methods", ()),
        ("views", ()),
        ("missing_attribute", ()),
        ("no_iteritems_on_list", ()),
        ("bad_pack", ()),
        ("uses_module_xrange", ()),
        ("local_ord", (b"abc",)),
    ]:
        assert outcome(translated, name, *args) == outcome(plain, name, *args), name
    # a class of its own with iteritems/has_key/next keeps them
    assert translated.bag_methods() == (["custom iteritems"], "custom has_key k", "custom next")
    # dict views stay live views; range stays range
    assert translated.views() == ("dict_keys", ["a", "b"], "dict_items", 2, range)
    # feature probes keep their Python 3 answer
    assert translated.PROBE == plain.PROBE == "python 3"
    assert translated.unicode is str
    assert translated.text_type is None
    # errors Python 3 raises are still raised
    with pytest.raises(AttributeError, match="'list' object has no attribute 'iteritems'"):
        translated.no_iteritems_on_list()


def test_module_with_nothing_to_rewrite_is_compiled_as_it_is() -> None:
    source = b"import json\n\ndef f(d):\n    return d.items()\n"
    result = py2compat.compile_module(source, "/nowhere/plain.py")
    assert (result.mode, result.rewrites) == ("py3", 0)
    assert result.code.co_names == compile(source, "/nowhere/plain.py", "exec").co_names


def test_python_3_syntax_fissix_cannot_parse_is_used_as_is(units) -> None:
    import py3_only

    assert py3_only.describe({"counts": {"b": 2, "a": 1}}) == [("a", 1), ("b", 2)]
    assert py3_only.describe("other") is None


def test_print_chevron_in_a_module_that_compiles_as_python_3(scratch) -> None:
    directory, _ = scratch
    (directory / "chevron.py").write_text(
        "import io\n"
        "def run():\n"
        "    out = io.StringIO()\n"
        '    print >>out, "a", 1,\n'
        '    print >>out, "b"\n'
        "    print >>out\n"
        "    return out.getvalue()\n"
    )
    import chevron

    assert chevron.run() == "a 1 b\n\n"


def test_relative_import_fallback_only_where_python_3_fails(scratch) -> None:
    directory, _ = scratch
    package = directory / "newpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sib.py").write_text("NAME = 'sibling'\n")
    (package / "json.py").write_text("NAME = 'shadow'\n")
    (package / "user.py").write_text(
        "import sib\n"  # fails on Python 3: the relative import Python 2 meant
        "import json\n"  # works on Python 3: the absolute import stays
        "try:\n"
        "    import sib as guarded\n"  # the module handles the ImportError itself
        "except ImportError:\n"
        "    guarded = None\n"
    )
    from newpkg import user

    assert user.sib is sys.modules["newpkg.sib"]
    assert user.json is json
    assert user.guarded is None


def test_python_2_type_stand_ins() -> None:
    unicode, basestring = py2compat.unicode, py2compat.basestring

    class Text(unicode):
        pass

    assert unicode(b"caf\xc3\xa9") == "café" and type(unicode("x")) is str
    assert unicode(b"\xe9", "latin-1") == "é"
    assert isinstance("x", unicode) and not isinstance(b"x", unicode)
    assert isinstance(Text("x"), Text) and not isinstance("x", Text)
    assert isinstance(b"x", basestring) and isinstance("x", basestring)
    assert not isinstance(1, basestring) and issubclass(str, basestring)
    assert isinstance(io.StringIO(), py2compat.file)
    with pytest.raises(TypeError):
        basestring()
    assert py2compat.ord(7) == 7 and py2compat.ord("a") == 97
    with pytest.raises(TypeError):
        py2compat.ord(1.5)
    assert py2compat.pack(">2s", "hé") == "hé".encode()[:2]
    with pytest.raises(struct.error, match="required argument is not an integer"):
        py2compat.pack(">I", "x")


# ---------------------------------------------------------------------------
# Modules that do not compile as Python 3: fissix, then the compat layer
# ---------------------------------------------------------------------------


def test_python_2_syntax(units) -> None:
    import py2_syntax

    assert py2_syntax.printed() == "a 1 b\n"
    assert py2_syntax.caught() == "boom"
    assert py2_syntax.literals() == (0o755, 10, "\\d", "42")
    assert py2_syntax.not_equal(1, 2) is True
    assert py2_syntax.executed() == 42
    # fix_dict: keys() is a list again in a Python 2 module
    assert py2_syntax.dict_methods() == (["a", "b"], [("a", 1), ("b", 2)], True, True)
    assert py2_syntax.numbers() == ([0, 1, 2], "5", True)
    assert py2_syntax.first_byte(b"ab") == 97
    assert py2_syntax.python_version() == 3


def test_implicit_relative_imports_in_a_package(units) -> None:
    import oldpkg

    # oldpkg/__init__.py is Python 2 (fix_import); oldpkg/first.py compiles as
    # Python 3 and gets a fallback to the relative import it meant
    assert oldpkg.greet("bob") == "hello bob\n"
    assert oldpkg.second is sys.modules["oldpkg.second"]
    assert oldpkg.first.second is oldpkg.second
    assert "second" not in sys.modules


def test_tracebacks_name_the_original_file_and_line(units) -> None:
    import lines

    assert lines.total([1, 2, 3]) == 6  # fix_reduce added an import line at the top
    with pytest.raises(ValueError, match="line 9") as info:
        lines.fail()
    frame = traceback.extract_tb(info.tb)[-1]
    assert frame.filename == str(UNITS / "lines.py")
    assert frame.lineno == 9
    assert frame.line == 'raise ValueError, "line 9"'


def test_python_2_tab_indentation(scratch) -> None:
    directory, _ = scratch
    (directory / "tabs.py").write_text(
        "def f(x):\n"
        "    if x:\n"  # 4 spaces
        "\treturn 'tab'\n"  # a tab: 8 columns in Python 2, TabError in Python 3
        "    return 'spaces'\n"
    )
    import tabs

    assert (tabs.f(1), tabs.f(0)) == ("tab", "spaces")


def test_each_module_logged_with_its_mode(units, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="wallaroo.py2compat")
    import own_iteritems  # noqa: F401
    import py2_syntax  # noqa: F401

    messages = {r.getMessage().split(" ", 1)[0]: r.getMessage() for r in caplog.records}
    assert "mode py2 (not Python 3:" in messages["py2_syntax"]
    assert "fissix full fixer set + compat layer" in messages["py2_syntax"]
    assert "translation cached in" in messages["py2_syntax"]
    assert "mode py3 (compiles as Python 3; compat layer:" in messages["own_iteritems"]


# ---------------------------------------------------------------------------
# Cache, bytecode, errors
# ---------------------------------------------------------------------------


def test_translation_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = b'print "hi"\nx = 0777\n'
    first = py2compat.compile_module(source, str(tmp_path / "m.py"), str(cache))
    assert (first.mode, first.cache) == ("py2", "miss")
    [cached] = cache.iterdir()
    assert cached == Path(first.cache_file)
    assert cached.read_text().startswith('print("hi")\nx = 0o777\n')
    second = py2compat.compile_module(source, str(tmp_path / "m.py"), str(cache))
    assert (second.cache, second.cache_file) == ("hit", first.cache_file)
    namespace: dict = {}
    out = io.StringIO()
    sys.stdout, saved = out, sys.stdout
    try:
        exec(second.code, namespace)
    finally:
        sys.stdout = saved
    assert (out.getvalue(), namespace["x"]) == ("hi\n", 0o777)
    # another source is another entry; a damaged entry is translated again
    other = py2compat.compile_module(source + b"y = 1L\n", str(tmp_path / "m.py"), str(cache))
    assert other.cache == "miss" and other.cache_file != first.cache_file
    cached.write_text("garbage")
    assert py2compat.compile_module(source, str(tmp_path / "m.py"), str(cache)).cache == "miss"
    cached.write_text('x = (\n# wallaroo-rs py2compat line map: "same"\n')
    assert py2compat.compile_module(source, str(tmp_path / "m.py"), str(cache)).cache == "miss"
    assert cached.read_text().startswith('print("hi")')
    # no cache directory: translated all the same
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    uncached = py2compat.compile_module(source, str(tmp_path / "m.py"), str(blocked / "c"))
    assert (uncached.mode, uncached.cache) == ("py2", "off")


def test_cache_dir_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WALLAROO_CACHE_DIR", str(tmp_path / "w"))
    assert py2compat.cache_dir() == str(tmp_path / "w")
    monkeypatch.delenv("WALLAROO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert py2compat.cache_dir() == str(tmp_path / "x" / "wallaroo-rs" / "py2")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert py2compat.cache_dir() == str(tmp_path / "h" / ".cache" / "wallaroo-rs" / "py2")


def test_no_bytecode_written(scratch) -> None:
    directory, _ = scratch
    (directory / "py2mod.py").write_text('print "x"\n')
    (directory / "py3mod.py").write_text("d = {}\nf = d.iteritems\n")
    import py2mod  # noqa: F401
    import py3mod  # noqa: F401

    assert not (directory / "__pycache__").exists()


def test_untranslatable_module_names_file_and_line(scratch) -> None:
    directory, _ = scratch
    py2_file = directory / "broken2.py"
    py2_file.write_text('print "Python 2"\n\ndef f(x)\n    return x\n')
    with pytest.raises(SyntaxError) as info:
        import broken2  # noqa: F401
    assert (info.value.filename, info.value.lineno) == (str(py2_file), 3)
    assert "read as Python 2" in info.value.msg

    py3_file = directory / "broken3.py"
    py3_file.write_text("import os\n\ndef f(x:\n    return x\n")
    with pytest.raises(SyntaxError) as info:
        import broken3  # noqa: F401
    assert (info.value.filename, info.value.lineno) == (str(py3_file), 3)
    assert "was never closed" in info.value.msg


def test_stdlib_site_packages_and_wallaroo_are_never_translated(units, tmp_path) -> None:
    stdlib = os.path.dirname(os.__file__)
    site_packages = os.path.dirname(os.path.dirname(pytest.__file__))
    wallaroo_dir = os.path.dirname(py2compat.__file__)
    finder = py2compat.Py2Finder(
        [stdlib, sys.prefix, os.path.dirname(wallaroo_dir), site_packages],
        cache=str(tmp_path),
    )
    assert not finder.covers(json.__file__)
    assert not finder.covers(pytest.__file__)
    assert not finder.covers(py2compat.__file__)
    assert finder.find_spec("colorsys") is None
    assert finder.find_spec("json", None) is None
    # the installed finder: a stdlib module imported now keeps its loader
    sys.modules.pop("this", None)
    saved = sys.stdout
    sys.stdout = io.StringIO()
    try:
        import this
    finally:
        sys.stdout = saved
    assert type(this.__spec__.loader) is importlib.machinery.SourceFileLoader
    assert units.covers(str(UNITS / "py3_idioms.py"))
    # an application directory inside site-packages (an installed app) is translated
    inside = os.path.join(site_packages, "someapp")
    assert py2compat.Py2Finder([inside]).covers(os.path.join(inside, "mod.py"))


@pytest.mark.parametrize("source", [b"x = xrange(3)\n", b"print 'hello'\n"], ids=["py3", "py2"])
def test_code_cache_keeps_a_module_until_its_source_changes(tmp_path, source: bytes) -> None:
    from wallaroo.py2compat import codecache

    cache, module = str(tmp_path / "cache"), str(tmp_path / "m.py")
    result = py2compat.compile_module(source, module, cache)
    assert codecache.load(cache, module, source) is None
    assert codecache.store(cache, module, source, result)
    code, mode, rewrites, reason, entry = codecache.load(cache, module, source)
    assert (code, mode, rewrites, reason) == (result.code, result.mode, result.rewrites,
                                              result.reason)
    assert entry == codecache.entry_file(cache, module)
    # Other source bytes, or the same bytes at another path: a miss.
    assert codecache.load(cache, module, source + b"y = 1\n") is None
    assert codecache.load(cache, str(tmp_path / "n.py"), source) is None
    # A damaged entry is a miss, never an error.
    Path(entry).write_bytes(Path(entry).read_bytes()[:-3])
    assert codecache.load(cache, module, source) is None
    # A cache that cannot be written: the run goes on without it.
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    assert not codecache.store(str(blocked / "c"), module, source, result)


def test_application_roots() -> None:
    sys.path.insert(0, str(UNITS))
    try:
        assert py2compat.application_roots("py3_idioms") == [os.path.realpath(UNITS)]
        assert py2compat.application_roots("oldpkg") == [str(UNITS / "oldpkg")]
        assert py2compat.application_roots("no_such_module_xyz") == []
        # a module straight in the standard library: only that file
        colorsys = importlib.util.find_spec("colorsys").origin
        assert py2compat.application_roots("colorsys") == [colorsys]
    finally:
        sys.path.remove(str(UNITS))


def test_install_disabled_removes_the_finder(tmp_path) -> None:
    py2compat.install_roots([str(tmp_path)], cache=str(tmp_path))
    assert any(isinstance(f, py2compat.Py2Finder) for f in sys.meta_path)
    assert py2compat.install("anything", enabled=False) is None
    assert not any(isinstance(f, py2compat.Py2Finder) for f in sys.meta_path)


# ---------------------------------------------------------------------------
# End to end: python -m wallaroo APP
# ---------------------------------------------------------------------------

INPUT = "alice 3\nbob 4\ncarol x\nalice 5\ndave 0\n"
EXPECTED = [b"ALICE! 3 97 alice=3", b"BOB! 7 98 alice=3,bob=4", b"ALICE! 12 97 alice=8,bob=4"]


@pytest.fixture
def py2_env(app_env, tmp_path: Path) -> dict:
    env = app_env(apps_on_path=False)
    env["WALLAROO_CACHE_DIR"] = str(tmp_path / "py2cache")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _records(path: Path) -> list:
    data, out = path.read_bytes(), []
    while data:
        (size,) = struct.unpack(">I", data[:4])
        out.append(data[4 : 4 + size])
        data = data[4 + size :]
    return out


def _debug_lines(stderr: str, module: str) -> list:
    return [line for line in stderr.splitlines() if f"wallaroo.py2compat: {module} (" in line]


def test_python_2_application_end_to_end(run_app, py2_env, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text(INPUT)
    out1, out2 = tmp_path / "out1.bin", tmp_path / "out2.bin"
    args = ["--input", str(source), "--log-level", "debug"]
    first = run_app(LEGACY, *args, "--output", str(out1), env=py2_env).check()
    assert _records(out1) == EXPECTED
    assert b"legacy app: reading " + str(source).encode() in first.stdout  # print statement
    assert "legacy app: bad count b'x': invalid literal" in first.stderr  # except E, e
    for module in ("legacy", "textutil", "textutil.fmt"):
        [line] = _debug_lines(first.stderr, module)
        assert "mode py2" in line and "translation cached in" in line, line
    for module in ("tally", "codec", "textutil.case_helpers"):
        [line] = _debug_lines(first.stderr, module)
        assert "mode py3" in line, line
    assert "wallaroo.py2compat: simplejson" not in first.stderr
    assert not _debug_lines(first.stderr, "wallaroo")
    cache = Path(py2_env["WALLAROO_CACHE_DIR"])
    assert len(list(cache.glob("*.py"))) == 3

    # The compiled code of every module is kept: the next start compiles nothing.
    second = run_app(LEGACY, *args, "--output", str(out2), env=py2_env).check()
    assert _records(out2) == EXPECTED
    for module in ("legacy", "textutil", "textutil.fmt", "tally", "codec",
                   "textutil.case_helpers"):
        [line] = _debug_lines(second.stderr, module)
        assert "; code from cache " in line, line
    assert len(list((cache / "code").glob("*.code"))) == 6
    assert len(list(cache.glob("*.py"))) == 3

    # Without the code, the translations are still kept.
    shutil.rmtree(cache / "code")
    third = run_app(LEGACY, *args, "--output", str(out2), env=py2_env).check()
    assert _records(out2) == EXPECTED
    for module in ("legacy", "textutil", "textutil.fmt"):
        [line] = _debug_lines(third.stderr, module)
        assert "translation from cache" in line, line
    assert len(list(cache.glob("*.py"))) == 3
    assert not list(LEGACY.rglob("__pycache__"))


def test_application_module_found_in_the_current_directory(
    run_app, py2_env, tmp_path: Path
) -> None:
    source = tmp_path / "in.txt"
    source.write_text(INPUT)
    out = tmp_path / "out.bin"
    args = ["--input", str(source), "--output", str(out)]
    run_app("legacy", *args, cwd=LEGACY, env=py2_env).check()
    assert _records(out) == EXPECTED


def test_no_py2_compat_flag(run_app, py2_env, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text(INPUT)
    args = ["--input", str(source), "--output", str(tmp_path / "o"), "--no-py2-compat"]
    result = run_app(LEGACY, *args, env=py2_env)
    assert result.returncode == 2, result.stderr
    assert f"error: {LEGACY / 'legacy.py'}:" in result.stderr
    assert "cannot compile" in result.stderr
    assert not Path(py2_env["WALLAROO_CACHE_DIR"]).exists()


def test_application_that_compiles_as_python_3(run_app, py2_env, tmp_path: Path) -> None:
    source = tmp_path / "words.txt"
    source.write_text("a\nb\na\n")
    app = PY2APPS / "iter_app.py"
    out = tmp_path / "out.txt"
    run_app(app, "--input", str(source), "--output", str(out), env=py2_env).check()
    assert out.read_text() == "a 1 1\nb 1 2\na 2 3\n"

    args = ["--input", str(source), "--output", str(tmp_path / "o2"), "--no-py2-compat"]
    plain = run_app(app, *args, env=py2_env)
    assert plain.returncode == 1, plain.stderr
    assert "AttributeError: 'dict' object has no attribute 'iteritems'" in plain.stderr


def test_application_that_cannot_be_translated(run_app, py2_env) -> None:
    app = PY2APPS / "broken_app.py"
    result = run_app(app, env=py2_env)
    assert result.returncode == 2
    [line] = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert line.startswith(f"error: {app}:4: cannot compile: invalid syntax")
