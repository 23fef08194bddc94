"""The original star leaders app read from a file: the commands the start-up and
cost benchmarks run (engine with 1 or N workers, bare loop of the same
functions) and the generated events they read (those of ``star_leaders.py``).
"""

from __future__ import annotations

import json
import os
import sys

from star_leaders import EXAMPLE, TESTS


def write_events(path: str, count: int) -> None:
    """``count`` generated events (seed 5, as ``star_leaders.py``), one JSON per line."""
    from wallaroo.demo.generator import generate_events

    with open(path, "w") as out:
        for event in generate_events(seed=5, count=count):
            out.write(json.dumps(event) + "\n")


def bytecode_env(cache: str) -> dict:
    """The environment with bytecode caching on, in ``cache`` (as an installed
    package has its ``.pyc``): this environment may set PYTHONDONTWRITEBYTECODE,
    which would compile every module of the package from source at each start."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    return dict(env, PYTHONPYCACHEPREFIX=cache)


def engine(input_path: str, output_path: str, workers: int = 1) -> list:
    """``python -m wallaroo star_leaders`` from ``input_path`` to ``output_path``
    (metrics on, the default)."""
    command = [sys.executable, "-m", "wallaroo", "star_leaders", "--input", input_path,
               "--output", output_path, "--log-level", "warning"]
    return command + (["--workers", str(workers)] if workers > 1 else [])


def bare(input_path: str) -> list:
    """The bare loop (``tests/star_leaders_direct.py``): the app's functions called
    in a plain loop; prints one line per leaderboard."""
    return [sys.executable, os.path.join(TESTS, "star_leaders_direct.py"), EXAMPLE, "file",
            input_path]
