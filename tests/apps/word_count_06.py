"""Word count in the Wallaroo 0.6 pipeline style: split, key_by word, count.

    python -m wallaroo word_count_06.py --input text.txt --output counts.txt

Each output line is ``word count`` (the word's count so far).
"""

import argparse

import wallaroo


def application_setup(args):
    parser = argparse.ArgumentParser("word count 0.6")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    opts, _ = parser.parse_known_args(args)

    lines = wallaroo.source("Lines", wallaroo.FileSourceConfig(opts.input, decode))
    pipeline = (
        lines.to(split)
        .key_by(extract_word)
        .to(count_word)
        .to_sink(wallaroo.FileSinkConfig(opts.output, encode))
    )
    return wallaroo.build_application("Word Count 0.6", pipeline)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return bs.decode("utf-8")


@wallaroo.computation_multi(name="split")
def split(line):
    return [w for w in line.lower().split() if w.isalpha()] or None


@wallaroo.key_extractor
def extract_word(word):
    return word


class WordTotal:
    def __init__(self):
        self.count = 0


@wallaroo.state_computation(name="count word", state=WordTotal)
def count_word(word, total):
    total.count += 1
    return (word, total.count)


@wallaroo.encoder
def encode(pair):
    return "{} {}\n".format(*pair)
