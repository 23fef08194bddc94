"""The benchmark pipeline: JSON decode -> filter -> partitioned state -> JSON encode.

Star-leaders shaped: GitHub-like events, keep WatchEvents, count stars per
repo in 10 partitions, emit the repo's new count. The plain functions are
called by the bare Python loop in ``bare_loop.py``; the application wraps the
same functions with the wallaroo decorators.
"""

from __future__ import annotations

import json
import os
import zlib

import wallaroo

PARTITIONS = list(range(10))
#: Event types the filter keeps (env BENCH_KEEP, comma-separated; "*" keeps all).
KEEP_TYPES = frozenset(os.environ.get("BENCH_KEEP", "WatchEvent").split(","))
KEEP_ALL = "*" in KEEP_TYPES


class RepoStars:
    """Stars per repo of one partition."""

    def __init__(self) -> None:
        self.stars: dict = {}


def decode(data: bytes) -> dict:
    return json.loads(data)


def keep_watch_events(event: dict):
    return event if KEEP_ALL or event["type"] in KEEP_TYPES else None


def repo_partition(event: dict) -> int:
    return zlib.crc32(event["repo"]["name"].encode()) % 10


def count_stars(event: dict, state: RepoStars):
    repo = event["repo"]["name"]
    stars = state.stars.get(repo, 0) + 1
    state.stars[repo] = stars
    return {"repo": repo, "stars": stars, "at": event["created_at"]}, True


def encode(update: dict) -> str:
    return json.dumps(update) + "\n"


DECODER = wallaroo.decoder(header_length=4, length_fmt=">I")(decode)
KEEP = wallaroo.computation(name="keep watch events")(keep_watch_events)
PARTITION = wallaroo.partition(repo_partition)
COUNT = wallaroo.state_computation(name="count stars")(count_stars)
ENCODER = wallaroo.encoder(encode)


def application_setup(args: list) -> list:
    input_path = args[args.index("--bench-input") + 1]
    output_path = args[args.index("--bench-output") + 1]
    builder = wallaroo.ApplicationBuilder("bench star pipeline")
    builder.new_pipeline("events", wallaroo.FileSourceConfig(input_path, DECODER))
    builder.to(KEEP)
    builder.to_state_partition(COUNT, RepoStars, "repo stars", PARTITION, PARTITIONS)
    builder.to_sink(wallaroo.FileSinkConfig(output_path, ENCODER))
    return builder.build()
