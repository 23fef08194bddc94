"""Reads its input address with the argument helper: without --in argparse exits."""

import wallaroo


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(data):
    return data


def application_setup(args):
    host, port = wallaroo.tcp_parse_input_addrs(args)[0]
    return (
        wallaroo.ApplicationBuilder("needs in")
        .new_pipeline("p", wallaroo.TCPSourceConfig(host, port, decode))
        .done()
        .build()
    )
