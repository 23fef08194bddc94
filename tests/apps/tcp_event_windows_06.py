"""Sliding windows on event time over TCP (Wallaroo 0.6 style with this
engine's event-time options); the source stays open, so windows the watermark
has not passed stay open.

    python -m wallaroo tcp_event_windows_06.py --in HOST:PORT --output windows.txt \
        [--range 100 --slide 50 --lateness 20] [--dead-letter late.jsonl]

Input frames (``>I`` length header) hold ``key event_time_ms id``. Records are
keyed by ``key`` and placed by their event time in windows of ``--range`` ms
starting every ``--slide`` ms; an event may come ``--lateness`` ms behind the
watermark. Each window outputs a line ``key start_ms id,id,...`` (ids sorted).
"""

import argparse

import wallaroo

MS = wallaroo.milliseconds(1)


def application_setup(args):
    parser = argparse.ArgumentParser("TCP event windows")
    parser.add_argument("--output", required=True)
    parser.add_argument("--range", type=int, default=100)
    parser.add_argument("--slide", type=int, default=50)
    parser.add_argument("--lateness", type=int, default=20)
    opts, _ = parser.parse_known_args(args)
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]

    windows = (
        wallaroo.range_windows(wallaroo.milliseconds(opts.range))
        .with_slide(wallaroo.milliseconds(opts.slide))
        .with_allowed_lateness(wallaroo.milliseconds(opts.lateness))
        .with_event_time(event_time)
        .with_idle_timeout(wallaroo.minutes(10))
        .over(Ids)
    )
    events = wallaroo.source("Events", wallaroo.TCPSourceConfig(in_host, in_port, decode))
    pipeline = (
        events.key_by(event_key)
        .to(windows)
        .to_sink(wallaroo.FileSinkConfig(opts.output, encode))
    )
    return wallaroo.build_application("TCP event windows", pipeline)


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
        acc.append(event[2])

    def combine(self, a, b):
        return a + b

    def output(self, key, acc):
        return None

    def output_window(self, key, acc, start, end):
        return f"{key} {start // MS} {','.join(sorted(acc, key=int))}\n"


@wallaroo.encoder
def encode(line):
    return line
