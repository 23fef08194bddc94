"""Word count: split lines into words, count each word in state partitioned by
its first letter.

    python -m wallaroo word_count.py --input text.txt --output counts.txt

Each output line is ``word count`` (the word's count so far).
"""

import argparse
import string

import wallaroo

PUNCTUATION = string.punctuation + " \t\r\n"


def application_setup(args):
    parser = argparse.ArgumentParser("word count")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    opts, _ = parser.parse_known_args(args)

    word_partitions = list(string.ascii_lowercase)
    word_partitions.append("!")

    ab = wallaroo.ApplicationBuilder("Word Count Application")
    ab.new_pipeline("Split and Count", wallaroo.FileSourceConfig(opts.input, decoder))
    ab.to_parallel(split)
    ab.to_state_partition(count_word, WordTotals, "word totals", partition, word_partitions)
    ab.to_sink(wallaroo.FileSinkConfig(opts.output, encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return bs.decode("utf-8")


@wallaroo.computation_multi(name="split into words")
def split(data):
    words = []
    for word in data.lower().split():
        clean_word = word.strip(PUNCTUATION)
        if clean_word:
            words.append(clean_word)
    return words


@wallaroo.state_computation(name="count word")
def count_word(word, word_totals):
    word_totals.update(word)
    return (word_totals.get_count(word), True)


class WordTotals:
    def __init__(self):
        self.word_totals = {}

    def update(self, word):
        self.word_totals[word] = self.word_totals.get(word, 0) + 1

    def get_count(self, word):
        return WordCount(word, self.word_totals[word])


class WordCount:
    def __init__(self, word, count):
        self.word = word
        self.count = count


@wallaroo.partition
def partition(data):
    if "a" <= data[0] <= "z":
        return data[0]
    return "!"


@wallaroo.encoder
def encoder(data):
    return f"{data.word} {data.count}\n"
