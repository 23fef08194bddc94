"""TCP in, TCP out: each payload upper-cased (``boom`` raises) and framed with a >I header.

``--decoder`` picks the decoder: ``struct`` (``@wallaroo.decoder``, raises on
the payload ``BAD``), ``duck`` (a hand-written class) or ``duck_bad`` (a
hand-written class whose ``payload_length`` raises on a header starting 0xFF).
"""

import struct

import wallaroo


class BadPayload(ValueError):
    pass


@wallaroo.decoder(header_length=4, length_fmt=">I")
def struct_decoder(data):
    if data == b"BAD":
        raise BadPayload("cannot decode BAD")
    return data


class DuckDecoder:
    """A decoder written by hand: only the three methods, no length_fmt()."""

    def header_length(self):
        return 4

    def payload_length(self, header):
        return struct.unpack(">I", header)[0]

    def decode(self, data):
        return data


class BadLengthDecoder(DuckDecoder):
    def payload_length(self, header):
        if header[:1] == b"\xff":
            raise ValueError("header starts with 0xff")
        return struct.unpack(">I", header)[0]


DECODERS = {"struct": struct_decoder, "duck": DuckDecoder(), "duck_bad": BadLengthDecoder()}


@wallaroo.computation(name="upper")
def upper(data):
    if data == b"boom":
        raise RuntimeError("upper cannot handle boom")
    return data.upper()


@wallaroo.encoder
def framed(data):
    return struct.pack(">I", len(data)) + data


def _flag(args, name, default):
    return args[args.index(name) + 1] if name in args else default


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    decoder = DECODERS[_flag(args, "--decoder", "struct")]
    return (
        wallaroo.ApplicationBuilder("tcp app")
        .new_pipeline("tcp in", wallaroo.TCPSourceConfig(in_host, in_port, decoder))
        .to(upper)
        .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, framed))
        .build()
    )
