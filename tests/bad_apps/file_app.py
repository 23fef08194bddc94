"""File in, file out, with switchable decoder, step and encoder.

Flags: ``--input PATH``, ``--output PATH``, ``--framing lines|length``,
``--decoder raw|json|none_for_null``, ``--step pass|explode|repr``,
``--encoder line|str|none|int``.
"""

import json

import wallaroo


@wallaroo.decoder(header_length=4, length_fmt=">I")
def raw_decoder(data):
    return data


@wallaroo.decoder(header_length=4, length_fmt=">I")
def json_decoder(data):
    return json.loads(data)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def none_for_null(data):
    if data == b"null-me":
        return None
    return data


DECODERS = {"raw": raw_decoder, "json": json_decoder, "none_for_null": none_for_null}


@wallaroo.computation(name="pass")
def pass_through(data):
    return data


@wallaroo.computation(name="explode")
def explode(data):
    if data == b"boom":
        raise RuntimeError("cannot handle boom")  # the line the traceback shows
    return data


@wallaroo.computation(name="show")
def show(data):
    return repr(data).encode()


STEPS = {"pass": pass_through, "explode": explode, "repr": show}


@wallaroo.encoder
def line_encoder(data):
    if not isinstance(data, bytes):
        data = json.dumps(data, sort_keys=True).encode()
    return data + b"\n"


@wallaroo.encoder
def str_encoder(data):
    return data.decode() + " \u00e9\u20ac\n"


@wallaroo.encoder
def none_encoder(data):
    return None


@wallaroo.encoder
def int_encoder(data):
    return 42


ENCODERS = {"line": line_encoder, "str": str_encoder, "none": none_encoder, "int": int_encoder}


def _flag(args, name, default=None):
    return args[args.index(name) + 1] if name in args else default


def application_setup(args):
    source = wallaroo.FileSourceConfig(
        _flag(args, "--input"),
        DECODERS[_flag(args, "--decoder", "raw")],
        framing=_flag(args, "--framing", "lines"),
    )
    encoder = ENCODERS[_flag(args, "--encoder", "line")]
    return (
        wallaroo.ApplicationBuilder("file app")
        .new_pipeline("file in", source)
        .to(STEPS[_flag(args, "--step", "pass")])
        .to_sink(wallaroo.FileSinkConfig(_flag(args, "--output"), encoder))
        .build()
    )
