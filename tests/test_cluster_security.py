"""The cluster's control plane against strangers (loopback only): forged
joins, replayed joins, slow connections, the external channel, forged
re-joins under crash recovery.

A stranger here speaks whichever protocol the initializer speaks: it waits
up to 10 s for the initializer's opening ``hello``; without one (an initializer
that expects the worker to speak first) it sends its join at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cluster import (
    BATCH,
    CLUSTER_SLOW,
    HOST,
    WORD_COUNT,
    processes,
)
from test_cluster import word_text as word_text  # a fixture
from wallaroo.cluster import ClusterSetupError, external
from wallaroo.cluster.auth import proof

SECRET = "correct horse battery staple"


@pytest.fixture(scope="module")
def slow_input(tmp_path_factory) -> Path:
    # 1000 records x 10 ms: about 5 s on each of 2 workers.
    path = tmp_path_factory.mktemp("slow") / "lines.txt"
    path.write_text("".join(f"k{i % 17}\n" for i in range(1000)))
    return path


def _no_secret_env(app_env, runtime_dir: Path | None = None) -> dict:
    """No cluster secret given; ``runtime_dir`` (a fresh one, mode 0700, or a
    shared one: mode 0755, so no secret can be kept there) as the
    ``XDG_RUNTIME_DIR`` where a loopback initializer keeps the one it draws."""
    env = app_env()
    env.pop("WALLAROO_CLUSTER_SECRET", None)
    if runtime_dir is not None:
        env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    return env


def _runtime_dir(tmp_path: Path, private: bool = True) -> Path:
    """A runtime directory whose ``wallaroo-UID`` directory is this user's
    alone (``private``) or readable by everyone (so not used for secrets)."""
    path = tmp_path / "run"
    (path / f"wallaroo-{os.getuid()}").mkdir(parents=True, mode=0o700 if private else 0o755)
    (path / f"wallaroo-{os.getuid()}").chmod(0o700 if private else 0o755)
    return path


def _messages(sock: socket.socket, timeout: float) -> list:
    """What the initializer sends on ``sock`` until it closes it (or ``timeout``)."""
    out: list = []
    sock.settimeout(timeout)
    reader = sock.makefile("rb")
    with contextlib.suppress(OSError, ValueError):
        for line in reader:
            out.append(json.loads(line))
    return out


def _forged_join(address: str, name: str, app: str, timeout: float = 20.0,
                 secret: str | None = None) -> list:
    """Join as ``name`` (proving ``secret`` if given); every message the
    initializer sent."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        ready, _, _ = select.select([sock], [], [], 10.0)
        hello = json.loads(sock.makefile("rb").readline()) if ready else {}
        join = {"type": "join", "protocol": hello.get("protocol", 1), "name": name,
                "data": f"{HOST}:1", "app": app, "nonce": "00" * 16, "secret": None}
        if secret:
            join["proof"] = proof(secret, "worker", str(hello.get("nonce")), join["nonce"])
        sock.sendall(json.dumps(join).encode() + b"\n")
        return [hello, *_messages(sock, timeout)]


def _started(messages: list) -> list:
    return [m for m in messages if m.get("type") == "start" or "token" in m]


def _supervisor_control(stderr: str) -> str:
    found = re.search(r"supervising \d+ workers \(control ([\d.]+:\d+)\)", stderr)
    assert found, stderr
    return found.group(1)


# ---------------------------------------------------------------------------
# A stranger cannot join
# ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_forged_join_on_a_supervised_cluster_is_refused(tmp_path: Path, app_env,
                                                          slow_input: Path) -> None:
    """``--workers N`` draws a secret: a stranger's join gets no token and the
    cluster runs on unchanged."""
    out = tmp_path / "out.txt"
    with processes(tmp_path, app_env) as start:
        supervisor = start("supervisor", CLUSTER_SLOW, "--input", str(slow_input),
                           "--output", str(out), *BATCH, "--workers", "2",
                           env=_no_secret_env(app_env))
        supervisor.wait_for("running application", timeout=30, count=2)
        control = _supervisor_control(supervisor.stderr)
        answers = _forged_join(control, "evil", "Slow Count")
        assert supervisor.wait(60) == 0, supervisor.stderr
    assert not _started(answers), answers
    assert any(m.get("type") == "refused" for m in answers), answers
    assert "refused a worker" in supervisor.stderr
    assert "grew" not in supervisor.stderr
    assert len(out.read_text().splitlines()) == 1000


@pytest.mark.timeout(120)
def test_a_forged_join_on_a_loopback_cluster_without_a_secret_is_refused(
    tmp_path: Path, app_env, free_port, slow_input: Path
) -> None:
    """A hand-started loopback cluster given no secret draws one, kept in a
    file only its user reads: its own worker proves it and joins, a stranger
    that does not read it is refused, and the file goes with the run."""
    port = free_port()
    control = f"{HOST}:{port}"
    out = tmp_path / "out.txt"
    common = ("--input", str(slow_input), "--output", str(out), *BATCH)
    env = _no_secret_env(app_env, _runtime_dir(tmp_path))
    secret_file = tmp_path / "run" / f"wallaroo-{os.getuid()}" / f"cluster-{port}.secret"
    with processes(tmp_path, app_env) as start:
        initializer = start("initializer", CLUSTER_SLOW, *common, "-t", "-w", "2",
                            "-c", control, "-d", f"{HOST}:{free_port()}", env=env)
        initializer.wait_for("waiting for 1 more worker", timeout=30)
        assert secret_file.stat().st_mode & 0o777 == 0o600
        assert str(secret_file) in initializer.stderr
        worker = start("w2", CLUSTER_SLOW, *common, "-w", "2", "-c", control, "-n", "w2",
                       env=env)
        worker.wait_for("running application", timeout=30)
        answers = _forged_join(control, "evil", "Slow Count")
        assert worker.wait(60) == 0, worker.stderr
        assert initializer.wait(60) == 0, initializer.stderr
    assert not _started(answers), answers
    assert any(m.get("type") == "refused" for m in answers), answers
    assert "wrong cluster secret" in initializer.stderr
    assert "grew" not in initializer.stderr
    assert not secret_file.exists()
    assert len(out.read_text().splitlines()) == 1000


# ---------------------------------------------------------------------------
# The secret never crosses the wire; a replayed join is refused
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _recording_relay(target: str) -> Iterator[tuple]:
    """A relay on a free port to ``target`` for one connection; yields
    ``(address, sent, received)``, the bytes each way (growing lists)."""
    host, _, port = target.rpartition(":")
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(1)
    sent: list = []
    received: list = []

    def pump(src: socket.socket, dst: socket.socket, record: list) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                record.append(chunk)
                dst.sendall(chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def relay() -> None:
        client, _ = listener.accept()
        upstream = socket.create_connection((host, int(port)))
        threading.Thread(target=pump, args=(client, upstream, sent), daemon=True).start()
        pump(upstream, client, received)

    threading.Thread(target=relay, daemon=True).start()
    try:
        yield f"{HOST}:{listener.getsockname()[1]}", sent, received
    finally:
        listener.close()


@pytest.mark.timeout(90)
def test_the_secret_never_crosses_the_wire_and_a_replayed_join_is_refused(
    tmp_path: Path, app_env, free_port, slow_input: Path
) -> None:
    control = f"{HOST}:{free_port()}"
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    out = tmp_path / "out.txt"
    common = ("--input", str(slow_input), "--output", str(out), *BATCH)
    env = _no_secret_env(app_env)
    with processes(tmp_path, app_env) as start, _recording_relay(control) as recorded:
        relay, sent, received = recorded
        initializer = start("initializer", CLUSTER_SLOW, *common, "-t", "-w", "2",
                            "-c", control, "-d", f"{HOST}:{free_port()}",
                            "--cluster-secret-file", str(secret_file), env=env)
        initializer.wait_for("waiting for 1 more worker", timeout=20)
        # The worker takes the secret from the environment, through the relay.
        worker = start("worker2", CLUSTER_SLOW, *common, "-w", "2", "-c", relay,
                       "-n", "worker2", env=dict(env, WALLAROO_CLUSTER_SECRET=SECRET))
        worker.wait_for("running application", timeout=30)
        join_line = b"".join(sent).split(b"\n")[0] + b"\n"
        host, _, port = control.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=10) as replay:
            replay.sendall(join_line)
            answers = _messages(replay, 20)
        assert worker.wait(60) == 0, worker.stderr
        assert initializer.wait(60) == 0, initializer.stderr
    wire = b"".join(sent) + b"".join(received)
    assert SECRET.encode() not in wire
    assert b'"token"' in b"".join(received)  # the real worker was admitted
    assert not _started(answers), answers
    assert any(m.get("type") == "refused" for m in answers), answers
    assert "wrong cluster secret" in initializer.stderr
    assert len(out.read_text().splitlines()) == 1000


@pytest.mark.timeout(60)
def test_a_worker_with_a_secret_does_not_trust_an_initializer_without_one(
    tmp_path: Path, app_env, free_port, word_text: Path
) -> None:
    """(An initializer without a private directory to keep a drawn secret in,
    so it uses none, and says so.)"""
    control = f"{HOST}:{free_port()}"
    common = ("--input", str(word_text), "--output", str(tmp_path / "out.txt"))
    env = _no_secret_env(app_env, _runtime_dir(tmp_path, private=False))
    with processes(tmp_path, app_env) as start:
        initializer = start("initializer", WORD_COUNT, *common, "-t", "-w", "2", "-c", control,
                            "--cluster-timeout", "20", env=env)
        initializer.wait_for("waiting for 1 more worker", timeout=20)
        worker = start("worker2", WORD_COUNT, *common, "-w", "2", "-c", control,
                       env=dict(env, WALLAROO_CLUSTER_SECRET=SECRET))
        assert worker.wait(30) != 0
    assert "cannot prove it is the initializer" in worker.stderr, worker.stderr
    assert "any process on this host can join" in initializer.stderr


# ---------------------------------------------------------------------------
# Slow or silent strangers are dropped, never waited for
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _dripping(address: str, count: int, every: float = 1.0) -> Iterator[list]:
    """``count`` connections to ``address`` sending one byte every ``every``
    seconds until the block ends; yields the list of those still open."""
    host, _, port = address.rpartition(":")
    stop = threading.Event()
    still_open: list = []

    def drip() -> None:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            still_open.append(sock)
            with contextlib.suppress(OSError):
                while not stop.wait(every):
                    sock.sendall(b" ")
            still_open.remove(sock)

    threads = [threading.Thread(target=drip, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield still_open
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


@pytest.mark.timeout(90)
def test_dripping_strangers_on_the_control_port_do_not_stall_formation(
    tmp_path: Path, app_env, free_port, slow_input: Path
) -> None:
    control = f"{HOST}:{free_port()}"
    out = tmp_path / "out.txt"
    common = ("--input", str(slow_input), "--output", str(out), *BATCH)
    with processes(tmp_path, app_env) as start:
        initializer = start("initializer", CLUSTER_SLOW, *common, "-t", "-w", "2",
                            "-c", control, "-d", f"{HOST}:{free_port()}",
                            "--cluster-timeout", "30")
        initializer.wait_for("waiting for 1 more worker", timeout=20)
        with _dripping(control, 3) as still_open:
            time.sleep(0.5)  # the strangers are first in line
            worker = start("worker2", CLUSTER_SLOW, *common, "-w", "2", "-c", control,
                           "-n", "worker2")
            worker.wait_for("running application", timeout=30)
            assert len(still_open) == 3  # they were still dripping when the cluster formed
            assert worker.wait(60) == 0, worker.stderr
            assert initializer.wait(60) == 0, initializer.stderr
    assert initializer.stderr.count("no join request within") == 3, initializer.stderr
    assert len(out.read_text().splitlines()) == 1000


# ---------------------------------------------------------------------------
# The external channel
# ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_the_external_channel_needs_the_secret(tmp_path: Path, app_env, free_port,
                                               slow_input: Path) -> None:
    control, ext = f"{HOST}:{free_port()}", f"{HOST}:{free_port()}"
    out = tmp_path / "out.txt"
    common = ("--input", str(slow_input), "--output", str(out), *BATCH)
    env = dict(_no_secret_env(app_env), WALLAROO_CLUSTER_SECRET=SECRET)
    with processes(tmp_path, app_env) as start:
        initializer = start("initializer", CLUSTER_SLOW, *common, "-t", "-w", "2",
                            "-c", control, "-e", ext, env=env)
        worker = start("w2", CLUSTER_SLOW, *common, "-w", "2", "-c", control, "-n", "w2",
                       env=env)
        initializer.wait_for("external channel on", timeout=30)
        stranger = external.command(ext, "shrink w2")
        with pytest.raises(ClusterSetupError, match="no valid proof"):
            external.command(ext, "shrink w2", secret="guess")  # nor does it trust us
        with socket.create_connection((HOST, int(ext.rpartition(":")[2])), timeout=10) as sock:
            sock.sendall(f"hello {'00' * 16}\nproof {'00' * 32}\nshrink w2\n".encode())
            reader = sock.makefile()
            assert "nonce" in json.loads(reader.readline())
            guess = json.loads(reader.readline())
        with socket.create_connection((HOST, int(ext.rpartition(":")[2])), timeout=10) as sock:
            sock.sendall(f"secret {SECRET}\nstatus\n".encode())
            by_line = json.loads(sock.makefile().readline())
        proven = external.command(ext, "status", secret=SECRET)
        assert worker.wait(60) == 0, worker.stderr
        assert initializer.wait(60) == 0, initializer.stderr
    assert stranger["ok"] is False and "needs the cluster secret" in stranger["message"]
    assert guess["ok"] is False and "wrong cluster secret" in guess["message"], guess
    assert by_line == {"ok": True, "workers": ["initializer", "w2"]}
    assert proven == {"ok": True, "workers": ["initializer", "w2"]}
    assert "shrank" not in initializer.stderr
    assert len(out.read_text().splitlines()) == 1000


@pytest.mark.timeout(60)
def test_the_external_channel_without_a_secret_listens_on_loopback_only(
    tmp_path: Path, app_env, free_port, slow_input: Path
) -> None:
    port = free_port()
    with processes(tmp_path, app_env) as start:
        initializer = start("initializer", CLUSTER_SLOW, "--input", str(slow_input),
                            "--output", str(tmp_path / "out.txt"), "-t", "-w", "1",
                            "-c", f"{HOST}:{free_port()}", "-e", f"0.0.0.0:{port}",
                            env=_no_secret_env(app_env))
        initializer.wait_for("external channel on", timeout=30)
        assert external.command(f"{HOST}:{port}", "status")["ok"] is True
        assert initializer.wait(60) == 0, initializer.stderr
    assert f"external channel on 127.0.0.1:{port}" in initializer.stderr
    assert "loopback only" in initializer.stderr


# ---------------------------------------------------------------------------
# Crash recovery: only a proven worker makes the cluster start again
# ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("private", [True, False], ids=["drawn-secret", "no-secret"])
def test_a_forged_rejoin_does_not_restart_a_resilient_cluster(
    tmp_path: Path, app_env, free_port, slow_input: Path, private: bool
) -> None:
    """A stranger joining under a worker's name: refused for want of the
    drawn secret, or (no private directory, so no secret) admitted as a
    re-join that, unproven, restarts nothing."""
    control = f"{HOST}:{free_port()}"
    out = tmp_path / "out.txt"
    common = ("--input", str(slow_input), "--output", str(out), *BATCH)
    env = _no_secret_env(app_env, _runtime_dir(tmp_path, private))
    with processes(tmp_path, app_env) as start:
        initializer = start("initializer", CLUSTER_SLOW, *common, "-t", "-w", "2",
                            "-c", control, "-d", f"{HOST}:{free_port()}",
                            "-r", str(tmp_path / "r0"), env=env)
        worker = start("w2", CLUSTER_SLOW, *common, "-w", "2", "-c", control, "-n", "w2",
                       "-r", str(tmp_path / "r1"), env=env)
        worker.wait_for("running application", timeout=30)
        for _ in range(3):
            answers = _forged_join(control, "w2", "Slow Count", timeout=5)
            assert not _started(answers), answers
        assert worker.wait(60) == 0, worker.stderr
        assert initializer.wait(60) == 0, initializer.stderr
    assert initializer.stderr.count("running application") == 1, initializer.stderr
    assert "started again" not in initializer.stderr
    if private:
        assert "wrong cluster secret" in initializer.stderr
    else:
        assert "asked to join again while it is connected" in initializer.stderr


# ---------------------------------------------------------------------------
# A grow whose worker never connects is rolled back
# ---------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_a_grow_whose_worker_never_connects_is_rolled_back(tmp_path: Path, app_env,
                                                           free_port) -> None:
    """A worker that proves the secret (here the one a loopback initializer
    drew) but never connects its data address: the cluster goes back to
    what it was, and every record is counted once."""
    source = tmp_path / "lines.txt"
    source.write_text("".join(f"k{i % 17}\n" for i in range(3000)))
    out = tmp_path / "out.txt"
    port = free_port()
    control = f"{HOST}:{port}"
    runtime = _runtime_dir(tmp_path)
    with processes(tmp_path, app_env) as start:
        initializer = start("initializer", CLUSTER_SLOW, "--input", str(source), "--output",
                            str(out), *BATCH, "-t", "-w", "1", "-c", control,
                            env=_no_secret_env(app_env, runtime))
        initializer.wait_for("running application", timeout=30)
        secret = (runtime / f"wallaroo-{os.getuid()}" / f"cluster-{port}.secret").read_text()
        answers: list = []
        stranger = threading.Thread(
            target=lambda: answers.extend(
                _forged_join(control, "ghost", "Slow Count", 90, secret=secret)),
            daemon=True,
        )
        stranger.start()
        assert initializer.wait(150) == 0, initializer.stderr
        stranger.join(30)
    assert "rolled back the grow: 'ghost' never connected" in initializer.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 3000
    last = {line.split()[0]: int(line.split()[1]) for line in lines}
    assert last == {f"k{k}": 3000 // 17 + (k < 3000 % 17) for k in range(17)}
