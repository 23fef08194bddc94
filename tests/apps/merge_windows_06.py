"""Two sources merged, keyed by account, summed in windows (Wallaroo 0.6.1 style).

    python -m wallaroo merge_windows_06.py --deposits D --withdrawals W --output OUT
        [--window tumbling|sliding|count] [--gen N] [--no-partial-timer]

Each input line is ``account amount``; withdrawals count negative. Each output
line is ``account total count``: the sum and number of the records of one
window. ``--gen N`` adds a generator source of N records ``gen i`` (amount i).
``--no-partial-timer`` switches off the 5 s timer that fires partial count
windows (0.6.1), so that a count window's content depends only on the records
however slowly the run goes (the last partial window of each key comes out
at the end of input).
"""

import argparse

import wallaroo
import wallaroo.windows


def application_setup(args):
    parser = argparse.ArgumentParser("merge windows")
    parser.add_argument("--deposits", required=True)
    parser.add_argument("--withdrawals", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--window", default="tumbling")
    parser.add_argument("--gen", type=int, default=0)
    parser.add_argument("--no-partial-timer", action="store_true")
    opts, _ = parser.parse_known_args(args)
    if opts.no_partial_timer:
        wallaroo.windows.CountStage.period = 10**18

    deposits = wallaroo.source("Deposits", wallaroo.FileSourceConfig(opts.deposits, decode))
    withdrawals = wallaroo.source(
        "Withdrawals", wallaroo.FileSourceConfig(opts.withdrawals, decode)
    ).to(negate)
    inflow = deposits.merge(withdrawals)
    if opts.gen:
        generated = wallaroo.GenSourceConfig(Counter(opts.gen))
        inflow = inflow.merge(wallaroo.source("Generated", generated))
    if opts.window == "tumbling":
        windows = wallaroo.range_windows(wallaroo.milliseconds(200)).over(Total)
    elif opts.window == "sliding":
        windows = (
            wallaroo.range_windows(wallaroo.milliseconds(300))
            .with_slide(wallaroo.milliseconds(100))
            .with_delay(wallaroo.milliseconds(50))
            .over(Total)
        )
    else:
        windows = wallaroo.count_windows(3).over(Total)
    pipeline = (
        inflow.key_by(account).to(windows).to_sink(wallaroo.FileSinkConfig(opts.output, encode))
    )
    return wallaroo.build_application("Merged windows", pipeline)


class Counter:
    """Generates ``("gen", i)`` for i = 1..n."""

    def __init__(self, n):
        self.n = n

    def initial_value(self):
        return ("gen", 1)

    def apply(self, previous):
        i = previous[1] + 1
        return ("gen", i) if i <= self.n else None


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    name, amount = bs.decode().split()
    return (name, int(amount))


@wallaroo.computation(name="negate")
def negate(record):
    return (record[0], -record[1])


@wallaroo.key_extractor
def account(record):
    return record[0]


class Total(wallaroo.Aggregation):
    def initial_accumulator(self):
        return [0, 0]

    def update(self, record, acc):
        acc[0] += record[1]
        acc[1] += 1

    def combine(self, a, b):
        return [a[0] + b[0], a[1] + b[1]]

    def output(self, key, acc):
        if acc[1] == 0:
            return None
        return f"{key} {acc[0]} {acc[1]}\n"


@wallaroo.encoder
def encode(line):
    return line
