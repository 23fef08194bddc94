"""Deterministic GitHub-like events for benchmarks (Zipf-ish repo popularity)."""

from __future__ import annotations

import json
import random

TYPES = ["WatchEvent"] * 5 + ["PushEvent"] * 3 + ["ForkEvent", "PullRequestEvent", "IssuesEvent"]


def write_events(path: str, count: int, repos: int = 50_000, seed: int = 7) -> None:
    """Write ``count`` JSON events, one per line, to ``path``."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(repos)]
    names = [f"owner{rank % 997}/repo{rank}" for rank in range(repos)]
    chosen = rng.choices(range(repos), weights=weights, k=count)
    with open(path, "w") as out:
        for i, repo in enumerate(chosen):
            hour, rest = divmod(i * 86400 // max(count, 1), 3600)
            minute, second = divmod(rest, 60)
            event = {
                "id": str(10_000_000 + i),
                "type": rng.choice(TYPES),
                "actor": {"id": rng.randrange(1_000_000), "login": f"user{rng.randrange(100_000)}"},
                "repo": {"id": repo, "name": names[repo]},
                "payload": {"action": "started"},
                "public": True,
                "created_at": f"2017-01-01T{hour % 24:02d}:{minute:02d}:{second:02d}Z",
            }
            out.write(json.dumps(event) + "\n")
