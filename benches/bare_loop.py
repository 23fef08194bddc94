"""The baseline: the benchmark pipeline's functions called by a plain Python loop."""

from __future__ import annotations

import star_pipeline as app


def run(input_path: str, output_path: str) -> int:
    """Read, decode, filter, update state, encode and write every line; return outputs."""
    states: dict = {}
    decode = app.decode
    keep = app.keep_watch_events
    partition = app.repo_partition
    count = app.count_stars
    encode = app.encode
    outputs = 0
    with open(input_path, "rb") as source, open(output_path, "w") as sink:
        for line in source:
            event = keep(decode(line.rstrip(b"\n")))
            if event is None:
                continue
            key = partition(event)
            state = states.get(key)
            if state is None:
                state = states[key] = app.RepoStars()
            update, _changed = count(event, state)
            if update is not None:
                sink.write(encode(update))
                outputs += 1
    return outputs
