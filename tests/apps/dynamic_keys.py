"""State partitions whose keys are not declared (dynamic keys).

    python -m wallaroo dynamic_keys.py --input records.txt --output out.txt

Input lines ``name,group,n``. Three state steps count records per key:
by ``name`` (str keys, no key list), by ``(name, group)`` (tuple keys, no key
list) and by ``n`` with ``to_state_partition_u64`` (int keys; only 0 is
declared). Wallaroo 0.4.2 dropped records whose key was not declared; this
engine creates the state of a new key on first use.

Output lines: ``name group n by_name by_pair by_n``.
"""

import argparse

import wallaroo


def application_setup(args):
    parser = argparse.ArgumentParser("dynamic keys")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    opts, _ = parser.parse_known_args(args)

    ab = wallaroo.ApplicationBuilder("Dynamic Keys")
    ab.new_pipeline("dynamic", wallaroo.FileSourceConfig(opts.input, decoder))
    ab.to_state_partition(count_by_name, Counter, "by name", name_partition)
    ab.to_state_partition(count_by_pair, Counter, "by pair", pair_partition, [])
    ab.to_state_partition_u64(count_by_n, Counter, "by n", n_partition, [0])
    ab.to_sink(wallaroo.FileSinkConfig(opts.output, encoder))
    return ab.build()


class Counter:
    def __init__(self):
        self.count = 0


class Record:
    def __init__(self, name, group, n):
        self.name = name
        self.group = group
        self.n = n
        self.counts = []


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    name, group, n = bs.decode("utf-8").split(",")
    return Record(name, group, int(n))


@wallaroo.partition
def name_partition(record):
    return record.name


class PairPartitioner:
    """A plain object with a partition() method works as a partition function."""

    def partition(self, record):
        return (record.name, record.group)


pair_partition = PairPartitioner()


@wallaroo.partition
def n_partition(record):
    return record.n


def _count(record, state):
    state.count += 1
    record.counts.append(state.count)
    return (record, True)


@wallaroo.state_computation(name="count by name")
def count_by_name(record, state):
    return _count(record, state)


@wallaroo.state_computation(name="count by pair")
def count_by_pair(record, state):
    return _count(record, state)


@wallaroo.state_computation(name="count by n")
def count_by_n(record, state):
    return _count(record, state)


@wallaroo.encoder
def encoder(record):
    counts = " ".join(str(c) for c in record.counts)
    return f"{record.name} {record.group} {record.n} {counts}\n"
