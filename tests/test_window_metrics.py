"""Window metrics: open windows, windows fired, late events and watermarks per
window stage.

The stage's counters are checked against what its outputs show (an
aggregation whose output names the window and the ids of its records: a window
is open from its first record's step until the step it fired), over random
inputs of every window kind. End to end, ``/metrics`` and ``/status`` of a
running event-time app are checked against windows, late events and the
watermark computed from the events sent.
"""

from __future__ import annotations

import pickle
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import pytest
import wallaroo
from conftest import APPS_DIR
from test_metrics import Scrape, metrics_url, output_lines, running, scrape, status_json, wait_for
from wallaroo import windows as win
from wallaroo import windows_event as wev
from wallaroo.sender import connect, frame, send_messages


class Clock:
    """Replaces time.time_ns in the windows module."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, start: int) -> None:
        self.now = start
        monkeypatch.setattr(win.time, "time_ns", lambda: self.now)


class Named(wallaroo.Aggregation):
    """Collects record ids; a window's output is ``(key, start, ids)``."""

    def initial_accumulator(self) -> list:
        return []

    def update(self, data: tuple, acc: list) -> None:
        acc.append(data[2])

    def combine(self, a: list, b: list) -> list:
        return a + b

    def output(self, key: str, acc: list) -> tuple:
        return (key, None, sorted(acc))

    def output_window(self, key: str, acc: list, start: int, end: int) -> tuple:
        return (key, start, sorted(acc))


def _key(data: tuple) -> str:
    return data[0]


@wallaroo.timestamp_extractor
def _time(data: tuple) -> int:
    return data[1]


def _fired(ticked: tuple | None) -> list:
    """The outputs of a tick (``(keys, outputs)``), in order."""
    return [] if ticked is None else ticked[1]


def _run(stage: win._Stage, records: list, clock: Clock | None, ticks: float) -> tuple:
    """Feed ``records`` ``(key, time, id)`` (``clock``: ingest time, set to each
    record's time) with timer ticks at random steps, then the final tick.
    Returns (per step: (open, fired, late) after it; outputs with their step;
    records found late; the states)."""
    rng = random.Random(len(records))
    states: dict = {}
    seen, outputs, late = [], [], []
    for step, record in enumerate(records):
        if clock is not None:
            clock.now = record[1]
        state = states.setdefault(record[0], stage.new_state())
        if isinstance(stage, wev.EventRangeStage):
            result = stage.process(record, state, (0, record[2] % 2), source="src")
        else:
            result = stage.process(record, state)
        outputs.extend((step, out) for out in result[0])
        if len(result) == 3:
            late.append(record[2])
        if rng.random() < ticks:
            outputs.extend((step, out) for out in _fired(stage.tick(states, final=False)))
        seen.append((stage.open_windows, stage.fired, stage.late))
    outputs.extend((len(records), out) for out in _fired(stage.tick(states, final=True)))
    seen.append((stage.open_windows, stage.fired, stage.late))
    return seen, outputs, late, states


def _expected(records: list, outputs: list, late: list) -> list:
    """Per step, from the outputs alone: (open windows, fired, late)."""
    step_of = {record[2]: step for step, record in enumerate(records)}
    steps = len(records) + 1
    opened, fired, late_at = [0] * steps, [0] * steps, [0] * steps
    for fired_at, (_key, _start, ids) in outputs:
        fired[fired_at] += 1
        if ids:  # open from its first record's step until it fired
            opened[step_of[ids[0]]] += 1
            opened[fired_at] -= 1
    for ident in late:
        late_at[step_of[ident]] += 1
    expected, totals = [], [0, 0, 0]
    for step in range(steps):
        for i, counts in enumerate((opened, fired, late_at)):
            totals[i] += counts[step]
        expected.append(tuple(totals))
    return expected


def _records(n: int, keys: int, seed: int, disorder: int, gaps: bool, late: int = 0) -> list:
    """``n`` records ``(key, time, id)``, times rising with jitter ``disorder``;
    with ``gaps``, now and then a jump of many windows; with ``late``, about 3%
    of the records that far behind."""
    rng = random.Random(seed)
    clock, records = 1_000, []
    for ident in range(n):
        clock += rng.randrange(0, 4)
        if gaps and rng.random() < 0.02:
            clock += rng.randrange(50, 400)
        behind = late if late and rng.random() < 0.03 else rng.randrange(0, disorder + 1)
        records.append((f"k{rng.randrange(keys)}", clock - behind, ident))
    return records


@pytest.mark.parametrize(
    "wrange,slide,lateness,disorder",
    [(30, 10, 5, 12), (20, 20, 0, 4), (40, 8, 10, 30), (12, 6, 0, 40)],
)
def test_event_time_counters_match_the_outputs(monkeypatch, wrange, slide, lateness, disorder):
    Clock(monkeypatch, 0)
    spec = (
        wallaroo.range_windows(wrange).with_slide(slide).with_allowed_lateness(lateness)
        .with_event_time(_time).over(Named)
    )  # fmt: skip
    stage = wev.EventRangeStage(spec, _key, 1, f"test/metrics/{wrange}/{slide}")
    records = _records(600, 7, seed=wrange + slide, disorder=disorder, gaps=True, late=100)
    seen, outputs, late, _ = _run(stage, records, None, ticks=0.2)
    assert late, "the inputs have late events"
    assert seen == _expected(records, outputs, late)
    assert seen[-1][0] == 0  # the end fired every window


@pytest.mark.parametrize("wrange,slide,delay", [(30, 10, 5), (10, 10, 0), (25, 5, 0)])
def test_ingest_time_counters_match_the_outputs(monkeypatch, wrange, slide, delay):
    clock = Clock(monkeypatch, 1_000)
    spec = wallaroo.range_windows(wrange).with_slide(slide).with_delay(delay).over(Named)
    stage = win.RangeStage(spec, _key, 1)
    records = _records(500, 5, seed=wrange, disorder=0, gaps=True)
    seen, outputs, late, _ = _run(stage, records, clock, ticks=0.1)
    assert any(not ids for _step, (_k, _s, ids) in outputs), "empty windows fire too"
    assert seen == _expected(records, outputs, late)
    assert seen[-1][0] == 0


def test_count_window_counters_match_the_outputs(monkeypatch):
    Clock(monkeypatch, 0)
    stage = win.CountStage(wallaroo.count_windows(4).over(Named), _key, 1)
    records = _records(203, 6, seed=3, disorder=0, gaps=False)
    seen, outputs, late, _ = _run(stage, records, None, ticks=0.0)
    # Count windows name no start: key the expectation by the record ids alone.
    assert seen == _expected(records, outputs, late)
    assert seen[-1] == (0, len(outputs), 0)


def test_the_report_counts_open_windows_again_when_keys_come_back(monkeypatch):
    Clock(monkeypatch, 0)
    spec = wallaroo.range_windows(30).with_slide(10).with_event_time(_time).over(Named)
    stage = wev.EventRangeStage(spec, _key, 1, "test/metrics/report")
    stage.label("test/metrics/report", "Events", "Named")
    records = _records(300, 9, seed=5, disorder=3, gaps=False)
    states: dict = {}
    for record in records:
        stage.process(record, states.setdefault(record[0], stage.new_state()), (0, 0), source="src")
    stage.tick(states, final=False)  # fire what is due: the fresh stage's tick fires nothing
    assert stage.open_windows > 0
    reports = []
    monkeypatch.setattr(
        "wallaroo._engine.metrics_windows", lambda *args: reports.append(args), raising=True
    )
    # A new process restores the keys from a snapshot: the report counts them.
    snapshot = pickle.dumps(states)
    fresh = wev.EventRangeStage(spec, _key, 1, "test/metrics/report")
    fresh.label("test/metrics/report", "Events", "Named")
    restored = pickle.loads(snapshot)
    assert fresh.timer(restored, final=False) is None
    newest = max(t for _k, t, _i in records)
    assert reports == [
        (
            "test/metrics/report", "Events", "Named", "event_time",
            stage.open_windows, 0, 0, newest, [("src", 0, 0, newest, False)],
        )
    ]  # fmt: skip
    # Half the keys move away (a hand-over): counted again at the next report.
    for key in sorted(restored)[::2]:
        del restored[key]
    fresh.report(restored)
    assert reports[-1][4] == sum(fresh._open_of(w) for w in restored.values()) > 0


# ---------------------------------------------------------------------------
# End to end: /metrics and /status of a running event-time app
# ---------------------------------------------------------------------------

TCP_EVENT_APP = APPS_DIR / "tcp_event_windows_06.py"
RANGE, SLIDE, LATENESS = 100, 50, 20


class Events:
    """``n`` events ``key event_time_ms id`` for ``tcp_event_windows_06.py``,
    event times starting a minute before now: in order up to LATENESS ms
    (never late, on any worker) and about 3% very late ones (a full window
    plus the lateness behind their key's newest event: late on any worker).
    What the app must make of them is computed here from the events alone."""

    def __init__(self, n: int, keys: int, seed: int) -> None:
        rng = random.Random(seed)
        clock = int(time.time() * 1000) - 60_000
        newest: dict = {}
        self.payloads: list = []
        self.windows: dict = defaultdict(list)
        self.late: list = []
        for ident in range(n):
            clock += rng.randrange(0, 3)
            key = f"k{rng.randrange(keys)}"
            if key in newest and rng.random() < 0.03:
                ms = newest[key] - (RANGE + LATENESS + rng.randrange(1, 300))
                self.late.append(str(ident))
            else:
                ms = clock - rng.randrange(0, LATENESS + 1)
                newest[key] = max(newest.get(key, ms), ms)
                last = ms // SLIDE * SLIDE
                for start in range(last - RANGE + SLIDE, last + 1, SLIDE):
                    self.windows[(key, start)].append(str(ident))
            self.payloads.append(f"{key} {ms} {ident}".encode())
        #: The watermark once every event arrived (one source partition).
        self.watermark_ms = max(newest.values())
        #: Then one event per key far ahead: every window above fires on every
        #: worker, and each of these opens two windows (the test sends them).
        self.flush_ms = self.watermark_ms + 10_000
        keys_seen = sorted(newest)
        self.flush = [f"{key} {self.flush_ms} {n + i}".encode() for i, key in enumerate(keys_seen)]

    def line(self, key: str, start: int) -> str:
        return f"{key} {start} {','.join(self.windows[(key, start)])}"

    def windows_fired_at_stop(self, flushed: bool = False) -> list:
        """Every window's line: what a run stopped without ``-r`` has output
        (``flushed``: the flush events were sent, each in two windows)."""
        lines = [self.line(key, start) for key, start in self.windows]
        for payload in self.flush if flushed else []:
            key, ms, ident = payload.decode().split()
            last = int(ms) // SLIDE * SLIDE
            starts = range(last - RANGE + SLIDE, last + 1, SLIDE)
            lines += [f"{key} {start} {ident}" for start in starts]
        return lines

    def due(self, watermark_ms: int) -> list:
        """The window lines a watermark fires."""
        return sorted(
            self.line(key, start)
            for key, start in self.windows
            if start + RANGE <= watermark_ms - LATENESS
        )


def _window_samples(s: Scrape, name: str) -> dict:
    return {x.labels["worker"]: x.value for x in s.samples(name, step="Ids")}


def _settled(base: str, workers: int, fired: int, opened: int, late: int) -> Callable[[], object]:
    """A check: every worker reported its window stage, and together they
    fired ``fired`` windows, hold ``opened`` and found ``late`` events late."""

    def check() -> object:
        s = scrape(base)
        counts = [
            _window_samples(s, name)
            for name in (
                "wallaroo_window_fired_total",
                "wallaroo_window_open",
                "wallaroo_window_late_events_total",
            )
        ]
        seen = {"workers": len(counts[0]), "counts": [sum(c.values()) for c in counts]}
        done = seen == {"workers": workers, "counts": [fired, opened, late]}
        return s if done else _NotYet(seen)

    return check


class _NotYet:
    """A falsy check result naming what was seen (``wait_for`` shows it on timeout)."""

    def __init__(self, seen: object) -> None:
        self.seen = seen

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"not yet: {self.seen}"


@pytest.mark.timeout(120)
def test_metrics_and_status_show_the_window_stage(tmp_path: Path) -> None:
    events = Events(3000, 30, seed=19)
    output, dead = tmp_path / "windows.txt", tmp_path / "late.jsonl"
    args = ["--in", "127.0.0.1:0", "--output", str(output), "--dead-letter", str(dead)]
    with running(str(TCP_EVENT_APP), *args) as app:
        base = metrics_url(app)
        ((_, _, port),) = app.listening()
        assert send_messages("127.0.0.1", port, events.payloads) == len(events.payloads)
        # The windows the final watermark made due fire, the others stay open.
        fired = events.due(events.watermark_ms)
        opened, late = len(events.windows) - len(fired), len(events.late)
        wait_for(_settled(base, 1, len(fired), opened, late), 60, "the windows to settle")
        before = time.time()
        s, status = scrape(base), status_json(base)
        after = time.time()
    # Stopped without -r, the run fired the windows still open too: every window once.
    assert sorted(output_lines(output)) == sorted(events.windows_fired_at_stop())
    labels = {"worker": "initializer", "pipeline": "Events", "step": "Ids"}
    assert s.total("wallaroo_window_fired_total", **labels) == len(fired)
    assert s.total("wallaroo_window_open", **labels) == len(events.windows) - len(fired) > 0
    # Late events: each kept once in the dead-letter file, the same count as bad input.
    late_kept = len(dead.read_text().splitlines())
    assert s.total("wallaroo_window_late_events_total", **labels) == len(events.late) == late_kept
    assert s.total("wallaroo_bad_input_total", kind="late_event") == len(events.late)
    # The watermark is the newest event time; its lag, the worker's clock minus it.
    watermark = events.watermark_ms / 1000
    assert s.total("wallaroo_window_watermark_seconds", **labels) == pytest.approx(
        watermark, abs=1e-3
    )
    lag = s.total("wallaroo_window_watermark_lag_seconds", **labels)
    assert before - watermark - 0.01 <= lag <= after - watermark + 0.01
    assert s.total("wallaroo_window_event_time_lag_seconds", **labels) == 0
    # One source partition (the connection; its stream number is the source's).
    (partition,) = s.samples("wallaroo_window_partition_event_time_seconds")
    assert partition.value == pytest.approx(watermark, abs=1e-3)
    assert {k: v for k, v in partition.labels.items() if k != "stream"} == {
        **labels, "source": "Events", "reader": "0",
    }  # fmt: skip
    assert s.total("wallaroo_window_partition_lag_seconds", **partition.labels) == pytest.approx(
        lag, abs=1e-3
    )
    assert s.total("wallaroo_window_partition_idle", **partition.labels) == 0
    # /status: the same numbers, per stage and per worker.
    (stage,) = status["windows"]
    assert (stage["pipeline"], stage["step"], stage["kind"]) == ("Events", "Ids", "event_time")
    assert (stage["open"], stage["fired"], stage["late_events"]) == (
        len(events.windows) - len(fired), len(fired), len(events.late),
    )  # fmt: skip
    assert stage["watermark"] == pytest.approx(watermark, abs=1e-3)
    (worker,) = stage["workers"]
    assert worker["worker"] == "initializer" and worker["fired"] == len(fired)
    stream = int(partition.labels["stream"])
    assert [(p["source"], p["reader"], p["stream"], p["idle"]) for p in worker["partitions"]] == [
        ("Events", 0, stream, False)
    ]


@pytest.mark.timeout(180)
def test_each_worker_of_a_cluster_reports_its_windows(tmp_path: Path) -> None:
    events = Events(3000, 30, seed=23)
    output = tmp_path / "windows.txt"
    args = ["--in", "127.0.0.1:0", "--output", str(output), "--workers", "2"]
    with running(str(TCP_EVENT_APP), *args) as app:
        base = metrics_url(app)
        ((_, _, port),) = app.listening()
        payloads = events.payloads + events.flush
        assert send_messages("127.0.0.1", port, payloads) == len(payloads)
        # Each worker fires by its own watermark (the newest event time of the
        # records reaching its keys): the last events take every worker's far
        # enough for all windows but theirs (two each) to fire.
        expected = (len(events.windows), 2 * len(events.flush), len(events.late))
        s = wait_for(_settled(base, 2, *expected), 90, "both workers' windows to settle")
        status = status_json(base)
    lines = output_lines(output)
    # Stopped without -r, the run fired the flush events' windows too.
    assert sorted(lines) == sorted(events.windows_fired_at_stop(flushed=True))
    fired = _window_samples(s, "wallaroo_window_fired_total")
    assert sorted(fired) == ["worker-0", "worker-1"] and all(fired.values())
    watermarks = _window_samples(s, "wallaroo_window_watermark_seconds")
    assert watermarks == pytest.approx(
        {"worker-0": events.flush_ms / 1000, "worker-1": events.flush_ms / 1000}, abs=1e-3
    )
    # The partition is the one the initializer's source reads, on both.
    partitions = s.samples("wallaroo_window_partition_event_time_seconds")
    assert sorted((x.labels["worker"], x.labels["reader"]) for x in partitions) == [
        ("worker-0", "0"), ("worker-1", "0"),
    ]  # fmt: skip
    (stage,) = status["windows"]
    assert [w["worker"] for w in stage["workers"]] == ["worker-0", "worker-1"]
    assert [w["fired"] for w in stage["workers"]] == [fired["worker-0"], fired["worker-1"]]
    assert (stage["fired"], stage["open"], stage["late_events"]) == expected


def _partitions_by_worker(s: Scrape) -> dict:
    """Worker -> the source partitions ``(reader, stream)`` its stage knows."""
    known: dict = defaultdict(set)
    for x in s.samples("wallaroo_window_partition_event_time_seconds"):
        known[x.labels["worker"]].add((x.labels["reader"], x.labels["stream"]))
    return dict(known)


@pytest.mark.timeout(180)
def test_workers_wait_for_partitions_only_another_worker_heard(tmp_path: Path) -> None:
    """Two connections to a 2-worker cluster: a slow one S (event times about
    a minute ago) and a fast one F (100 s later). S first sends one event of
    key ``a`` only: one worker hears S itself, the other learns it from the
    first one's timer ticks. F then sends an event for each of 20 keys (on both
    workers), and S one more for each, 100 s behind F's: each worker's
    watermark waits for S, so none of them is late (on its own, the worker
    without ``a`` would have had F's time as watermark, fired nothing yet but
    found all of S's events for its keys late)."""
    output, dead = tmp_path / "windows.txt", tmp_path / "late.jsonl"
    args = ["--in", "127.0.0.1:0", "--output", str(output), "--dead-letter", str(dead),
            "--workers", "2"]  # fmt: skip
    base_ms = (int(time.time()) - 60) * 1000
    keys = [f"k{i}" for i in range(20)]
    slow = [("a", base_ms)] + [(key, base_ms + 10 + i) for i, key in enumerate(keys)]
    fast = [(key, base_ms + 100_000) for key in keys]
    ids = {event: str(ident) for ident, event in enumerate(slow + fast)}

    def send(sock, events: list) -> None:
        sock.sendall(b"".join(frame(f"{k} {ms} {ids[(k, ms)]}".encode()) for k, ms in events))

    with running(str(TCP_EVENT_APP), *args) as app:
        base = metrics_url(app)
        ((_, _, port),) = app.listening()
        with connect("127.0.0.1", port) as s_conn, connect("127.0.0.1", port) as f_conn:
            send(s_conn, slow[:1])
            wait_for(
                lambda: [len(p) for p in _partitions_by_worker(scrape(base)).values()] == [1, 1],
                60, "both workers to know the slow connection",
            )  # fmt: skip
            send(f_conn, fast)
            # Key a's two windows and two for each fast event: nothing fired.
            wait_for(_settled(base, 2, 0, 2 + 2 * len(fast), 0), 60, "the fast events")
            send(s_conn, slow[1:])
            opened = 2 + 2 * len(fast) + 2 * len(keys)
            s = wait_for(_settled(base, 2, 0, opened, 0), 60, "the slow events")
    # Both workers held keys of both connections, and know both.
    held = _window_samples(s, "wallaroo_window_open")  # type: ignore[arg-type]
    assert sorted(held) == ["worker-0", "worker-1"] and min(held.values()) > 2
    assert [len(p) for p in _partitions_by_worker(s).values()] == [2, 2]  # type: ignore[arg-type]
    assert not dead.exists() or dead.read_text() == ""
    # Stopped without -r, every window fired once with its event.
    expected = []
    for (key, ms), ident in ids.items():
        last = ms // SLIDE * SLIDE
        expected += [f"{key} {start} {ident}" for start in (last - SLIDE, last)]
    assert sorted(output_lines(output)) == sorted(expected)
