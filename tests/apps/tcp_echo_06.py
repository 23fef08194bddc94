"""Echo over TCP with a limit on connections read at once (Wallaroo 0.6.1 style).

    python -m wallaroo tcp_echo_06.py --in HOST:PORT --out HOST:PORT [--parallelism N]

Every input frame (``>I`` length header) comes out unchanged.
"""

import argparse
import struct

import wallaroo


def application_setup(args):
    parser = argparse.ArgumentParser("tcp echo")
    parser.add_argument("--parallelism", type=int, default=10)
    opts, _ = parser.parse_known_args(args)
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    source = wallaroo.TCPSourceConfig(in_host, in_port, decode, parallelism=opts.parallelism)
    pipeline = wallaroo.source("Echo", source).to_sink(
        wallaroo.TCPSinkConfig(out_host, out_port, encode)
    )
    return wallaroo.build_application("TCP echo", pipeline)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return bs


@wallaroo.encoder
def encode(data):
    return struct.pack(">I", len(data)) + data
