"""Clicks per page in 10 s event-time windows, 2 s allowed lateness (beyond 0.6).

    python -m wallaroo click_windows_06.py --input EVENTS.jsonl --output OUT.jsonl

Each input line is ``{"id", "page", "t"}``; ``t`` goes to the engine as the
test wrote it (float seconds, or an int of seconds: a user's mistake). Each
window outputs a JSON line ``{"page", "start" (ns), "ids"}``.
"""

import json

import wallaroo


def application_setup(args):
    events = args[args.index("--input") + 1]
    output = args[args.index("--output") + 1]
    clicks = wallaroo.source("clicks", wallaroo.FileSourceConfig(events, decode))
    pipeline = (
        clicks.key_by(page)
        .to(
            wallaroo.range_windows(wallaroo.seconds(10))
            .with_event_time(event_time)
            .with_allowed_lateness(wallaroo.seconds(2))
            .over(Clicks)
        )
        .to_sink(wallaroo.FileSinkConfig(output, encode))
    )
    return wallaroo.build_application("late clicks", pipeline)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return json.loads(bs)


@wallaroo.key_extractor
def page(event):
    return event["page"]


@wallaroo.timestamp_extractor
def event_time(event):
    return event["t"]


class Clicks(wallaroo.Aggregation):
    def initial_accumulator(self):
        return []

    def update(self, event, acc):
        acc.append(event["id"])

    def combine(self, a, b):
        return a + b

    def output(self, key, acc):
        raise AssertionError("output_window is defined: output is not called")

    def output_window(self, key, acc, start, end):
        return {"page": key, "start": start, "ids": sorted(acc)}


@wallaroo.encoder
def encode(window):
    return json.dumps(window) + "\n"
