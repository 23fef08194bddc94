"""Votes per letter in the Wallaroo 0.5 style: dynamic partition keys (no key
list), a generator source, to_sinks, the 3-tuple encoder shape.

    python -m wallaroo alphabet_05.py --output OUT [--copy OUT2] [--votes N]

The generator yields ``(i, letter)`` for N votes cycling over ``abc``; each
output line is ``letter total``; ``--copy`` writes every output a second time,
upper-cased, to another file.
"""

import argparse

import wallaroo


def application_setup(args):
    parser = argparse.ArgumentParser("alphabet 0.5")
    parser.add_argument("--output", required=True)
    parser.add_argument("--copy")
    parser.add_argument("--votes", type=int, default=30)
    opts, _ = parser.parse_known_args(args)

    ab = wallaroo.ApplicationBuilder("Alphabet 0.5")
    ab.new_pipeline("Votes", wallaroo.GenSourceConfig(Votes(opts.votes)))
    ab.to_state_partition(add_votes, LetterTotal, "letter totals", letter)
    sinks = [wallaroo.FileSinkConfig(opts.output, encode)]
    if opts.copy:
        sinks.append(wallaroo.FileSinkConfig(opts.copy, encode_upper))
    ab.to_sinks(sinks)
    return ab.build()


class Votes:
    def __init__(self, n):
        self.n = n

    def initial_value(self):
        return (0, "a")

    def apply(self, previous):
        i = previous[0] + 1
        return (i, "abc"[i % 3]) if i < self.n else None


class LetterTotal:
    def __init__(self):
        self.total = 0


@wallaroo.partition
def letter(vote):
    return vote[1]


@wallaroo.state_computation(name="add votes")
def add_votes(vote, total):
    total.total += 1
    return ((vote[1], total.total), True)


@wallaroo.encoder
def encode(pair):
    return ("{} {}\n".format(*pair), None, None)


@wallaroo.encoder
def encode_upper(pair):
    return f"{pair[0].upper()} {pair[1]}\n"
