"""Per-sensor totals in tumbling windows over TCP (Wallaroo 0.6.1 style).

    python -m wallaroo tcp_windows_06.py --in HOST:PORT --out HOST:PORT

Input frames (``>I`` length header) hold ``sensor value``; every window of
half a second outputs a frame ``sensor total count`` for each sensor with
records in it. The TCP source stays open, so windows come out on the engine's
timer once input goes quiet.
"""

import struct

import wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    readings = wallaroo.source(
        "Readings", wallaroo.TCPSourceConfig(in_host, in_port, decode, parallelism=2)
    )
    pipeline = (
        readings.key_by(sensor)
        .to(wallaroo.range_windows(wallaroo.milliseconds(500)).over(Total))
        .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
    )
    return wallaroo.build_application("TCP windows", pipeline)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    name, value = bs.decode().split()
    return (name, int(value))


@wallaroo.key_extractor
def sensor(reading):
    return reading[0]


class Total(wallaroo.Aggregation):
    def initial_accumulator(self):
        return {"total": 0, "count": 0}

    def update(self, reading, acc):
        acc["total"] += reading[1]
        acc["count"] += 1

    def combine(self, a, b):
        return {"total": a["total"] + b["total"], "count": a["count"] + b["count"]}

    def output(self, key, acc):
        if acc["count"]:
            return f"{key} {acc['total']} {acc['count']}"
        return None


@wallaroo.encoder
def encode(line):
    payload = line.encode()
    return struct.pack(">I", len(payload)) + payload
