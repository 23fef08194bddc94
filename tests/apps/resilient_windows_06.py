"""Count windows that must survive kill -9 (Wallaroo 0.6.1 style), for the
crash-recovery test of windows.

    python -m wallaroo resilient_windows_06.py --input records.txt --output windows.txt \
        [--size 7] [--pause-every N --pause-ms MS [--hold-file PATH]] -r DIR

Input lines ``key seq``. Records are keyed by ``key`` and collected in count
windows of ``--size``; each window outputs ``key seq,seq,...`` in arrival
order. The partial-window timer (every 5 s in 0.6.1) is switched off here so
that a window's content depends only on the records (the last partial window
of each key comes out at the end of input).
"""

import argparse

import wallaroo
import wallaroo.windows
from pacing import Pacer

# Test-only: no partial windows on the 5 s timer (see the docstring).
wallaroo.windows.CountStage.period = 10**18

PACER = Pacer()


def application_setup(args):
    parser = argparse.ArgumentParser("resilient windows")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--size", type=int, default=7)
    Pacer.add_arguments(parser)
    opts, _ = parser.parse_known_args(args)
    PACER.configure(opts)

    records = wallaroo.source("Records", wallaroo.FileSourceConfig(opts.input, decode))
    pipeline = (
        records.to(pause)
        .key_by(record_key)
        .to(wallaroo.count_windows(opts.size).over(Collect))
        .to_sink(wallaroo.FileSinkConfig(opts.output, encode))
    )
    return wallaroo.build_application("Resilient windows", pipeline)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    key, seq = bs.decode().split()
    return (key, seq)


@wallaroo.computation(name="pause")
def pause(record):
    PACER.tick()
    return record


@wallaroo.key_extractor
def record_key(record):
    return record[0]


class Collect(wallaroo.Aggregation):
    def initial_accumulator(self):
        return []

    def update(self, record, acc):
        acc.append(record[1])

    def combine(self, a, b):
        return a + b

    def output(self, key, acc):
        return f"{key} {','.join(acc)}\n" if acc else None


@wallaroo.encoder
def encode(line):
    return line
