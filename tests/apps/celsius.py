"""Celsius to Fahrenheit: a two-step stateless TCP application.

Input frames: a 4-byte big-endian length header, then a big-endian float64
(Celsius). Output frames: a 4-byte big-endian length (always 4), then the
Fahrenheit value as a big-endian float32.

    python -m wallaroo celsius.py --in 127.0.0.1:7010 --out 127.0.0.1:7002
"""

import struct

import wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    ab = wallaroo.ApplicationBuilder("Celsius to Fahrenheit")
    ab.new_pipeline("Celsius Conversion", wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    ab.to(multiply)
    ab.to(add)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return struct.unpack(">d", bs)[0]


@wallaroo.computation(name="multiply by 1.8")
def multiply(data):
    return data * 1.8


@wallaroo.computation(name="add 32")
def add(data):
    return data + 32


@wallaroo.encoder
def encoder(data):
    return struct.pack(">If", 4, data)
