"""Start-up (issue 20): a run imports what it needs only, and an application's
modules are compiled once, not at every start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import app_env

#: Modules a run of one process must not import: the cluster's membership
#: code, the progress line (no terminal here), the application compiler once
#: its code is cached, and heavy standard modules only those pulled in.
NEVER_IN_ONE_PROCESS = (
    "wallaroo.cluster.membership",
    "wallaroo.cluster.initializer",
    "wallaroo.cluster.member",
    "wallaroo.cluster.supervisor",
    "wallaroo.cluster.auth",
    "wallaroo.cluster.wire",
    "wallaroo.progress",
    "dataclasses",
    "inspect",
)
COMPILER = ("wallaroo.py2compat.compiler", "wallaroo.py2compat.rewrite", "ast")


def _imported(stderr: str) -> set:
    """Module names in ``python -X importtime`` output."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "cumulative" not in line
    }


@pytest.mark.timeout(120)
def test_one_process_imports_no_cluster_code_and_compiles_the_app_once(tmp_path: Path) -> None:
    from wallaroo.demo.generator import generate_events

    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for e in generate_events(seed=3, count=300)))
    env = dict(app_env(), WALLAROO_CACHE_DIR=str(tmp_path / "cache"), PYTHONPROFILEIMPORTTIME="1")
    outputs, imports = [], []
    for run in ("first", "second"):
        output = tmp_path / f"{run}.jsonl"
        done = subprocess.run(
            [sys.executable, "-m", "wallaroo", "star_leaders", "--input", str(source),
             "--output", str(output), "--log-level", "warning"],
            env=env, capture_output=True, text=True, timeout=100,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(output.read_bytes())
        imports.append(_imported(done.stderr))
    first, second = imports
    assert "wallaroo.runner" in first and "repo_metadata" in first  # the listing is whole
    for found in imports:
        assert not found & set(NEVER_IN_ONE_PROCESS), sorted(found & set(NEVER_IN_ONE_PROCESS))
    assert set(COMPILER) <= first  # compiled at the first start ...
    assert not second & set(COMPILER), sorted(second & set(COMPILER))  # ... not again
    assert outputs[0] == outputs[1] and outputs[0].count(b"\n") > 10


def test_cluster_names_are_imported_on_first_use() -> None:
    """``wallaroo.cluster`` is light; its names still import from it."""
    code = (
        "import sys, wallaroo.cluster as c\n"
        "print('wallaroo.cluster.membership' in sys.modules)\n"
        "from wallaroo.cluster import Cluster, ClusterSetupError, supervise\n"
        "print(Cluster.__module__, ClusterSetupError.__module__, supervise.__module__)\n"
        "print(c.Cluster is Cluster)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=app_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == [
        "False",
        "wallaroo.cluster.membership wallaroo.cluster.wire wallaroo.cluster.supervisor",
        "True",
    ]
