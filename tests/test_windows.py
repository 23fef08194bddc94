"""Wallaroo 0.6.1 windows: the API and its validation, the window logic with a
controlled clock, and merged sources summed in tumbling, sliding and count
windows end to end (ingest time: checked through per-key sums and counts,
which do not depend on where window boundaries fall)."""

from __future__ import annotations

import random
import re
import time
from collections import defaultdict
from pathlib import Path

import pytest
import wallaroo
from wallaroo import windows as win
from wallaroo import windows_event as wev

APPS = Path(__file__).resolve().parent / "apps"
MS = 1_000_000


class Sum(wallaroo.Aggregation):
    def initial_accumulator(self):
        return [0]

    def update(self, data, acc):
        acc[0] += data

    def combine(self, a, b):
        return [a[0] + b[0]]

    def output(self, key, acc):
        return (key, acc[0])


def test_time_helpers_are_nanoseconds():
    assert wallaroo.nanoseconds(5) == 5
    assert wallaroo.microseconds(2) == 2_000
    assert wallaroo.milliseconds(3) == 3_000_000
    assert wallaroo.seconds(1) == 10**9
    assert wallaroo.minutes(2) == 120 * 10**9
    assert wallaroo.hours(1) == 3600 * 10**9


def test_builders_and_validation():
    w = wallaroo.range_windows(10).with_slide(5).with_delay(3).over(Sum)
    assert (w.range, w.slide, w.delay) == (10, 5, 3)
    assert isinstance(w.aggregation, Sum) and w.aggregation.name() == "Sum"
    tumbling = wallaroo.range_windows(10).over(Sum)
    assert (tumbling.slide, tumbling.delay) == (10, 0)
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo.range_windows(10).with_slide(5).with_slide(5)
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo.range_windows(10).with_delay(1).with_delay(1)
    with pytest.raises(wallaroo.WallarooParameterError, match="slide"):
        wallaroo.range_windows(10).with_slide(20).over(Sum)
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo.range_windows(0).over(Sum)

    class NoCombine:
        def name(self):
            return "x"

        def initial_accumulator(self):
            return 0

        def update(self, d, a):
            pass

        def output(self, k, a):
            return a

    with pytest.raises(wallaroo.WallarooParameterError, match="combine"):
        wallaroo.count_windows(3).over(NoCombine)
    assert wallaroo.count_windows(3).over(Sum).count == 3


class Clock:
    """Replaces time.time_ns in the windows module."""

    def __init__(self, monkeypatch, start: int) -> None:
        self.now = start
        monkeypatch.setattr(win.time, "time_ns", lambda: self.now)


def _stage(wrange, slide, delay=0):
    spec = wallaroo.range_windows(wrange).with_slide(slide).with_delay(delay).over(Sum)
    return win.RangeStage(spec, lambda d: "k", feeders=1)


def test_tumbling_windows_fire_on_later_records_and_on_flush(monkeypatch):
    clock = Clock(monkeypatch, 1000)
    stage = _stage(10, 10)
    state = stage.new_state()
    # Grid anchored at first watermark - range: windows [990,1000), [1000,1010), ...
    assert stage.process(1, state) == ([], True)
    clock.now = 1005  # [990,1000) is due (1000 < 1005): empty, still output
    assert stage.process(2, state) == ([("k", 0)], True)
    clock.now = 1011  # [1000,1010) is due
    assert stage.process(4, state) == ([("k", 3)], True)
    clock.now = 1021  # [1010,1020) is due
    assert stage.process(8, state) == ([("k", 4)], True)
    assert stage.tick({"k": state}, final=True) == (["k"], [("k", 8)])


def test_sliding_windows_count_each_record_in_range_over_slide_windows(monkeypatch):
    rng = random.Random(7)
    clock = Clock(monkeypatch, 10_000)
    stage = _stage(30, 10, delay=5)
    state = stage.new_state()
    outs = []
    total = 0
    for _ in range(300):
        clock.now += rng.randrange(0, 4)
        value = rng.randrange(1, 100)
        total += value
        outs.extend(stage.process(value, state)[0])
    outs.extend(stage.tick({"k": state}, final=True)[1])
    assert sum(v for _k, v in outs) == 3 * total


def test_the_timer_fires_due_windows_without_records(monkeypatch):
    clock = Clock(monkeypatch, 0)
    stage = _stage(100, 100)
    state = stage.new_state()
    stage.process(5, state)
    clock.now = 150
    assert stage.tick({"k": state}, final=False) is None  # first tick one period in
    clock.now = 250
    # [-100, 0) (empty, still output), [0, 100) and [100, 200) are due.
    assert stage.tick({"k": state}, final=False) == (["k"], [("k", 0), ("k", 5), ("k", 0)])
    clock.now = 300
    assert stage.tick({"k": state}, final=False) is None  # next tick at 450


def test_count_windows_fire_every_n_and_partials_at_the_end(monkeypatch):
    Clock(monkeypatch, 0)
    stage = win.CountStage(wallaroo.count_windows(3).over(Sum), lambda d: "k", feeders=2)
    state = stage.new_state()
    outs = []
    for value in range(1, 8):
        outs.extend(stage.process(value, state)[0])
    assert outs == [("k", 6), ("k", 15)]
    assert stage.tick({"k": state}, final=True) is None  # one of two sources ended
    assert stage.tick({"k": state}, final=True) == (["k"], [("k", 7)])


def _write(path: Path, records: list) -> None:
    path.write_text("".join(f"{name} {amount}\n" for name, amount in records))


def _inputs(tmp_path: Path, n: int = 400):
    rng = random.Random(3)
    accounts = [f"acct{i}" for i in range(7)]
    deposits = [(rng.choice(accounts), rng.randrange(1, 1000)) for _ in range(n)]
    withdrawals = [(rng.choice(accounts), rng.randrange(1, 500)) for _ in range(n // 2)]
    _write(tmp_path / "d.txt", deposits)
    _write(tmp_path / "w.txt", withdrawals)
    sums: dict = defaultdict(int)
    counts: dict = defaultdict(int)
    for name, amount in deposits:
        sums[name] += amount
        counts[name] += 1
    for name, amount in withdrawals:
        sums[name] -= amount
        counts[name] += 1
    return dict(sums), dict(counts)


def _run(run_app, tmp_path, window, *extra):
    out = tmp_path / "out.txt"
    result = run_app(
        APPS / "merge_windows_06.py",
        "--deposits",
        str(tmp_path / "d.txt"),
        "--withdrawals",
        str(tmp_path / "w.txt"),
        "--output",
        str(out),
        "--window",
        window,
        *extra,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in out.read_text().splitlines()]
    return [(name, int(total), int(count)) for name, total, count in rows]


def _per_key(rows):
    sums: dict = defaultdict(int)
    counts: dict = defaultdict(int)
    for name, total, count in rows:
        sums[name] += total
        counts[name] += count
    return dict(sums), dict(counts)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [1, 2])
def test_tumbling_windows_over_merged_sources(run_app, tmp_path, workers):
    sums, counts = _inputs(tmp_path)
    rows = _run(run_app, tmp_path, "tumbling", "--workers", str(workers))
    assert _per_key(rows) == (sums, counts)


@pytest.mark.timeout(120)
def test_sliding_windows_count_every_record_three_times(run_app, tmp_path):
    sums, counts = _inputs(tmp_path)
    rows = _run(run_app, tmp_path, "sliding")
    got_sums, got_counts = _per_key(rows)
    assert got_sums == {k: 3 * v for k, v in sums.items()}
    assert got_counts == {k: 3 * v for k, v in counts.items()}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [1, 2])
def test_count_windows_with_a_generator_source(run_app, tmp_path, workers):
    sums, counts = _inputs(tmp_path)
    # Without the 5 s partial-window timer: a loaded machine's slow run would
    # fire partial windows before the end (0.6.1 does too), which the check of
    # full windows below cannot tell from a bug.
    rows = _run(
        run_app, tmp_path, "count", "--gen", "10", "--no-partial-timer", "--workers", str(workers)
    )
    sums["gen"] = sum(range(1, 11))
    counts["gen"] = 10
    assert _per_key(rows) == (sums, counts)
    per_key_windows = defaultdict(list)
    for name, total, count in rows:
        per_key_windows[name].append((total, count))
    for name, windows in per_key_windows.items():
        # Every window is full but the last of each key (the end-of-input
        # flush), in the file in the order made, although with 2 workers the
        # windows of a key fired through different merged pipelines reach the
        # file's worker on different channels.
        assert all(count == 3 for _, count in windows[:-1]), (name, windows)
        assert sum(count for _, count in windows) == counts[name]
    # The generator's values in order: 1..3, 4..6, 7..9 and 10 at the flush.
    assert per_key_windows["gen"] == [(6, 3), (15, 3), (24, 3), (10, 1)]


@pytest.mark.timeout(120)
def test_windows_fire_on_the_engine_timer_while_the_source_stays_open(tcp_app):
    from wallaroo.receiver import Receiver
    from wallaroo.sender import send_messages

    rng = random.Random(11)
    readings = [(f"s{rng.randrange(5)}", rng.randrange(100)) for _ in range(500)]
    expected_sums: dict = defaultdict(int)
    for name, value in readings:
        expected_sums[name] += value
    with Receiver(length_fmt=">I") as rx:
        app_path = APPS / "tcp_windows_06.py"
        with tcp_app(app_path, "--in", "127.0.0.1:0", "--out", f"127.0.0.1:{rx.port}") as app:
            ((_, _, in_port),) = app.listening()
            payloads = [f"{name} {value}".encode() for name, value in readings]
            assert send_messages("127.0.0.1", in_port, payloads) == len(readings)

            def totals() -> dict:
                got: dict = defaultdict(int)
                for message in rx.messages():
                    name, total, _count = message.decode().split()
                    got[name] += int(total)
                return dict(got)

            # No end of input: only the timer (quiet input) can fire the last windows.
            deadline = time.monotonic() + 60
            while totals() != dict(expected_sums) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert totals() == dict(expected_sums), app.stderr
            counts = sum(int(m.split()[2]) for m in rx.messages())
            assert counts == len(readings)


# ---------------------------------------------------------------------------
# kill -9 with -r: open windows are in every snapshot
# ---------------------------------------------------------------------------

RESILIENT_APP = APPS / "resilient_windows_06.py"


def _expected_windows(path: Path, n: int, keys: int, size: int, seed: int) -> set:
    rng = random.Random(seed)
    records = [(f"k{rng.randrange(keys)}", str(seq)) for seq in range(n)]
    path.write_text("".join(f"{key} {seq}\n" for key, seq in records))
    per_key: dict = defaultdict(list)
    for key, seq in records:
        per_key[key].append(seq)
    return {
        f"{key} {','.join(seqs[i : i + size])}"
        for key, seqs in per_key.items()
        for i in range(0, len(seqs), size)
    }


def _assert_every_window_at_least_once(output: Path, expected: set, kills: int) -> None:
    """At-least-once across ``kills`` kills: a window may come twice, but each
    line is exactly one of the ``expected`` windows and none is missing. A
    line cut by a kill is followed, on the same line, by the next run's first
    line (at most one such torn line per kill)."""
    lines = output.read_text(errors="replace").splitlines()
    whole = {line for line in lines if line in expected}
    torn = [line for line in lines if line not in expected]
    assert len(torn) <= kills, torn[:3]
    unexplained = [t for t in torn if not any(t.endswith(e) or e.startswith(t) for e in expected)]
    assert unexplained == []
    rescued = {e for e in expected - whole for t in torn if t.endswith(e)}
    assert expected - whole - rescued == set()


def _kill_after_snapshots(chaos, workers: int, kills: int) -> int:
    """Kill the run (one process, started again by hand) or one of its
    workers ``kills`` times, each once every store holds a snapshot newer
    than at the last kill (:class:`test_recovery.Chaos`): each life makes
    progress and each start after a kill recovers, however loaded the
    machine; the exit code of the end."""
    return chaos.single(kills) if workers == 1 else chaos.workers(kills, workers)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("workers", [1, 2])
def test_count_windows_are_exact_across_kill_nine(tmp_path, workers):
    from test_recovery import Chaos

    records = tmp_path / "records.txt"
    expected = _expected_windows(records, 150_000 * workers, 400, size=7, seed=workers)
    output = tmp_path / "windows.txt"
    argv = [str(RESILIENT_APP), "--input", str(records), "--output", str(output),
            "--pause-every", "500", "--pause-ms", "60",
            "-r", str(tmp_path / "snapshots"), "--snapshot-interval", "0.3",
            "--workers", str(workers)]  # fmt: skip
    chaos = Chaos(argv, tmp_path, seed=70 + workers, log=tmp_path / "run.log", hold=True)
    code = _kill_after_snapshots(chaos, workers, kills=5)
    log = chaos.output()
    assert code == 0, log
    assert chaos.kills == 5 and chaos.recoveries() >= 5, log
    _assert_every_window_at_least_once(output, expected, chaos.kills)


@pytest.mark.timeout(420)
def test_count_windows_move_with_their_keys_across_2_3_2_workers(run_app, tmp_path):
    records = tmp_path / "records.txt"
    _expected_windows(records, 30_000, 300, size=7, seed=9)
    per_key: dict = defaultdict(list)
    for line in records.read_text().splitlines():
        key, seq = line.split()
        per_key[key].append(seq)
    snapshots = tmp_path / "snapshots"
    outputs = []
    for workers, limit in ((2, "10000"), (3, "20000"), (2, None)):
        output = tmp_path / f"windows-{workers}-{limit}.txt"
        extra = ["--max-records", limit] if limit else []
        result = run_app(
            RESILIENT_APP, "--input", str(records), "--output", str(output),
            "-r", str(snapshots), "--workers", str(workers), *extra, timeout=180,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        outputs.append(output)
    windows: dict = defaultdict(list)
    for output in outputs:
        for line in output.read_text().splitlines():
            key, seqs = line.split()
            windows[key].append(seqs.split(","))
    assert set(windows) == set(per_key)
    for key, seqs in per_key.items():
        # Open windows moved with their keys (--max-records keeps them open
        # in the snapshot): every window is full but the key's last, each
        # record in exactly one window, in order.
        expected = [seqs[i : i + 7] for i in range(0, len(seqs), 7)]
        assert windows[key] == expected, key


# ---------------------------------------------------------------------------
# Beyond 0.6: event time, watermarks, late events, epoch alignment
# ---------------------------------------------------------------------------


class Ids(wallaroo.Aggregation):
    """Collects record ids; empty windows output nothing."""

    def initial_accumulator(self):
        return []

    def update(self, data, acc):
        acc.append(data[1])

    def combine(self, a, b):
        return a + b

    def output(self, key, acc):
        return (key, sorted(acc)) if acc else None


@wallaroo.timestamp_extractor
def _event_time(data):
    return data[1]


def _event_stage(wrange, slide, lateness=0, idle=None, stage_id="test/event"):
    builder = wallaroo.range_windows(wrange).with_slide(slide).with_allowed_lateness(lateness)
    builder = builder.with_event_time(_event_time)
    if idle is not None:
        builder = builder.with_idle_timeout(idle)
    return wev.EventRangeStage(builder.over(Ids), lambda d: d[0], 1, stage_id)


def _feed(stage, states, records, origin=(0, 0)):
    """Run ``records`` through ``stage``; (outputs, late records)."""
    outs, late = [], []
    for record in records:
        state = states.setdefault(record[0], stage.new_state())
        result = stage.process(record, state, origin, source="src")
        outs.extend(result[0])
        if len(result) == 3:
            assert "late event" in result[2] and "watermark" in result[2]
            late.append(record)
    return outs, late


def test_event_time_windows_take_out_of_order_events_and_return_late_ones(monkeypatch):
    Clock(monkeypatch, 0)
    stage = _event_stage(10, 10, lateness=5)
    states: dict = {}
    records = [("k", 3), ("k", 12), ("k", 7), ("j", 1), ("k", 16), ("k", 8), ("j", 9), ("k", 25)]
    outs, late = _feed(stage, states, records)
    # [0,10) of k fires once the watermark (16) reaches 10 + 5; 7 came out of
    # order within the lateness and counts; 8 and j's 9 came after [0,10) was due
    # (j's fires on j's next record, before 9 is found late).
    assert outs == [("k", [3, 7]), ("j", [1]), ("k", [12, 16])]
    assert late == [("k", 8), ("j", 9)]
    assert stage.tick(states, final=True) == (["k"], [("k", [25])])


def test_event_time_sliding_windows_keep_partially_late_events(monkeypatch):
    Clock(monkeypatch, 0)
    stage = _event_stage(20, 10)
    states: dict = {}
    outs, late = _feed(stage, states, [("k", 5), ("k", 15), ("k", 21), ("k", 12), ("k", 32)])
    # Each event is in two windows ([-10,10) and [0,20) for 5). At 21 the
    # window [0,20) fired; 12 still counts in [10,30).
    assert outs == [("k", [5]), ("k", [5, 15]), ("k", [12, 15, 21])]
    assert late == []
    assert stage.tick(states, final=True) == (["k"], [("k", [21, 32]), ("k", [32])])


def test_an_earlier_event_of_a_key_opens_an_earlier_window(monkeypatch):
    Clock(monkeypatch, 0)
    stage = _event_stage(10, 10, lateness=10)
    states: dict = {}
    outs, late = _feed(stage, states, [("k", 14), ("k", 6), ("k", 30)])
    assert (outs, late) == ([("k", [6]), ("k", [14])], [])


def test_the_watermark_is_the_minimum_over_partitions_until_one_goes_idle(monkeypatch):
    clock = Clock(monkeypatch, 0)
    stage = _event_stage(10, 10, idle=1000)
    states: dict = {}
    _feed(stage, states, [("k", 1)], origin=(0, 0))
    outs, _ = _feed(stage, states, [("k", 50), ("k", 60)], origin=(0, 1))
    assert outs == [] and stage.watermark(clock.now) == 1  # partition (0, 0) holds it back
    assert not stage.tick(states, final=False)
    clock.now = 1001  # partition (0, 0) idle: it stops holding the watermark back
    assert stage.watermark(clock.now) == 60
    assert stage.tick(states, final=False) == (["k"], [("k", [1]), ("k", [50])])
    # Idle partition (0, 0) sends again: late for windows that fired.
    outs, late = _feed(stage, states, [("k", 2)], origin=(0, 0))
    assert late == [("k", 2)]


def test_workers_share_partitions_so_each_waits_for_every_partition(monkeypatch):
    """The stages of two workers of one cluster, A and B, and what each shares
    with its timer ticks (``timer(states, (final, shared))``): B's watermark
    waits for partition (0, 0), which only A heard, so an event of (0, 0) for
    one of B's keys is not late; what a worker learned and shares back (an
    echo) does not keep an idle partition alive."""
    clock = Clock(monkeypatch, 0)
    a = _event_stage(10, 10, idle=1000, stage_id="test/share/a")
    b = _event_stage(10, 10, idle=1000, stage_id="test/share/b")
    a_states: dict = {}
    b_states: dict = {}
    _feed(a, a_states, [("a", 1)], origin=(0, 0))
    assert a.timer(a_states, False) is None
    assert b.timer(b_states, (False, a.share())) is None  # no key of its own yet
    outs, late = _feed(b, b_states, [("b", 50), ("b", 60), ("b", 5)], origin=(0, 1))
    assert (outs, late) == ([], []) and b.watermark(clock.now) == 1
    outs, late = _feed(b, b_states, [("b", 4)], origin=(0, 0))
    assert (outs, late) == ([], [])
    assert b.timer(b_states, (False, a.share())) is None
    assert b.watermarks() == (4, [("src", 0, 0, 4, False), ("src", 0, 1, 60, False)])
    # Alone, B's watermark would have been 60 at its record of 60, and 5 late.
    alone = _event_stage(10, 10, idle=1000, stage_id="test/share/alone")
    outs, late = _feed(alone, {}, [("b", 50), ("b", 60), ("b", 5)], origin=(0, 1))
    assert late == [("b", 5)]
    # Later, A hears a partition of its own; (0, 0) and (0, 1) were last heard
    # at 0, also in what B shares back: idle, they stop holding A back.
    clock.now = 1500
    _feed(a, a_states, [("a", 100)], origin=(0, 2))
    assert a.timer(a_states, (False, b.share())) == (["a"], [("a", [1])])
    assert a.watermark(clock.now) == 100
    # The final tick: every window left fires, shared or not.
    fired = (["b"], [("b", [4, 5]), ("b", [50]), ("b", [60])])
    assert b.timer(b_states, (True, a.share())) == fired


def test_watermarks_travel_with_the_keys_windows(monkeypatch):
    import pickle

    Clock(monkeypatch, 0)
    stage = _event_stage(10, 10, stage_id="test/travel")
    states: dict = {}
    _feed(stage, states, [("k", 5), ("k", 47)])
    blob = pickle.dumps(states["k"])
    # A new process: the stage starts empty; restoring a key brings back the watermarks.
    fresh = _event_stage(10, 10, stage_id="test/travel")
    assert fresh.watermark(0) is None
    restored = pickle.loads(blob)
    assert fresh.watermark(0) == 47
    outs, late = _feed(fresh, {"k": restored}, [("k", 30)])
    assert late == [("k", 30)]  # [30, 40) is due at watermark 47


def test_a_key_with_one_pane_holds_it_flat_and_old_snapshots_still_restore(monkeypatch):
    import pickle

    Clock(monkeypatch, 0)
    stage = _event_stage(20, 10, stage_id="test/flat")
    states: dict = {}
    _feed(stage, states, [("k", 5), ("k", 6)])
    key = states["k"]
    assert (key.at, key.acc, key.panes) == (0, [5, 6], {})  # one pane: flat
    # 12 is past [-10, 10): it fires, then its pane is the second one.
    assert _feed(stage, states, [("k", 12)]) == ([("k", [5, 6])], [])
    assert (key.at, key.panes) == (None, {0: [5, 6], 10: [12]})  # two: in ``panes``
    # Firing [0, 20) leaves one pane: flat again.
    assert _feed(stage, states, [("j", 21)]) == ([], [])
    assert stage.tick(states, final=False) == (["k"], [("k", [5, 6, 12])])
    assert (key.at, key.acc, key.panes) == (10, [12], {})
    assert stage.open_windows == 1 + 2  # k's [10, 30); j's [10, 30) and [20, 40)
    # A key pickled before the flat pane (no ``at``, its pane in ``panes``).
    fields = pickle.loads(pickle.dumps(key)).__reduce__()[1][0]
    del fields["at"]
    fields["panes"], fields["acc"] = {10: [12]}, None
    fresh = _event_stage(20, 10, stage_id="test/flat")
    restored = win._restore_key_windows(fields)
    assert fresh._open_of(restored) == 1
    assert fresh.tick({"k": restored}, final=True) == (["k"], [("k", [12])])
    assert restored.at is None and restored.panes == {} and restored.due is None


class Shared(Ids):
    """Ids whose output is the accumulator itself (no copy), as the contract allows."""

    def output(self, key, acc):
        return (key, acc)


def test_an_output_kept_downstream_never_changes_after_it_was_made(monkeypatch):
    Clock(monkeypatch, 0)
    builder = wallaroo.range_windows(20).with_slide(10).with_event_time(_event_time)
    stage = wev.EventRangeStage(builder.over(Shared), lambda d: d[0], 1, "test/shared")
    states: dict = {}
    # Each pane [0, 10) is in [-10, 10) and [0, 20). j's 11 makes [-10, 10)
    # due: m's 8 fires m's on its record, then goes into the same pane; the
    # timer fires k's, then k's 7 goes into that pane.
    kept, late = _feed(stage, states, [("k", 5), ("m", 5), ("j", 11), ("m", 8)])
    kept += stage.tick(states, final=False)[1]
    more, late2 = _feed(stage, states, [("k", 7), ("j", 24)])
    kept += more + stage.tick(states, final=False)[1] + stage.tick(states, final=True)[1]
    assert late == late2 == []
    per_key: dict = defaultdict(list)
    for key, ids in kept:
        per_key[key].append(ids)
    assert per_key == {"k": [[5], [5, 7]], "m": [[5], [5, 8]], "j": [[11], [11, 24], [24]]}


class Bounds(Ids):
    """Ids with each window's bounds in its output."""

    def output_window(self, key, acc, start, end):
        return (key, start, sorted(acc))


def test_every_due_window_fires_on_the_tick_and_no_other_does(monkeypatch):
    """Random out-of-order events of a few keys, a timer tick after random
    records: after each tick the windows fired so far are exactly those due,
    computed here from the events taken (a window holding one of them, not
    due when it came, and ending at least the allowed lateness before the
    newest event time)."""
    Clock(monkeypatch, 0)
    rng = random.Random(19)
    for trial in range(300):
        slide = rng.choice([1, 2, 5])
        wrange = slide * rng.choice([1, 2, 3])
        lateness = rng.choice([0, 1, 4])
        builder = wallaroo.range_windows(wrange).with_slide(slide)
        builder = builder.with_allowed_lateness(lateness).with_event_time(_event_time)
        stage = wev.EventRangeStage(builder.over(Bounds), lambda d: d[0], 1, f"test/due{trial}")
        states: dict = {}
        taken: dict = defaultdict(set)
        fired: list = []
        newest, t = None, 0
        for _ in range(rng.randint(1, 40)):
            t += rng.randint(0, 4)
            record = (rng.choice("abc"), max(0, t - rng.choice([0, 0, 3, 9])))
            result = stage.process(record, states.setdefault(record[0], stage.new_state()), (0, 0))
            fired += result[0]
            newest = record[1] if newest is None else max(newest, record[1])
            if len(result) == 2:
                taken[record[0]].add((record[1], newest))
            if rng.random() < 0.5:
                fired += (stage.tick(states, False) or ([], []))[1]
                due = {
                    (key, start)
                    for key, times in taken.items()
                    for e, then in times
                    for start in range(e // slide * slide - wrange + slide, e + 1, slide)
                    # Due now, and not yet when the event came (it joined no due window).
                    if then - lateness < start + wrange <= newest - lateness
                }
                assert sorted((key, start) for key, start, _ in fired) == sorted(due), trial


def test_event_times_in_every_accepted_form():
    import datetime as dt

    assert wev.event_ns(5) == 5
    assert wev.event_ns(1.5) == 1_500_000_000
    assert wev.event_ns("1970-01-01T00:00:02Z") == 2 * 10**9
    assert wev.event_ns(dt.datetime(1970, 1, 1, 0, 0, 3)) == 3 * 10**9
    with pytest.raises(TypeError):
        wev.event_ns(None)


def test_epoch_aligned_ingest_time_windows_start_on_the_grid(monkeypatch):
    clock = Clock(monkeypatch, 1234)
    spec = wallaroo.range_windows(100).aligned_to_epoch().over(Sum)
    stage = win.RangeStage(spec, lambda d: "k", feeders=1)
    state = stage.new_state()
    stage.process(1, state)
    assert state.next_start == 1200  # the window of 1234 starts on the hour, so to speak
    clock.now = 1299
    stage.process(2, state)
    clock.now = 1301
    assert stage.process(4, state) == ([("k", 3)], True)
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo.range_windows(100).aligned_to_epoch().aligned_to_epoch()
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo.range_windows(100).with_delay(1).with_allowed_lateness(1)


EVENT_APP = APPS / "event_windows_06.py"
RANGE, SLIDE, LATENESS = 100, 50, 20


def _event_inputs(path: Path, n: int, keys: int, seed: int) -> tuple:
    """Write ``n`` events out of order (each up to LATENESS ms behind the newest
    event time so far: never late, whatever worker sees it) and about 3% very
    late ones (a full window plus the lateness behind their own key's newest
    event: late on any worker). Returns (expected window lines, late ids),
    computed directly from the events (a line per window: two sliding windows
    may hold the same events)."""
    rng = random.Random(seed)
    clock = 10_000
    newest: dict = {}
    lines, windows, late = [], defaultdict(list), set()
    for ident in range(n):
        clock += rng.randrange(0, 3)
        key = f"k{rng.randrange(keys)}"
        if key in newest and rng.random() < 0.03:
            ms = newest[key] - (RANGE + LATENESS + rng.randrange(1, 300))
            late.add(str(ident))
        else:
            ms = clock - rng.randrange(0, LATENESS + 1)
            newest[key] = max(newest.get(key, ms), ms)
            last = ms // SLIDE * SLIDE
            for start in range(last - RANGE + SLIDE, last + 1, SLIDE):
                windows[(key, start)].append(str(ident))
        lines.append(f"{key} {ms} {ident}\n")
    path.write_text("".join(lines))
    expected = [f"{key} {','.join(ids)}" for (key, _start), ids in windows.items()]
    return expected, late


def _late_ids(dead_letter: Path) -> list:
    import ast
    import base64
    import json

    ids = []
    for line in dead_letter.read_text().splitlines():
        entry = json.loads(line)
        assert entry["kind"] == "late_event", entry
        assert "late event" in entry["error"] and "watermark" in entry["error"], entry
        record = ast.literal_eval(base64.b64decode(entry["payload_base64"]).decode())
        # Where it came from: the source's line (1-based; event ids count from
        # 0), called a frame by a worker that did not read the file.
        assert entry["pipeline"] == "Events", entry
        line = int(record[2]) + 1
        assert re.search(rf"(events.txt line|source frame) {line} ", entry["position"]), entry
        ids.append(record[2])
    return ids


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [1, 2])
def test_event_time_windows_keep_late_events(run_app, tmp_path, workers):
    events = tmp_path / "events.txt"
    expected, late = _event_inputs(events, 6000, 40, seed=workers)
    output, dead = tmp_path / "windows.txt", tmp_path / "late.jsonl"
    result = run_app(
        EVENT_APP, "--input", str(events), "--output", str(output),
        "--dead-letter", str(dead), "--workers", str(workers), timeout=150,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = output.read_text().splitlines()
    assert sorted(lines) == sorted(expected)  # every window once, exactly its events
    assert sorted(_late_ids(dead), key=int) == sorted(late, key=int)  # each late one kept once
    # Counted in the run summary (each worker's).
    counted = re.findall(r"bad input: (\d+) late_event", result.stderr)
    assert sum(map(int, counted)) == len(late), result.stderr


@pytest.mark.timeout(420)
@pytest.mark.parametrize("workers", [1, 2])
def test_event_time_windows_are_exact_across_kill_nine(tmp_path, workers):
    from test_recovery import Chaos

    events = tmp_path / "events.txt"
    windows, late = _event_inputs(events, 60_000 * workers, 300, seed=20 + workers)
    expected = set(windows)
    output, dead = tmp_path / "windows.txt", tmp_path / "late.jsonl"
    argv = [str(EVENT_APP), "--input", str(events), "--output", str(output),
            "--dead-letter", str(dead), "--pause-every", "250", "--pause-ms", "60",
            "-r", str(tmp_path / "snapshots"), "--snapshot-interval", "0.3",
            "--workers", str(workers)]  # fmt: skip
    chaos = Chaos(argv, tmp_path, seed=80 + workers, log=tmp_path / "run.log", hold=True)
    code = _kill_after_snapshots(chaos, workers, kills=4)
    log = chaos.output()
    assert code == 0, log
    assert chaos.kills == 4 and chaos.recoveries() >= 4, log
    _assert_every_window_at_least_once(output, expected, chaos.kills)
    assert set(_late_ids(dead)) == late  # late events kept (again after a replay)


@pytest.mark.timeout(420)
def test_event_time_windows_move_with_their_keys_across_2_3_2_workers(run_app, tmp_path):
    events = tmp_path / "events.txt"
    expected, late = _event_inputs(events, 20_000, 200, seed=5)
    snapshots = tmp_path / "snapshots"
    lines, late_seen = [], []
    for workers, limit in ((2, "7000"), (3, "14000"), (2, None)):
        output = tmp_path / f"windows-{workers}-{limit}.txt"
        dead = tmp_path / f"late-{workers}-{limit}.jsonl"
        extra = ["--max-records", limit] if limit else []
        result = run_app(
            EVENT_APP, "--input", str(events), "--output", str(output),
            "--dead-letter", str(dead), "-r", str(snapshots), "--workers", str(workers),
            *extra, timeout=180,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        lines += output.read_text().splitlines()
        late_seen += _late_ids(dead) if dead.exists() else []
    # Open windows and watermarks moved with their keys (--max-records keeps
    # windows open in the snapshot): every window once, none lost.
    assert sorted(lines) == sorted(expected)
    assert sorted(late_seen, key=int) == sorted(late, key=int)


def test_the_timer_fires_keys_whose_windows_fired_on_their_records_before(monkeypatch):
    Clock(monkeypatch, 0)
    stage = _event_stage(10, 10)
    states: dict = {}
    _feed(stage, states, [("k", 1), ("j", 2)])
    _feed(stage, states, [("k", 15)])  # fires k's [0,10) on k's record; k now waits at 10
    assert stage.tick(states, final=False) == (["j"], [("j", [2])])
    _feed(stage, states, [("j", 31)])  # the watermark passes k's [10,20) without k
    keys, outs = stage.tick(states, final=False)
    assert "k" in keys and ("k", [15]) in outs
    # A new key whose first event is late, then an on-time one.
    outs, late = _feed(stage, states, [("n", 3), ("n", 35)])
    assert late == [("n", 3)] and outs == []
    assert stage.tick(states, final=True) == (["j", "n"], [("j", [31]), ("n", [35])])


def test_the_timer_fires_a_key_whose_late_event_fired_its_windows(monkeypatch):
    Clock(monkeypatch, 0)
    stage = _event_stage(10, 10, lateness=5)
    states: dict = {}
    _feed(stage, states, [("k", 5), ("k", 18), ("k", 24), ("j", 33)])
    # k's late event fires k's [10,20) on the way (the watermark is 33)...
    outs, late = _feed(stage, states, [("k", 1)])
    assert (outs, late) == ([("k", [18])], [("k", 1)])
    # ... and the timer still knows when k's [20,30) is due.
    _feed(stage, states, [("j", 45)])
    keys, outs = stage.tick(states, final=False)
    assert "k" in keys and ("k", [24]) in outs
