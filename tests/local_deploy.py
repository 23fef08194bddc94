"""Run a deployment's worker commands (docker-compose.yaml, k8s/) as local processes.

A deployment names its machines (``primary:12500``, ``kafka:9092``,
``wallaroo-1.wallaroo:12500``); here every ``HOST:PORT`` of those hosts becomes
a free port on 127.0.0.1 (each distinct address its own port), the Kafka
address becomes a test broker's, and ``python`` is this interpreter with the
repository's package on ``PYTHONPATH``. The processes keep the deployment's
environment (the cluster secret), so a test checks the commands and the
settings as written, not a copy of them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import app_env
from kafka_broker import free_port

#: ``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}`` (compose interpolation).
_VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def read_env_file(path: Path) -> dict:
    """``KEY=VALUE`` lines of a ``.env`` file (comments and blank lines skipped)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def interpolate(value: str, env: dict) -> str:
    """Compose's variable interpolation of ``value`` from ``env``; a missing
    ``${VAR:?message}`` raises :class:`KeyError` with the message."""

    def one(match: re.Match) -> str:
        name, kind, rest = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if kind == "-":
            return rest
        if kind == "?":
            raise KeyError(f"{name}: {rest}")
        return ""

    return _VARIABLE.sub(one, value)


class Addresses:
    """Maps ``HOST:PORT`` of the deployment's hosts to free loopback ports."""

    def __init__(self, hosts: set, fixed: dict | None = None) -> None:
        self.hosts = hosts
        self.mapped: dict = dict(fixed or {})

    def local(self, address: str) -> str:
        if address not in self.mapped:
            self.mapped[address] = f"127.0.0.1:{free_port()}"
        return self.mapped[address]

    def rewrite(self, arg: str) -> str:
        """``arg`` with every ``HOST:PORT`` of a deployment host made local
        (also inside comma-separated lists)."""

        def one(match: re.Match) -> str:
            return self.local(match.group(0))

        hosts = "|".join(re.escape(h) for h in sorted(self.hosts, key=len, reverse=True))
        return re.sub(rf"(?<![\w.-])(?:{hosts}):\d+(?![\w.])", one, arg)


class Worker:
    """One deployment process, its output in ``<dir>/<name>.log``."""

    def __init__(self, name: str, argv: list, env: dict, directory: Path) -> None:
        self.name = name
        self.log_path = directory / f"{name}.log"
        full_env = app_env()
        full_env.update(env)
        if argv[0] in ("python", "python3"):
            argv = [sys.executable, *argv[1:]]
        else:  # a shell script that runs `python`: this interpreter
            bin_dir = directory / "bin"
            bin_dir.mkdir(exist_ok=True)
            python = bin_dir / "python"  # a script, not a link: the venv stays this one
            if not python.exists():
                python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
                python.chmod(0o755)
            full_env["PATH"] = f"{bin_dir}{os.pathsep}{full_env.get('PATH', '')}"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=directory,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 120) -> re.Match:
        """Wait until the log matches ``pattern``; fail when the process exits first."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.log())
            if found:
                return found
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: no {pattern!r} (exit {self.proc.poll()})\n{self.log()[-4000:]}"
                )
            time.sleep(0.1)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def stop_all(workers: list) -> None:
    """SIGTERM every worker, members first (the initializer last)."""
    for worker in reversed(workers):
        worker.stop()


def secret_env_name() -> str:
    """The environment variable the runner reads the cluster secret from."""
    from wallaroo.cluster import SECRET_ENV

    return SECRET_ENV
