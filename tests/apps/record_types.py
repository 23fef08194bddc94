"""Records of many Python types through a state step, for the cluster's
record codec: whatever way a record crosses workers (marshal for plain data,
pickle otherwise), the state step must see the same types and values as on
one worker, where nothing is serialized.

    python -m wallaroo record_types.py --input numbers.txt --output out.txt

Input lines: integers. The decoder turns line ``n`` into one of the records
of ``make_record``; the state step (partitioned by ``n % 4``) writes ``n``
and a description of the record's exact types and values.
"""

import argparse
from collections import OrderedDict

import wallaroo


class Tagged(dict):
    """A dict subclass: must come back as itself, not as a dict."""


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y


def make_record(n):
    # Runs of 100 records of one kind: batches of only plain data exist (a
    # batch is marshalled only when every record in it is plain).
    kind = (n // 100) % 12
    if kind == 0:
        return {"id": str(n), "type": "WatchEvent", "repo": {"id": n, "name": "o/r"},
                "public": True, "score": 1.5, "none": None, "tags": ["a", "b"]}
    if kind == 1:
        return {"raw": bytearray(b"abc"), "n": n}
    if kind == 2:
        return OrderedDict([("b", 1), ("a", n)])
    if kind == 3:
        return Tagged(n=n)
    if kind == 4:
        return (n, 2**100 + n, -0.0, float("inf"), None, False, b"\x00\xff", "ünï")
    if kind == 5:
        return {"set": {1, 2, 3}, "frozen": frozenset({"x"})}
    if kind == 6:
        nested = n
        for _ in range(40):
            nested = [nested]
        return nested
    if kind == 7:
        loop = [n]
        loop.append(loop)
        return loop
    if kind == 8:
        return Point(n, -n)
    if kind == 9:
        shared = [n]
        return {"first": shared, "second": shared}
    if kind == 10:
        return {1: "int key", (1, "t"): "tuple key", b"k": "bytes key", None: n}
    return [True, 1, 1.0, "1", b"1"]


def describe(value, seen=None):
    """Exact types and values, nested; identity of shared containers too."""
    seen = {} if seen is None else seen
    kind = type(value).__qualname__
    if isinstance(value, (list, tuple, dict, set, frozenset, Point)):
        if id(value) in seen:
            return f"<same as #{seen[id(value)]}>"
        seen[id(value)] = len(seen)
    if isinstance(value, dict):
        items = ", ".join(f"{describe(k, seen)}: {describe(v, seen)}" for k, v in value.items())
        return f"{kind}{{{items}}}"
    if isinstance(value, (list, tuple)):
        return f"{kind}[{', '.join(describe(v, seen) for v in value)}]"
    if isinstance(value, (set, frozenset)):
        return f"{kind}{sorted(repr(v) for v in value)}"
    if isinstance(value, Point):
        return f"{kind}({value.x}, {value.y})"
    return f"{kind}({value!r})"


def application_setup(args):
    parser = argparse.ArgumentParser("record types")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    opts, _ = parser.parse_known_args(args)
    ab = wallaroo.ApplicationBuilder("Record Types")
    ab.new_pipeline("types", wallaroo.FileSourceConfig(opts.input, decoder))
    ab.to(wrap)
    ab.to_state_partition(seen_by, Seen, "seen", by_n, [0, 1, 2, 3])
    ab.to_sink(wallaroo.FileSinkConfig(opts.output, encoder))
    return ab.build()


class Seen:
    def __init__(self):
        self.count = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return int(bs.decode("utf-8"))


@wallaroo.computation(name="make record")
def wrap(n):
    return (n, make_record(n))


@wallaroo.partition
def by_n(pair):
    return pair[0] % 4


@wallaroo.state_computation(name="describe")
def seen_by(pair, state):
    state.count += 1
    n, record = pair
    return f"{n} {state.count} {describe(record)}", True


@wallaroo.encoder
def encoder(line):
    return line + "\n"
