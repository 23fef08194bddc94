"""Sliding windows on event time that keep late events (Wallaroo 0.6 style
with this engine's event-time options).

    python -m wallaroo event_windows_06.py --input events.txt --output windows.txt \
        [--range 100 --slide 50 --lateness 20] [--pause-every N --pause-ms MS [--hold-file PATH]] \
        [--dead-letter late.jsonl] [-r DIR]

Input lines ``key event_time_ms id``. Records are keyed by ``key`` and placed
by their event time (milliseconds) in windows of ``--range`` ms starting every
``--slide`` ms on the epoch grid; an event may come ``--lateness`` ms behind the
watermark. Each window with events outputs ``key id,id,...`` (ids sorted). Late
events go to the engine's dead-letter file.
"""

import argparse

import wallaroo
from pacing import Pacer

PACER = Pacer()
MS = wallaroo.milliseconds(1)


def application_setup(args):
    parser = argparse.ArgumentParser("event windows")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--range", type=int, default=100)
    parser.add_argument("--slide", type=int, default=50)
    parser.add_argument("--lateness", type=int, default=20)
    Pacer.add_arguments(parser)
    opts, _ = parser.parse_known_args(args)
    PACER.configure(opts)

    windows = (
        wallaroo.range_windows(wallaroo.milliseconds(opts.range))
        .with_slide(wallaroo.milliseconds(opts.slide))
        .with_allowed_lateness(wallaroo.milliseconds(opts.lateness))
        .with_event_time(event_time)
        .over(Ids)
    )
    events = wallaroo.source("Events", wallaroo.FileSourceConfig(opts.input, decode))
    pipeline = (
        events.to(pause)
        .key_by(event_key)
        .to(windows)
        .to_sink(wallaroo.FileSinkConfig(opts.output, encode))
    )
    return wallaroo.build_application("Event windows", pipeline)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    key, ms, ident = bs.decode().split()
    return (key, int(ms), ident)


@wallaroo.computation(name="pause")
def pause(event):
    PACER.tick()
    return event


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
        acc.append(event[2])

    def combine(self, a, b):
        return a + b

    def output(self, key, acc):
        return f"{key} {','.join(sorted(acc, key=int))}\n" if acc else None


@wallaroo.encoder
def encode(line):
    return line
