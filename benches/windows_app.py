"""The windowed benchmark pipeline: keyed sliding-window sums on event time.

Input lines ``key event_time_ms value``; records are keyed by ``key`` and
summed in windows of RANGE_MS starting every SLIDE_MS (event time, epoch
grid); each window with records outputs ``key start sum``. ``application_setup``
builds it for the engine (0.6 API); :func:`bare_loop` does the same windowing
with plain dicts, calling the same decode / key / encode functions.
"""

from __future__ import annotations

import wallaroo

RANGE_MS = 10_000
SLIDE_MS = 5_000
MS = 1_000_000


def decode(data: bytes) -> tuple:
    key, ms, value = data.split()
    return (key.decode(), int(ms), int(value))


def key_of(record: tuple) -> str:
    return record[0]


def time_of(record: tuple) -> int:
    return record[1] * MS


def encode(line: str) -> str:
    return line


class WindowSum(wallaroo.Aggregation):
    """Sum of the values of a window; the output names the key and the sum."""

    def initial_accumulator(self) -> list:
        return [0, 0]

    def update(self, record: tuple, acc: list) -> None:
        acc[0] += record[2]
        acc[1] += 1

    def combine(self, a: list, b: list) -> list:
        return [a[0] + b[0], a[1] + b[1]]

    def output(self, key: str, acc: list) -> str:
        return f"{key} {acc[0]} {acc[1]}\n"


def application_setup(args: list) -> tuple:
    input_path = args[args.index("--bench-input") + 1]
    output_path = args[args.index("--bench-output") + 1]
    windows = (
        wallaroo.range_windows(wallaroo.milliseconds(RANGE_MS))
        .with_slide(wallaroo.milliseconds(SLIDE_MS))
        .with_event_time(wallaroo.timestamp_extractor(time_of))
        .over(WindowSum)
    )
    source = wallaroo.FileSourceConfig(input_path, wallaroo.decoder(4, ">I")(decode))
    pipeline = (
        wallaroo.source("records", source)
        .key_by(wallaroo.key_extractor(key_of))
        .to(windows)
        .to_sink(wallaroo.FileSinkConfig(output_path, wallaroo.encoder(encode)))
    )
    return wallaroo.build_application("bench windows", pipeline)


def bare_loop(input_path: str, output_path: str) -> int:
    """The same windows with dicts: per key, window start -> [sum, count];
    the watermark is the newest event time; a key's due windows fire on its
    next record, all the rest at the end. Returns the number of outputs."""
    rng, slide = RANGE_MS * MS, SLIDE_MS * MS
    aggregation = WindowSum()
    windows: dict = {}
    watermark = None
    outputs = 0
    with open(input_path, "rb") as source, open(output_path, "w") as sink:

        def fire(key: str, open_windows: dict, limit: int | None) -> int:
            fired = 0
            for start in sorted(open_windows):
                if limit is not None and start + rng > limit:
                    break
                sink.write(encode(aggregation.output(key, open_windows.pop(start))))
                fired += 1
            return fired

        for line in source:
            record = decode(line)
            key, t = key_of(record), time_of(record)
            watermark = t if watermark is None else max(watermark, t)
            open_windows = windows.get(key)
            if open_windows is None:
                open_windows = windows[key] = {}
            else:
                outputs += fire(key, open_windows, watermark)
            last = t // slide * slide
            for start in range(last - rng + slide, last + 1, slide):
                acc = open_windows.get(start)
                if acc is None:
                    acc = open_windows[start] = aggregation.initial_accumulator()
                aggregation.update(record, acc)
        for key, open_windows in windows.items():
            outputs += fire(key, open_windows, None)
    return outputs
