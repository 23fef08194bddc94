# A Wallaroo 0.4.2 application written in Python 2 (print statement, old
# except syntax, backticks, <>, octal and long literals, exec statement).
#
#   python -m wallaroo tests/py2apps/legacy --input IN --output OUT
#
# Input lines: "NAME COUNT". For each line with a count other than 0, one
# output record: see codec.encode.
import sys

import wallaroo

import codec
from tally import Tally
from textutil import shout

exec "SCALE = 1"
PERMS = 0755
assert SCALE == 1L and PERMS == 493


def application_setup(args):
    input_path = output_path = None
    for i in xrange(len(args)):
        if args[i] == "--input":
            input_path = args[i + 1]
        elif args[i] == "--output":
            output_path = args[i + 1]
    print "legacy app: reading", input_path
    ab = wallaroo.ApplicationBuilder("legacy")
    ab.new_pipeline("counts", wallaroo.FileSourceConfig(input_path, codec.decode))
    ab.to_stateful(count, Tally, "tally")
    ab.to(shout_name)
    ab.to_sink(wallaroo.FileSinkConfig(output_path, codec.encode))
    return ab.build()


def parse_count(text):
    try:
        return long(text) * SCALE
    except ValueError, e:
        print >>sys.stderr, "legacy app: bad count %s: %s" % (`text`, e)
        return 0L


@wallaroo.state_computation(name="count")
def count(data, state):
    n = parse_count(data["count"])
    if n <> 0:
        state.add(data["name"], n, data["initial"])
        out = {"name": data["name"], "total": state.total(),
               "initial": data["initial"], "report": state.report()}
        if out.has_key("report"):
            return (out, True)
    return (None, False)


@wallaroo.computation(name="shout")
def shout_name(out):
    out["name"] = shout(out["name"])
    return out
