"""A running total over integers in one state object (``to_stateful``).

    python -m wallaroo stateful_total.py --input ints.txt --output totals.txt

The module defines its own ``serialize``/``deserialize`` (JSON instead of
pickle), which the engine must use for data and state that leave a worker.
"""

import argparse
import json

import wallaroo


def application_setup(args):
    parser = argparse.ArgumentParser("stateful total")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    opts, _ = parser.parse_known_args(args)

    ab = wallaroo.ApplicationBuilder("Running Total")
    ab.new_pipeline("total", wallaroo.FileSourceConfig(opts.input, decoder))
    ab.to_stateful(add_to_total, RunningTotal, "running total")
    ab.to_sink(wallaroo.FileSinkConfig(opts.output, encoder))
    ab.done()
    return ab.build()


class RunningTotal:
    def __init__(self):
        self.total = 0
        self.count = 0


def serialize(obj):
    if isinstance(obj, RunningTotal):
        doc = {"RunningTotal": {"total": obj.total, "count": obj.count}}
    else:
        doc = {"value": obj}
    return json.dumps(doc).encode("utf-8")


def deserialize(data):
    doc = json.loads(data.decode("utf-8"))
    if "RunningTotal" in doc:
        state = RunningTotal()
        state.total = doc["RunningTotal"]["total"]
        state.count = doc["RunningTotal"]["count"]
        return state
    value = doc["value"]
    return tuple(value) if isinstance(value, list) else value


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return int(bs.decode("ascii"))


@wallaroo.state_computation(name="add to total")
def add_to_total(value, state):
    state.total += value
    state.count += 1
    return ((state.count, state.total), True)


@wallaroo.encoder
def encoder(data):
    count, total = data
    return f"{count} {total}\n"
