"""Event-time windows whose aggregation's ``update`` raises on some records
(Wallaroo 0.6 style with this engine's event-time options); run it with
``--on-error skip`` to keep going past them.

    python -m wallaroo failing_update_06.py --input events.txt --output windows.txt \
        --on-error skip [--dead-letter errors.jsonl]

Input lines ``key event_time_ms id``; an id of ``bad`` makes ``update`` raise.
Tumbling windows of 100 ms on the epoch grid, no allowed lateness. Each window
outputs ``key start count:ids`` (``count`` is 0 for a window that fired
without records: none should).
"""

import wallaroo

MS = wallaroo.milliseconds(1)


def application_setup(args):
    import argparse

    parser = argparse.ArgumentParser("failing update")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    opts, _ = parser.parse_known_args(args)
    windows = (
        wallaroo.range_windows(wallaroo.milliseconds(100))
        .with_event_time(event_time)
        .over(Ids)
    )
    events = wallaroo.source("Events", wallaroo.FileSourceConfig(opts.input, decode))
    pipeline = (
        events.key_by(event_key)
        .to(windows)
        .to_sink(wallaroo.FileSinkConfig(opts.output, encode))
    )
    return wallaroo.build_application("Failing update", pipeline)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    key, ms, ident = bs.decode().split()
    return (key, int(ms), ident)


@wallaroo.key_extractor
def event_key(event):
    return event[0]


@wallaroo.timestamp_extractor
def event_time(event):
    return event[1] * MS


class Ids(wallaroo.Aggregation):
    def initial_accumulator(self):
        return []

    def update(self, event, acc):
        if event[2] == "bad":
            raise ValueError(f"cannot count {event!r}")
        acc.append(event[2])

    def combine(self, a, b):
        return a + b

    def output_window(self, key, acc, start, end):
        return f"{key} {start // MS} {len(acc)}:{','.join(acc)}\n"

    def output(self, key, acc):
        return f"{key} ? {len(acc)}:{','.join(acc)}\n"


@wallaroo.encoder
def encode(line):
    return line
