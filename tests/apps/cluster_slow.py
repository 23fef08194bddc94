"""A slow keyed count, for the cluster failure tests: each record sleeps in a
stateless step, then is counted in a state partitioned by its text.

    python -m wallaroo cluster_slow.py --input lines.txt --output out.txt \
        [--sleep 0.01]

Output lines: ``text count`` (the count of that text so far).
"""

import argparse
import time

import wallaroo

SETTINGS = {"sleep": 0.01}


def application_setup(args):
    parser = argparse.ArgumentParser("cluster slow")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--sleep", type=float, default=0.01)
    opts, _ = parser.parse_known_args(args)
    SETTINGS["sleep"] = opts.sleep

    ab = wallaroo.ApplicationBuilder("Slow Count")
    ab.new_pipeline("slow", wallaroo.FileSourceConfig(opts.input, decoder))
    ab.to(slow)
    ab.to_state_partition(count, Counter, "counts", partition)
    ab.to_sink(wallaroo.FileSinkConfig(opts.output, encoder))
    return ab.build()


class Counter:
    def __init__(self):
        self.count = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return bs.decode("utf-8")


@wallaroo.computation(name="sleep a little")
def slow(text):
    time.sleep(SETTINGS["sleep"])
    return text


@wallaroo.partition
def partition(text):
    return text


@wallaroo.state_computation(name="count")
def count(text, state):
    state.count += 1
    return (f"{text} {state.count}", True)


@wallaroo.encoder
def encoder(data):
    return data + "\n"
