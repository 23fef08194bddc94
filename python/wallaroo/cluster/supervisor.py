"""``--workers N``: start N worker processes on loopback and supervise them."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
from typing import Any, Callable

from wallaroo.cluster.options import SECRET_ENV, SUPERVISED_ENV
from wallaroo.cluster.wire import free_address

log = logging.getLogger("wallaroo.cluster")

#: Passed on to the workers (a hang-up as SIGTERM: they drain and stop).
FORWARDED = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM,
             signal.SIGHUP: signal.SIGTERM}  # fmt: skip


def supervise(argv: list, workers: int, secret: str | None = None) -> int:
    """``--workers N``: start N worker processes on loopback and wait for them.

    They prove ``secret`` to each other, or a fresh random one drawn here
    (passed in their environment, never on a command line), so no other
    process can join them. A worker that fails makes the others stop;
    Ctrl-C / SIGTERM are passed on.
    """
    if workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    base = argv
    for flag in ("--workers", "--cluster-secret", "--cluster-secret-file"):
        base = _without_flag(base, flag)
    env = dict(os.environ, **{SECRET_ENV: secret or secrets.token_hex(32), SUPERVISED_ENV: "1"})
    resilient = any(arg in ("-r", "--resilience-dir") or arg.startswith("--resilience-dir=")
                    for arg in base)
    control = free_address()
    commands: list = []
    for index in range(workers):
        if index == 0:
            role = ["-t", "-w", str(workers), "-c", control, "-d", free_address(), "-n", "worker-0"]
        else:
            name = f"worker-{index}"
            role = ["-w", str(workers), "-c", control, "-y", free_address(), "-n", name]
        command = [sys.executable, "-m", "wallaroo", *base, *role]
        if index > 0:
            command += ["--no-demo"]
        commands.append(command)
    children = [_start(command, env) for command in commands]
    log.info("supervising %d workers (control %s)", workers, control)
    stopping = threading.Event()

    def forward(signum: int, frame: Any) -> None:
        stopping.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(FORWARDED[signal.Signals(signum)])

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        code = 0
        # Blocks until a worker ends (a signal runs `forward` meanwhile): no
        # polling, so the supervisor takes no CPU while the workers run.
        while any(child.returncode is None for child in children):
            index = _wait_any(children)
            if index is None:
                break
            status = children[index].returncode
            if status is not None and status < 0 and resilient and not stopping.is_set():
                # Killed: with crash recovery it starts again, and the
                # cluster recovers from the last complete snapshot.
                log.warning("worker %d was killed (signal %d); starting it again", index, -status)
                children[index] = _start(commands[index], env)
                continue
            if status not in (None, 0) and code == 0:
                code = status if status > 0 else 1
                log.error("worker %d exited with status %s; stopping the others", index, status)
                for other in children:
                    if other.poll() is None:
                        other.terminate()
        for child in children:
            if child.returncode not in (0, None) and code == 0:
                code = child.returncode if child.returncode > 0 else 1
        return code
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _start(command: list, env: dict) -> subprocess.Popen:
    """A worker in a session of its own, so a terminal's Ctrl-C or hang-up
    reaches only the supervisor, which passes it on once (a worker that got
    Ctrl-C from the terminal and again from the supervisor took it as a
    second Ctrl-C: stop at once, what was in flight not delivered). On Linux
    the worker gets SIGTERM when the supervisor dies, even by SIGKILL."""
    return subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_TERM_WITH_PARENT)


def _term_with_parent() -> Callable[[], None] | None:
    """Linux: what a child calls between fork and exec to get SIGTERM when the
    thread that started it ends (``prctl(PR_SET_PDEATHSIG)``). Looked up here,
    in the parent: the child only calls it (no import after a fork)."""
    if sys.platform != "linux":
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)
    return lambda: prctl(pr_set_pdeathsig, sigterm)


_TERM_WITH_PARENT = _term_with_parent()


def _wait_any(children: list) -> int | None:
    """Wait for one of ``children`` to end; the index of the one that did (its
    ``returncode`` set), or None when none is left to wait for."""
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            # Every child reaped already (by ``poll`` in the signal handler).
            for child in children:
                child.poll()
            return None
        for index, child in enumerate(children):
            if child.pid == pid:
                child.returncode = os.waitstatus_to_exitcode(status)
                return index


def _without_flag(argv: list, flag: str) -> list:
    out = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == flag:
            skip = True
            continue
        if arg.startswith(flag + "="):
            continue
        out.append(arg)
    return out
