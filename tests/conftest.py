"""Shared fixtures for the end-to-end tests: run applications through the runner.

Every application runs as ``sys.executable -m wallaroo APP ...`` in a
subprocess, with ``tests/apps`` and ``python`` on ``PYTHONPATH``:

* ``run_app(app, *args, timeout=30)`` runs it to completion and returns an
  :class:`AppResult` (``returncode``, ``stdout``, ``stderr``);
* ``tcp_app(app, *args, sources=1)`` is a context manager for applications
  with TCP sources: it starts the application, waits until its log says each
  source is listening, and on exit sends SIGTERM and checks the exit code is 0;
* ``free_port()`` returns a TCP port that was free a moment ago;
* ``broker`` is the session's tansu Kafka broker (``tests/kafka_broker.py``),
  one for every test of the run, however many xdist workers run them.

Parallel runs (pytest-xdist)
----------------------------
``make test`` runs the suite with ``pytest -n 2`` (two worker processes, see
the Makefile). Every test must therefore be independent of the others:

* ports: always a free port (``free_port()``, or ``127.0.0.1:0``), never a
  fixed one; files: under ``tmp_path`` / ``tmp_path_factory`` (per worker);
* names on a shared service (Kafka topics, consumer groups) are unique per
  test, e.g. ``f"orders-{uuid.uuid4().hex[:8]}"``;
* a ``scope="session"`` fixture runs once *per xdist worker*. For a service
  that must exist once per run (an expensive broker, e.g. a JVM Kafka), use
  :func:`shared_service`: the first worker that needs it starts it under a
  file lock in ``tmp_path_factory.getbasetemp().parent`` (the directory all
  workers of one run share) and writes how to reach it in a JSON file there;
  the others read that file. The service is started *detached* (its own
  session, not killed with the worker that started it: the other worker may
  still use it); the last worker that used it stops it, and the controller
  process stops whatever is left at the end of the run
  (:func:`pytest_sessionfinish` below). The ``broker`` fixture is the example
  to follow::

      @pytest.fixture(scope="session")
      def broker(tmp_path_factory):
          with shared_service(tmp_path_factory, "tansu", _start_tansu,
                              stop_described) as described:
              yield TansuBroker.attach(described)

* slow chaos runs (kill -9 ten times and check counts) are marked
  ``@pytest.mark.chaos``: ``pytest -m "not chaos"`` skips them while
  developing; CI runs them (a second pytest invocation in the Makefile).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from filelock import FileLock

TESTS_DIR = Path(__file__).resolve().parent
APPS_DIR = TESTS_DIR / "apps"
PYTHON_DIR = TESTS_DIR.parent / "python"
HOST = "127.0.0.1"

#: What a TCP source logs once it is bound (src/sources/tcp.rs).
LISTENING = re.compile(r"pipeline (.+?): listening for TCP input on (\S+):(\d+)")


def app_env(*extra_paths: Path | str, apps_on_path: bool = True) -> dict:
    """The environment of an application run: ``tests/apps`` (unless
    ``apps_on_path`` is false) and the package on ``PYTHONPATH``."""
    env = dict(os.environ)
    paths = [str(p) for p in extra_paths]
    paths += [str(APPS_DIR), str(PYTHON_DIR)] if apps_on_path else [str(PYTHON_DIR)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["WALLAROO_LOG_LEVEL"] = "info"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (Linux /proc; a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class AppResult:
    """How a finished application run went."""

    returncode: int
    stdout: bytes
    stderr: str

    def check(self) -> AppResult:
        """Assert the run exited 0; return ``self``."""
        assert self.returncode == 0, f"exit {self.returncode}\n{self.stderr}"
        return self


def _run_app(
    app: str | Path,
    *args: str,
    timeout: float = 30.0,
    cwd: Path | str | None = None,
    env: dict | None = None,
    argv_prefix: list | None = None,
) -> AppResult:
    """Run ``python -m wallaroo APP ARGS`` to completion.

    ``argv_prefix`` replaces ``[APP]`` at the start of the command line (for
    ``--application-module NAME``); ``app`` is then ignored.
    """
    head = argv_prefix if argv_prefix is not None else [str(app)]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "wallaroo", *head, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=str(cwd) if cwd is not None else None,
            env=env if env is not None else app_env(),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        stderr = (err.stderr or b"").decode("utf-8", "replace")
        pytest.fail(f"{app} did not finish within {timeout} s\n{stderr}")
    return AppResult(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"))


class RunningApp:
    """An application started by :func:`tcp_app`; its stderr is read on a thread."""

    def __init__(self, argv: list, env: dict, cwd: str | None) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._stdout = b""
        self._threads = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._cond:
                self._lines.append(raw.decode("utf-8", "replace"))
                self._cond.notify_all()
        with self._cond:
            self._lines.append("")  # end of stream marker
            self._cond.notify_all()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        self._stdout = self.proc.stdout.read()

    @property
    def stderr(self) -> str:
        """What the application logged so far."""
        with self._cond:  # an RLock: callable with the lock held
            return "".join(self._lines)

    @property
    def stdout(self) -> bytes:
        """The application's standard output (complete once it exited)."""
        return self._stdout

    def listening(self) -> list:
        """``(pipeline, host, port)`` of every TCP source that logged it is listening."""
        return [(m[1], m[2], int(m[3])) for m in LISTENING.finditer(self.stderr)]

    def wait_listening(self, sources: int, timeout: float) -> list:
        """Wait until ``sources`` TCP sources are listening; fail if the app exits first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.listening()
                if len(found) >= sources:
                    return found
                if self._lines and self._lines[-1] == "":
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.1))
        self.proc.poll()
        pytest.fail(
            f"application not listening on {sources} TCP source(s) "
            f"(exit code {self.proc.returncode})\n{self.stderr}"
        )

    def stop(self, timeout: float = 15.0) -> int:
        """Send SIGTERM (if still running), wait for the exit and return its code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"application did not exit within {timeout} s of SIGTERM\n{self.stderr}")
        for t in self._threads:
            t.join(5)
        return self.proc.returncode


@contextlib.contextmanager
def _tcp_app(
    app: str | Path,
    *args: str,
    sources: int = 1,
    start_timeout: float = 15.0,
    stop_timeout: float = 15.0,
    env: dict | None = None,
    cwd: Path | str | None = None,
) -> Iterator[RunningApp]:
    """Start an application with TCP sources; SIGTERM it on exit and expect exit 0."""
    running = RunningApp(
        [sys.executable, "-m", "wallaroo", str(app), *args],
        env if env is not None else app_env(),
        str(cwd) if cwd is not None else None,
    )
    try:
        running.wait_listening(sources, start_timeout)
        yield running
    except BaseException:
        if running.proc.poll() is None:
            running.proc.kill()
        running.proc.wait()
        raise
    code = running.stop(stop_timeout)
    assert code == 0, f"exit code {code} after SIGTERM\n{running.stderr}"


@pytest.fixture
def free_port() -> Callable[[], int]:
    """``free_port()`` -> a TCP port on 127.0.0.1 that was free a moment ago."""
    return _free_port


@pytest.fixture(name="app_env")
def app_env_fixture() -> Callable[..., dict]:
    """``app_env(*extra_paths, apps_on_path=True)`` -> environment for a run."""
    return app_env


@pytest.fixture
def run_app() -> Callable[..., AppResult]:
    """``run_app(app, *args, timeout=30, cwd=None, env=None)`` -> :class:`AppResult`."""
    return _run_app


@pytest.fixture
def tcp_app() -> Callable[..., contextlib.AbstractContextManager]:
    """``with tcp_app(app, *args, sources=1) as running:`` (see :func:`_tcp_app`)."""
    return _tcp_app


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """``artifacts/<test name>/``, created empty (screenshots of UI tests)."""
    path = TESTS_DIR.parent / "artifacts" / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="session")
def apache_kafka():
    """One Apache Kafka broker (tests/apache_kafka.py) for the session, started on
    first use; with pytest-xdist, one per worker. Tests create their own topics."""
    from apache_kafka import ApacheKafka

    broker = ApacheKafka()
    try:
        yield broker.start()
    finally:
        broker.stop()


class SmallFilesystem:
    """A small file system mounted at ``path`` (tmpfs, else a loop-mounted
    ext4 image), to fill up on purpose: :meth:`fill` writes a file until
    the disk is full, :meth:`free` deletes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"

    def fill(self, leave: int = 0) -> None:
        """Write ``filler`` until the file system has no room left, then
        give back ``leave`` bytes."""
        chunk = b"\0" * 4096
        with open(self._filler, "ab", buffering=0) as filler:
            try:
                while True:
                    filler.write(chunk)
            except OSError:
                pass
            if leave:
                filler.truncate(max(0, filler.tell() - leave))

    def free(self) -> None:
        """Delete what :meth:`fill` wrote."""
        self._filler.unlink(missing_ok=True)


def _mount(argv: list) -> str | None:
    """Run a mount command; None when it worked, else why not."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFilesystem]:
    """A 4 MiB file system of its own (see :class:`SmallFilesystem`); the
    test is skipped, saying why, when neither tmpfs nor a loop mount works
    (both need root)."""
    mount_point = tmp_path / "small_fs"
    mount_point.mkdir()
    tmpfs = _mount(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)])
    if tmpfs is not None:
        image = tmp_path / "small_fs.img"
        with open(image, "wb") as f:
            f.truncate(8 << 20)
        loop = _mount(["mkfs.ext4", "-q", "-F", str(image)]) or _mount(
            ["mount", "-o", "loop", str(image), str(mount_point)]
        )
        if loop is not None:
            pytest.skip(f"no small file system to fill: tmpfs: {tmpfs}; loop mount: {loop}")
    try:
        yield SmallFilesystem(mount_point)
    finally:
        _mount(["umount", "-l", str(mount_point)])


# ---------------------------------------------------------------------------
# Services shared by every xdist worker of a run
# ---------------------------------------------------------------------------

#: Shared services' files (``NAME.json``, ``NAME.lock``, ``NAME.users``) live in
#: this sub-directory of the run's common temporary directory.
SHARED_DIR = "shared-services"


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory every xdist worker of this run sees (the basetemp's parent
    under xdist, where each worker has its own basetemp ``popen-gwN``)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / SHARED_DIR
    path.mkdir(exist_ok=True)
    return path


@contextlib.contextmanager
def shared_service(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    start: Callable[[], dict],
    stop: Callable[[dict], None],
) -> Iterator[dict]:
    """One ``name`` service for every xdist worker of the run.

    ``start()`` starts the service *detached* (it must outlive the worker that
    starts it) and returns a JSON-able description (address, pid, ...);
    ``stop(description)`` stops it. The first caller starts it under a file
    lock, the others reuse the description; the last one to leave stops it.
    Whatever is left is stopped by the controller's :func:`pytest_sessionfinish`
    (``stop`` must then be importable: pass a module-level function).
    """
    shared = _shared_dir(tmp_path_factory)
    info, users = shared / f"{name}.json", shared / f"{name}.users"
    with FileLock(str(shared / f"{name}.lock")):
        if info.exists():
            described = json.loads(info.read_text())["described"]
        else:
            described = start()
            info.write_text(json.dumps({
                "described": described,
                "stop": f"{stop.__module__}:{stop.__qualname__}",
            }))  # fmt: skip
        count = int(users.read_text()) if users.exists() else 0
        users.write_text(str(count + 1))
    try:
        yield described
    finally:
        with FileLock(str(shared / f"{name}.lock")):
            count = int(users.read_text()) - 1
            users.write_text(str(count))
            if count == 0:
                info.unlink()
                stop(described)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller (or a run without xdist): stop shared services a worker
    left behind (a worker that crashed before its teardown)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    shared = Path(factory.getbasetemp()) / SHARED_DIR
    for info in shared.glob("*.json") if shared.is_dir() else []:
        try:
            data = json.loads(info.read_text())
            module, _, function = data["stop"].partition(":")
            import importlib

            getattr(importlib.import_module(module), function)(data["described"])
        except Exception as err:  # pragma: no cover - best effort
            print(f"could not stop shared service {info.stem}: {err}", file=sys.stderr)


def _start_tansu() -> dict:
    from kafka_broker import TansuBroker

    return TansuBroker(detached=True).start().describe()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The run's tansu broker (``kafka_broker.TansuBroker``), shared by every test
    and every xdist worker: use topics and groups of your own (unique names)."""
    from kafka_broker import TansuBroker, stop_described

    with shared_service(tmp_path_factory, "tansu", _start_tansu, stop_described) as described:
        yield TansuBroker.attach(described)
