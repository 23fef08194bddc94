"""An application in a directory (APP/APP.py) importing a sibling module.

    python -m wallaroo path/to/dir_app --input lines.txt

Writes ``<prefix><line reversed>`` for each input line to standard output.
"""

import argparse

import wallaroo
from helper_mod import PREFIX, reverse


def application_setup(args):
    parser = argparse.ArgumentParser("dir app")
    parser.add_argument("--input", required=True)
    opts, _ = parser.parse_known_args(args)

    ab = wallaroo.ApplicationBuilder("Directory App")
    ab.new_pipeline("reverse", wallaroo.FileSourceConfig(opts.input, decoder))
    ab.to(reverse_line)
    ab.to_sink(wallaroo.StdoutSinkConfig(encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return bs.decode("utf-8")


@wallaroo.computation(name="reverse line")
def reverse_line(line):
    return PREFIX + reverse(line)


@wallaroo.encoder
def encoder(line):
    return line + "\n"
