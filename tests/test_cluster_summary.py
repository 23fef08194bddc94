"""Every worker of a cluster logs its own summary: its lines name the worker,
so the worker that reads no file (``0 in``) and delivers nothing to a file sink
(``0 delivered``) is not taken for a run that lost its records."""

from __future__ import annotations

import re
from pathlib import Path

APP = Path(__file__).resolve().parent / "apps" / "word_count_06.py"


def test_a_cluster_summary_names_each_worker(run_app, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the cat the hat\n" * 50)
    output = tmp_path / "counts.txt"
    result = run_app(
        APP, "--input", str(text), "--output", str(output), "--workers", "2", timeout=120
    )
    assert result.returncode == 0, result.stderr
    summaries = re.findall(
        r"worker '([\w-]+)': pipeline 'Lines': (\d+) in, .* (\d+) delivered", result.stderr
    )
    assert sorted(name for name, _, _ in summaries) == ["worker-0", "worker-1"], result.stderr
    assert sum(int(n) for _, n, _ in summaries) == 50
    assert sum(int(d) for _, _, d in summaries) == 200 == len(output.read_text().splitlines())
    for name in ("worker-0", "worker-1"):
        assert f"worker '{name}': running application" in result.stderr
        assert f"worker '{name}': finished in" in result.stderr


def test_a_single_process_summary_has_no_worker_label(run_app, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("a b\n")
    result = run_app(APP, "--input", str(text), "--output", str(tmp_path / "out.txt"))
    assert result.returncode == 0, result.stderr
    assert "pipeline 'Lines': 1 in, 2 out" in result.stderr
    assert "worker '" not in result.stderr
