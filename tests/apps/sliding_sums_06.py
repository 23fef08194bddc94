"""Per-sensor sums in sliding windows over TCP (Wallaroo 0.6.1 style).

    python -m wallaroo sliding_sums_06.py --in HOST:PORT --out HOST:PORT

Input frames (``>I`` length header) hold ``sensor,value``; windows of 30 s
slide by 10 s with a 5 s delay, so every record counts in 3 windows, and
input has to be quiet for 140 s before the engine's timer fires what is held:
in a test, only the end of the run (SIGTERM) fires them. Output frames hold
``sensor,sum``.
"""

import struct

import wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    readings = wallaroo.source("readings", wallaroo.TCPSourceConfig(in_host, in_port, decode))
    pipeline = (
        readings.key_by(sensor)
        .to(
            wallaroo.range_windows(wallaroo.seconds(30))
            .with_slide(wallaroo.seconds(10))
            .with_delay(wallaroo.seconds(5))
            .over(Sum)
        )
        .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
    )
    return wallaroo.build_application("sliding sums", pipeline)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    name, value = bs.decode().split(",")
    return (name, int(value))


@wallaroo.key_extractor
def sensor(reading):
    return reading[0]


class Sum(wallaroo.Aggregation):
    def initial_accumulator(self):
        return [0]

    def update(self, reading, acc):
        acc[0] += reading[1]

    def combine(self, a, b):
        return [a[0] + b[0]]

    def output(self, key, acc):
        return f"{key},{acc[0]}"


@wallaroo.encoder
def encode(line):
    payload = line.encode()
    return struct.pack(">I", len(payload)) + payload
