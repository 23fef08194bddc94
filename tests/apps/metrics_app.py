"""The metrics tests' application: numbers over TCP, odd ones dropped, a
running count per partition, one line out per even number.

    python -m wallaroo metrics_app.py --in HOST:PORT --output PATH

Input frames: a 4-byte big-endian length, then an ASCII integer. Anything
else fails to decode (bad input, ``decode_error``). The step ``keep even``
drops odd numbers (returns None); the state step ``count`` keeps a running
count per partition (``(n // 2) % 4``); the encoder writes ``n count`` lines.
"""

import argparse

import wallaroo

PARTITIONS = ["0", "1", "2", "3"]


def application_setup(args):
    parser = argparse.ArgumentParser("metrics app")
    parser.add_argument("--output", required=True)
    opts, _ = parser.parse_known_args(args)
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]

    ab = wallaroo.ApplicationBuilder("Metrics Test")
    ab.new_pipeline("numbers", wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    ab.to(keep_even)
    ab.to_state_partition(count, Count, "counts", partition, PARTITIONS)
    ab.to_sink(wallaroo.FileSinkConfig(opts.output, encoder))
    return ab.build()


class Count:
    def __init__(self):
        self.count = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return int(bs.decode("ascii"))


@wallaroo.computation(name="keep even")
def keep_even(n):
    return n if n % 2 == 0 else None


@wallaroo.partition
def partition(n):
    return str((n // 2) % 4)


@wallaroo.state_computation(name="count")
def count(n, state):
    state.count += 1
    return (n, state.count), True


@wallaroo.encoder
def encoder(data):
    return f"{data[0]} {data[1]}\n"
