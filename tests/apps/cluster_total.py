"""stateful_total with its own serialize/deserialize instrumented, for the
cluster tests.

    python -m wallaroo cluster_total.py --input ints.txt --output totals.txt \
        --calls-dir DIR [--complex]

The pipeline, the state and the JSON ``serialize``/``deserialize`` are those
of ``stateful_total.py``. Every call of this module's ``serialize`` or
``deserialize`` is logged to ``DIR/<pid>.log`` (one line per call: ``S`` or
``D`` and the value as JSON), so a test can tell that the engine used the
application's functions for records crossing workers, and which values
crossed.

With ``--complex`` an input line ending in ``j`` (``3j``) decodes to a
``complex``: the running total works on one worker, but the JSON serializer
cannot encode it, so a record crossing workers must fail the run clearly.
"""

import argparse
import json
import os

import stateful_total
import wallaroo

SETTINGS = {"calls_dir": None, "complex": False}


def application_setup(args):
    parser = argparse.ArgumentParser("cluster total")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--calls-dir", required=True)
    parser.add_argument("--complex", action="store_true")
    opts, _ = parser.parse_known_args(args)
    SETTINGS["calls_dir"] = opts.calls_dir
    SETTINGS["complex"] = opts.complex

    ab = wallaroo.ApplicationBuilder("Running Total")
    ab.new_pipeline("total", wallaroo.FileSourceConfig(opts.input, decoder))
    ab.to_stateful(stateful_total.add_to_total, stateful_total.RunningTotal, "running total")
    ab.to_sink(wallaroo.FileSinkConfig(opts.output, encoder))
    ab.done()
    return ab.build()


def _log_call(kind, value):
    path = os.path.join(SETTINGS["calls_dir"], f"{os.getpid()}.log")
    if isinstance(value, stateful_total.RunningTotal):
        value = {"RunningTotal": [value.total, value.count]}
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"{kind} {json.dumps(value, default=repr)}\n")


def serialize(obj):
    _log_call("S", obj)
    return stateful_total.serialize(obj)


def deserialize(data):
    obj = stateful_total.deserialize(data)
    _log_call("D", obj)
    return obj


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    text = bs.decode("ascii")
    if SETTINGS["complex"] and text.endswith("j"):
        return complex(text)
    return int(text)


@wallaroo.encoder
def encoder(data):
    count, total = data
    return f"{count} {total}\n"
