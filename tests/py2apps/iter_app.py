# Compiles as Python 3 and fails on Python 3 only at run time, on
# dict.iteritems() (like the star leaders' repo_metadata.py).
#
#   python -m wallaroo tests/py2apps/iter_app.py --input IN --output OUT
#
# Input lines: words. Output lines: "WORD COUNT WORDS_SEEN" per word.
import argparse

import wallaroo


def application_setup(args):
    parser = argparse.ArgumentParser("iter app")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    opts, _ = parser.parse_known_args(args)
    ab = wallaroo.ApplicationBuilder("iter app")
    ab.new_pipeline("words", wallaroo.FileSourceConfig(opts.input, decode))
    ab.to_stateful(count, Counts, "counts")
    ab.to_sink(wallaroo.FileSinkConfig(opts.output, encode))
    return ab.build()


class Counts(object):
    def __init__(self):
        self.counts = {}

    def add(self, word):
        self.counts[word] = self.counts.get(word, 0) + 1
        seen = 0
        for _word, n in self.counts.iteritems():
            seen += n
        return self.counts[word], seen


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return bs.decode("utf-8").strip()


@wallaroo.state_computation(name="count")
def count(word, state):
    n, seen = state.add(word)
    return ((word, n, seen), True)


@wallaroo.encoder
def encode(data):
    return "%s %d %d\n" % data
