"""The extension's type stub (python/wallaroo/_engine.pyi) matches the module."""

from __future__ import annotations

import subprocess
import sys


def test_engine_stub_matches_the_extension() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "wallaroo._engine"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout
