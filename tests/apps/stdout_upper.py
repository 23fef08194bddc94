"""Upper-case each line of a file to standard output; lines starting with
``#`` are dropped.

    python -m wallaroo stdout_upper.py --input lines.txt
"""

import argparse

import wallaroo


def application_setup(args):
    parser = argparse.ArgumentParser("stdout upper")
    parser.add_argument("--input", required=True)
    opts, _ = parser.parse_known_args(args)

    ab = wallaroo.ApplicationBuilder("Upper to stdout")
    ab.new_pipeline("upper", wallaroo.FileSourceConfig(opts.input, decoder))
    ab.to(drop_comments)
    ab.to(upper)
    ab.to_sink(wallaroo.StdoutSinkConfig(encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return bs.decode("utf-8")


@wallaroo.computation(name="drop comments")
def drop_comments(line):
    if line.startswith("#"):
        return None
    return line


@wallaroo.computation(name="upper")
def upper(line):
    return line.upper()


@wallaroo.encoder
def encoder(line):
    return line + "\n"
