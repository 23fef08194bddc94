"""Crash recovery with ``-r/--resilience-dir``: kill -9 at random moments,
start again, and nothing is lost or counted twice.

The counting app (``tests/apps/resilient_count.py``) emits ``key count`` for
every record; output is at-least-once (lines after the last snapshot come
again), so a key's highest count is its number of records exactly when state
counted each record once. Kafka runs use a tansu broker that runs apart from
the engine (``tests/kafka_broker.py``).
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
from conftest import APPS_DIR, RunningApp, app_env

COUNT_APP = APPS_DIR / "resilient_count.py"
LINE = re.compile(r"^(k\d+) (\d+)$")
#: The counting app sleeps 15 ms every 50 records: at most 3.3k records/s per
#: process, so a run lasts long enough to be killed many times while it needs
#: little CPU. With ``Chaos(hold=True)`` the pauses stop after the last kill.
SLOW = ["--pause-every", "50", "--pause-ms", "15"]


def write_keys(path: Path, n: int, keys: int, seed: int) -> collections.Counter:
    rng = random.Random(seed)
    lines = [f"k{rng.randrange(keys)}" for _ in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return collections.Counter(lines)


def final_counts(path: Path, expected: collections.Counter) -> tuple:
    """``({key: highest count}, lines that are not records)``: a record cut by
    a kill stays as it was in the file, the next run appends after it."""
    got: dict = {}
    torn = 0
    with open(path, errors="replace") as lines:
        for line in lines:
            match = LINE.match(line.rstrip("\n"))
            if not match or match.group(1) not in expected:
                torn += 1
                continue
            key, n = match.group(1), int(match.group(2))
            got[key] = max(got.get(key, 0), n)
    return got, torn


def assert_exact(got: dict, expected: collections.Counter) -> None:
    wrong = {k: (n, got.get(k)) for k, n in expected.items() if got.get(k) != n}
    assert not wrong, f"{len(wrong)} keys wrong (expected, got), e.g. {list(wrong.items())[:5]}"


def children_of(pid: int) -> list:
    """Live child processes of ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM ``proc`` (a run or a supervisor) if it still runs, then make
    sure no worker of it is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    for child in children_of(proc.pid):
        os.kill(child, signal.SIGKILL)


def newest_snapshots(store: Path) -> dict:
    """``{store file: newest snapshot id that holds state}`` of the run's
    stores (one per worker). A store being written is read as it was."""
    newest = {}
    for path in store.glob("*.sqlite"):
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
                (snap,) = db.execute("SELECT MAX(snap) FROM state").fetchone()
        except sqlite3.Error:
            continue
        newest[path.name] = snap or 0
    return newest


class Chaos:
    """Runs a command and kills it (or one of its workers) with SIGKILL,
    ``kills`` times, starting it again each time.

    A kill lands at a random moment *after* an event: every worker's store
    holds a snapshot with state newer than at the last kill (records went
    through and were snapshotted since). So each life makes progress and
    each start after a kill recovers from a snapshot, however slow the
    machine is, and a test asserts outcomes (exact counts, one recovery per
    kill) rather than timings.

    With ``hold=True`` the app is paced with ``--hold-file`` (apps/pacing.py):
    its pauses apply until the last kill is made, then the rest of its input
    runs unpaced. So a run cannot run out of input before its kills however
    slowly its lives start, and the test lasts no longer for it."""

    def __init__(self, argv: list, cwd: Path, seed: int, log: Path, hold: bool = False) -> None:
        self.argv = [sys.executable, "-m", "wallaroo", *argv]
        self.hold_file = cwd / "hold"
        if hold:
            self.hold_file.touch()
            self.argv += ["--hold-file", str(self.hold_file)]
        self.cwd = cwd
        self.store = cwd / "snapshots"
        self.rng = random.Random(seed)
        self.log = log
        self.kills = 0
        #: Newest snapshot with state per store at the last kill.
        self._seen: dict = {}

    def _start(self) -> subprocess.Popen:
        with open(self.log, "ab") as log:
            return subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=app_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_progress(
        self,
        stores: int,
        proc: subprocess.Popen,
        timeout: float = 180,
        meanwhile: Callable[[], None] | None = None,
    ) -> bool:
        """Wait until ``stores`` stores hold a snapshot with state newer than at
        the last kill; ``False`` when ``proc`` ended first. ``meanwhile`` runs
        between looks (instead of a short sleep)."""
        deadline = time.monotonic() + timeout
        while True:
            newest = newest_snapshots(self.store)
            newer = [n for name, n in newest.items() if n > self._seen.get(name, 0)]
            if len(newer) >= stores:
                return True
            if proc.poll() is not None:
                return False
            if time.monotonic() > deadline:
                pytest.fail(f"no new snapshot within {timeout} s ({newest})\n{self.output()}")
            if meanwhile is not None:
                meanwhile()
            else:
                time.sleep(0.05)

    def kill_after_a_snapshot(
        self, proc: subprocess.Popen, stores: int = 1,
        meanwhile: Callable[[], None] | None = None,
        victims: Callable[[], list] | None = None,
    ) -> bool:  # fmt: skip
        """Wait for :meth:`wait_progress`, then a random 0-0.5 s, then SIGKILL
        one of ``victims()`` (the processes alive then, by default ``proc``;
        none: look again). ``False`` (and no kill) when ``proc`` ended first."""
        if victims is None:
            victims = lambda: [proc.pid]  # noqa: E731
        if not self.wait_progress(stores, proc, meanwhile=meanwhile):
            return False
        pause = time.monotonic() + self.rng.uniform(0.0, 0.5)
        while True:
            if meanwhile is not None:
                meanwhile()
            else:
                time.sleep(0.02)
            if proc.poll() is not None:
                return False
            alive = victims() if time.monotonic() >= pause else []
            if alive:
                try:
                    os.kill(self.rng.choice(alive), signal.SIGKILL)
                except ProcessLookupError:  # ended between the look and the kill
                    continue
                break
        self._seen = newest_snapshots(self.store)
        self.kills += 1
        return True

    def workers_of(self, supervisor: subprocess.Popen, workers: int) -> Callable[[], list]:
        """The supervisor's worker processes, once all ``workers`` run."""

        def alive() -> list:
            found = children_of(supervisor.pid)
            return found if len(found) == workers else []

        return alive

    def single(self, kills: int, timeout: float = 480) -> int:
        """One process: kill it, start it again by hand (as a user would)."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self._start()
            if self.kills < kills and self.kill_after_a_snapshot(proc):
                proc.wait()
                continue
            self.release()
            try:
                return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                pytest.fail(f"the run did not finish\n{self.output()}")

    def workers(self, kills: int, workers: int, timeout: float = 480) -> int:
        """``--workers N``: kill a random worker once every worker's store
        has a new snapshot; the supervisor starts it again and the others
        restart by themselves."""
        deadline = time.monotonic() + timeout
        supervisor = self._start()
        try:
            while self.kills < kills and supervisor.poll() is None:
                self.kill_after_a_snapshot(
                    supervisor, workers, victims=self.workers_of(supervisor, workers)
                )
            self.release()
            return supervisor.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not finish\n{self.output()}")
        finally:
            stop(supervisor)

    def release(self) -> None:
        """The kills are done: the app's pacing stops (``hold=True``)."""
        self.hold_file.unlink(missing_ok=True)

    def output(self) -> str:
        return self.text()[-6000:]

    def recoveries(self) -> int:
        """How many times a process went on from a snapshot."""
        return self.text().count("recovered snapshot")


def kill_ten_times_and_check_counts(
    chaos: Chaos, workers: int, output: Path, expected: collections.Counter
) -> None:
    """Kill the counting app ten times (one process, or a worker of the
    cluster), let it finish, and check that every key's count is exact and
    that the restarts went on from snapshots."""
    code = chaos.single(kills=10) if workers == 1 else chaos.workers(10, workers)
    log = chaos.output()
    assert code == 0, log
    assert chaos.kills >= 10, f"the run ended after {chaos.kills} kills\n{log}"
    got, torn = final_counts(output, expected)
    assert torn <= chaos.kills
    assert_exact(got, expected)
    # Every kill came after a snapshot of each worker: every restart recovered.
    assert chaos.recoveries() >= chaos.kills, log


# ---------------------------------------------------------------------------
# kill -9, file source
# ---------------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(600)
@pytest.mark.parametrize("workers", [1, 2])
def test_kill_nine_file_source_counts_every_record_once(tmp_path: Path, workers: int) -> None:
    keys = tmp_path / "keys.txt"
    # About 48 s of paced input, four times what ten lives need on a busy
    # machine; what is left after the last kill runs unpaced (hold=True).
    expected = write_keys(keys, 160_000 * workers, 2_000, seed=workers)
    output = tmp_path / "counts.txt"
    argv = [str(COUNT_APP), "--input", str(keys), "--output", str(output), *SLOW,
            "-r", str(tmp_path / "snapshots"), "--snapshot-interval", "0.3",
            "--workers", str(workers)]  # fmt: skip
    chaos = Chaos(argv, tmp_path, seed=40 + workers, log=tmp_path / "run.log", hold=True)
    kill_ten_times_and_check_counts(chaos, workers, output, expected)


@pytest.mark.chaos
@pytest.mark.timeout(480)
def test_worker_killed_and_restarted_by_hand_with_its_flags(tmp_path: Path) -> None:
    """No supervisor: a member is killed and started again by hand with its
    original flags; the initializer restarts by itself and the cluster goes
    on from the last complete snapshot."""
    from conftest import _free_port

    keys = tmp_path / "keys.txt"
    expected = write_keys(keys, 120_000, 2_000, seed=11)
    output = tmp_path / "counts.txt"
    hold = tmp_path / "hold"  # paced until the last kill (apps/pacing.py)
    hold.touch()
    control, data, member_data = (f"127.0.0.1:{_free_port()}" for _ in range(3))
    common = [sys.executable, "-m", "wallaroo", str(COUNT_APP), "--input", str(keys),
              "--output", str(output), *SLOW, "--hold-file", str(hold),
              "-r", str(tmp_path / "snapshots"),
              "--snapshot-interval", "0.3", "-w", "2", "-c", control]  # fmt: skip
    initializer_argv = [*common, "-t", "-d", data, "-n", "first"]
    member_argv = [*common, "-y", member_data, "-n", "second"]
    logs = {name: open(tmp_path / f"{name}.log", "ab") for name in ("first", "second")}

    def start(argv: list, name: str) -> subprocess.Popen:
        return subprocess.Popen(argv, cwd=tmp_path, env=app_env(), stdin=subprocess.DEVNULL,
                                stdout=logs[name], stderr=logs[name])  # fmt: skip

    initializer = start(initializer_argv, "first")
    member = start(member_argv, "second")
    store = tmp_path / "snapshots"
    try:
        seen: dict = {}
        for _ in range(3):
            # Both stores hold a snapshot with state newer than at the last
            # kill (the initializer restarts itself once the member is back).
            deadline = time.monotonic() + 180
            while True:
                newest = newest_snapshots(store)
                if len(newest) == 2 and all(n > seen.get(k, 0) for k, n in newest.items()):
                    break
                assert member.poll() is None and initializer.poll() is None
                assert time.monotonic() < deadline, f"no new snapshot within 180 s: {newest}"
                time.sleep(0.05)
            member.kill()
            member.wait()
            seen = newest_snapshots(store)
            member = start(member_argv, "second")
        hold.unlink()
        assert initializer.wait(timeout=180) == 0
        assert member.wait(timeout=30) == 0
    finally:
        stop(initializer)
        stop(member)
        for log in logs.values():
            log.close()
    first = (tmp_path / "first.log").read_text(errors="replace")
    assert "restarting this worker to recover" in first, first[-3000:]
    assert first.count("recovered snapshot") >= 2, first[-3000:]
    got, torn = final_counts(output, expected)
    assert torn <= 3
    assert_exact(got, expected)


# ---------------------------------------------------------------------------
# kill -9, Kafka source
# ---------------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(600)
@pytest.mark.parametrize("workers", [1, 2])
def test_kill_nine_kafka_source_counts_every_record_once(
    tmp_path: Path, broker, workers: int
) -> None:
    topic = f"keys-{workers}-{os.getpid()}"
    broker.create_topic(topic, partitions=4)
    from confluent_kafka import Producer

    # 48 s of paced input per worker (a Kafka source's lives are slower to
    # start than a file's); what is left after the last kill runs unpaced.
    per_partition = 40_000
    rng = random.Random(7 + workers)
    expected: collections.Counter = collections.Counter()
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 50})
    for partition in range(4):
        for _ in range(per_partition):
            key = f"k{rng.randrange(2_000)}"
            expected[key] += 1
            producer.produce(topic, key.encode(), partition=partition)
            if len(producer) > 50_000:
                producer.poll(0.1)
    assert producer.flush(60) == 0
    output = tmp_path / "counts.txt"
    # Each worker reads its share of the 4 partitions; --max-records bounds
    # the run (per worker source). A worker reading a smaller share pauses
    # longer, so the run lasts as long whatever the worker count.
    paced = ["--pause-every", "50", "--pause-ms", str(15 * workers)]
    argv = [str(COUNT_APP), "--kafka_source_topic", topic,
            "--kafka_source_brokers", broker.bootstrap, "--output", str(output), *paced,
            "--max-records", str(4 * per_partition // workers),
            "-r", str(tmp_path / "snapshots"), "--snapshot-interval", "0.3",
            "--workers", str(workers)]  # fmt: skip
    chaos = Chaos(argv, tmp_path, seed=50 + workers, log=tmp_path / "run.log", hold=True)
    kill_ten_times_and_check_counts(chaos, workers, output, expected)


@pytest.mark.chaos
@pytest.mark.timeout(600)
def test_transactional_kafka_sink_commits_at_snapshots_across_kills(
    tmp_path: Path, broker
) -> None:
    """``--kafka-sink-transactions`` against tansu. Tansu accepts the
    transaction calls but has no read_committed isolation (aborted records
    stay visible, shared/KAFKA.md), so this proves the code path (fencing a
    killed predecessor, a commit per snapshot, nothing lost across kills), not
    that read_committed consumers see each record once."""
    source, sink = f"tx-in-{os.getpid()}", f"tx-out-{os.getpid()}"
    broker.create_topic(source, partitions=2)
    broker.create_topic(sink, partitions=1)
    rng = random.Random(5)
    keys = [f"k{rng.randrange(2_000)}" for _ in range(30_000)]
    expected = collections.Counter(keys)
    broker.produce(source, [k.encode() for k in keys])
    argv = [str(COUNT_APP), "--kafka_source_topic", source, "--kafka_source_brokers",
            broker.bootstrap, "--kafka_sink_topic", sink, "--kafka_sink_brokers",
            broker.bootstrap, "--kafka-sink-transactions", *SLOW,
            "--max-records", str(len(keys)), "-r", str(tmp_path / "snapshots"),
            "--snapshot-interval", "0.3"]  # fmt: skip
    chaos = Chaos(argv, tmp_path, seed=9, log=tmp_path / "run.log", hold=True)
    code = chaos.single(kills=3)
    log = chaos.log.read_text(errors="replace")
    assert code == 0, log[-6000:]
    # Each start (killed after its first snapshot, or the last) made one.
    assert log.count("transactional producer") == chaos.kills + 1
    assert chaos.recoveries() >= chaos.kills
    got: dict = {}
    for record in broker.consume(sink, 10 * len(keys), timeout=15):
        key, n = record.value.decode().split()
        got[key] = max(got.get(key, 0), int(n))
    assert_exact(got, expected)


def test_transactions_need_a_resilience_dir(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wallaroo", str(COUNT_APP), "--kafka_source_topic", "t",
         "--kafka_sink_topic", "u", "--kafka-sink-transactions"],
        cwd=tmp_path, env=app_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "needs -r/--resilience-dir" in result.stderr


# ---------------------------------------------------------------------------
# damaged snapshots, other applications, rescale, TCP
# ---------------------------------------------------------------------------


def run_count(tmp_path: Path, keys: Path, output: Path, *extra: str, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "wallaroo", str(COUNT_APP), "--input", str(keys),
         "--output", str(output), "-r", str(tmp_path / "snapshots"), *extra],
        cwd=tmp_path, env=app_env(), capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_newest_snapshot_falls_back_to_the_previous_one(
    tmp_path: Path, damage: str
) -> None:
    keys = tmp_path / "keys.txt"
    expected = write_keys(keys, 20_000, 500, seed=3)
    first = run_count(tmp_path, keys, tmp_path / "a.txt", "--max-records", "10000")
    assert first.returncode == 0, first.stderr
    # A second bounded stretch: the newest snapshot now holds the keys that
    # changed in it, the previous one is still there.
    second = run_count(tmp_path, keys, tmp_path / "b.txt", "--max-records", "15000")
    assert second.returncode == 0, second.stderr
    store = tmp_path / "snapshots" / "initializer.sqlite"
    with sqlite3.connect(store) as db:
        # The newest snapshot that changed state (the last ones of a run that
        # ended may have nothing to write).
        (newest,) = db.execute("SELECT MAX(snap) FROM state").fetchone()
        if damage == "truncated":
            db.execute(
                "UPDATE state SET value = substr(value, 1, length(value) / 2) WHERE snap = ?",
                (newest,),
            )
        else:
            db.execute(
                "UPDATE state SET value = randomblob(length(value)) WHERE snap = ?", (newest,)
            )
    third = run_count(tmp_path, keys, tmp_path / "c.txt")
    assert third.returncode == 0, third.stderr
    assert re.search(rf"snapshot \d+ is damaged \(.*snapshot {newest}", third.stderr) or (
        f"snapshot {newest} is damaged" in third.stderr
    ), third.stderr
    assert "recovering from an earlier snapshot" in third.stderr
    recovered = re.search(r"recovered snapshot (\d+)", third.stderr)
    assert recovered and int(recovered.group(1)) < newest
    # The earlier snapshot's positions and state go together: still exact.
    got: dict = {}
    for name in ("a.txt", "b.txt", "c.txt"):
        for key, n in final_counts(tmp_path / name, expected)[0].items():
            got[key] = max(got.get(key, 0), n)
    # Counts from the damaged stretch were produced again from the older
    # state: the highest count per key is still exact.
    assert_exact(got, expected)


def wait_for(what: str, until: Callable[[], object], timeout: float, log: Callable[[], str]):
    """Poll ``until()`` every 50 ms until it returns something true; fail
    the test with ``log()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = until()
        if found:
            return found
        time.sleep(0.05)
    pytest.fail(f"waited {timeout} s for {what}\n{log()[-4000:]}")


def newest_stored(store: Path) -> int:
    """The newest snapshot id in a store (0: none or not readable now)."""
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COALESCE(MAX(id), 0) FROM snapshots").fetchone()[0]
    except sqlite3.Error:
        return 0


NOT_STORED = re.compile(r"snapshot (\d+) not (?:stored|written)")


@pytest.mark.timeout(300)
def test_snapshots_failing_on_a_full_disk_lose_no_state(tmp_path: Path, small_fs) -> None:
    """The store's disk fills up mid-run, snapshots fail, the disk is freed,
    the run is killed: started again, every key's count is exact. Each key's
    records come in two blocks, one in each half of the input: a key counted
    only while snapshots failed is in a later snapshot only if the failed
    ones' keys were carried over, and its second block counts on from there."""
    keys = tmp_path / "keys.txt"
    lines = [f"k{(i // 2000) % 150}" for i in range(600_000)]
    keys.write_text("\n".join(lines) + "\n")
    expected = collections.Counter(lines)
    output = tmp_path / "counts.txt"
    snapshots = small_fs.path / "snapshots"
    store = snapshots / "initializer.sqlite"
    common = [sys.executable, "-m", "wallaroo", str(COUNT_APP), "--input", str(keys),
              "--output", str(output), "-r", str(snapshots), "--snapshot-interval", "0.2"]
    running = RunningApp([*common, "--pause-every", "1000", "--pause-ms", "30"],
                         app_env(), str(tmp_path))  # fmt: skip
    try:
        wait_for("the first snapshot", lambda: newest_stored(store), 60, lambda: running.stderr)
        small_fs.fill()
        failed = wait_for(
            "three snapshots not stored",
            lambda: (ids := NOT_STORED.findall(running.stderr))[2:] and ids,
            60,
            lambda: running.stderr,
        )
        small_fs.free()
        last_failed = int(failed[-1])
        wait_for(
            "a snapshot stored after the failed ones",
            lambda: newest_stored(store) > last_failed,
            60,
            lambda: running.stderr,
        )
        assert running.proc.poll() is None, f"the run ended before the kill\n{running.stderr}"
    finally:
        running.proc.kill()
        running.proc.wait()
    again = subprocess.run(common, cwd=tmp_path, env=app_env(), capture_output=True, text=True,
                           timeout=180, stdin=subprocess.DEVNULL)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "recovered snapshot" in again.stderr, again.stderr
    got, torn = final_counts(output, expected)
    assert torn <= 1
    assert_exact(got, expected)


@pytest.mark.timeout(180)
def test_snapshots_failing_for_too_long_stop_the_run(tmp_path: Path, small_fs) -> None:
    """A disk that stays full: after --snapshot-give-up seconds of failed
    snapshots the run stops, exit 1, naming the store and the reason."""
    keys = tmp_path / "keys.txt"
    write_keys(keys, 600_000, 100, seed=4)
    snapshots = small_fs.path / "snapshots"
    store = snapshots / "initializer.sqlite"
    running = RunningApp(
        [sys.executable, "-m", "wallaroo", str(COUNT_APP), "--input", str(keys),
         "--output", str(tmp_path / "out.txt"), "--pause-every", "1000", "--pause-ms", "30",
         "-r", str(snapshots), "--snapshot-interval", "0.2", "--snapshot-give-up", "1"],
        app_env(), str(tmp_path),
    )  # fmt: skip
    try:
        wait_for("the first snapshot", lambda: newest_stored(store), 60, lambda: running.stderr)
        small_fs.fill()
        code = running.proc.wait(timeout=90)
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()
        small_fs.free()
    log = running.stderr
    assert code == 1, log[-4000:]
    error = [line for line in log.splitlines() if line.startswith("error:")]
    assert error, log[-4000:]
    assert str(store) in error[0] and "disk is full" in error[0], error
    assert "--snapshot-give-up" in error[0], error


def test_store_of_another_application_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    write_keys(keys, 1000, 10, seed=1)
    assert run_count(tmp_path, keys, tmp_path / "a.txt").returncode == 0
    other = subprocess.run(
        [sys.executable, "-m", "wallaroo", str(APPS_DIR / "word_count.py"),
         "--input", str(keys), "--output", str(tmp_path / "w.txt"),
         "-r", str(tmp_path / "snapshots")],
        cwd=tmp_path, env=app_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert other.returncode == 1, other.stderr
    assert "written by another application" in other.stderr
    assert "Resilient Count" in other.stderr


def test_store_of_another_format_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    write_keys(keys, 1000, 10, seed=1)
    assert run_count(tmp_path, keys, tmp_path / "a.txt").returncode == 0
    with sqlite3.connect(tmp_path / "snapshots" / "initializer.sqlite") as db:
        db.execute("UPDATE meta SET v = '99' WHERE k = 'format'")
    result = run_count(tmp_path, keys, tmp_path / "b.txt")
    assert result.returncode == 1
    assert "written in store format 99; this engine reads format 1" in result.stderr


def test_store_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    write_keys(keys, 1000, 10, seed=1)
    assert run_count(tmp_path, keys, tmp_path / "a.txt").returncode == 0
    store = tmp_path / "snapshots" / "initializer.sqlite"
    for extra in ("-wal", "-shm"):
        Path(str(store) + extra).unlink(missing_ok=True)
    store.write_bytes(os.urandom(8192))
    result = run_count(tmp_path, keys, tmp_path / "b.txt")
    assert result.returncode == 1
    assert f"move it away: mv {store} {store}.damaged" in result.stderr


@pytest.mark.parametrize("damage", ["bytes flipped mid-file", "a page zeroed"])
def test_damaged_store_file_is_refused_with_one_message(tmp_path: Path, damage: str) -> None:
    """Damage SQLite itself finds: one message saying what was found and
    how to move the store away; never a start from scratch."""
    keys = tmp_path / "keys.txt"
    write_keys(keys, 40_000, 3_000, seed=5)
    first = run_count(tmp_path, keys, tmp_path / "a.txt", "--max-records", "20000")
    assert first.returncode == 0, first.stderr
    store = tmp_path / "snapshots" / "initializer.sqlite"
    size = store.stat().st_size
    with open(store, "r+b") as f:
        if damage == "a page zeroed":
            f.seek(3 * 4096)
            f.write(bytes(4096))
        else:
            f.seek(size // 2 // 4096 * 4096)
            f.write(random.Random(1).randbytes(64 << 10))
    result = run_count(tmp_path, keys, tmp_path / "b.txt")
    err = result.stderr
    assert result.returncode == 1, err
    said = [line for line in err.splitlines() if str(store) in line]
    assert len(said) == 1, err
    assert said[0].startswith(f"error: resilience store {store}: is damaged ("), err
    assert f"move it away: mv {store} {store}.damaged" in err
    assert "starting from scratch" not in err and "recovered snapshot" not in err


def test_read_only_resilience_dir_is_named_without_a_move_hint(
    tmp_path: Path, small_fs
) -> None:
    """A store in a directory that cannot be written: the message names the
    directory; no "move it away" (nothing is wrong with the file)."""
    keys = tmp_path / "keys.txt"
    write_keys(keys, 2000, 20, seed=6)
    snapshots = small_fs.path / "snapshots"
    argv = [sys.executable, "-m", "wallaroo", str(COUNT_APP), "--input", str(keys),
            "--output", str(tmp_path / "out.txt"), "-r", str(snapshots)]  # fmt: skip
    first = subprocess.run(argv + ["--max-records", "1000"], cwd=tmp_path, env=app_env(),
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert first.returncode == 0, first.stderr
    remount = subprocess.run(["mount", "-o", "remount,ro", str(small_fs.path)],
                             capture_output=True, text=True)  # fmt: skip
    if remount.returncode != 0:
        pytest.skip(f"cannot make the file system read-only: {remount.stderr.strip()}")
    try:
        result = subprocess.run(argv, cwd=tmp_path, env=app_env(), capture_output=True,
                                text=True, timeout=60)  # fmt: skip
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs.path)], capture_output=True)
    err = result.stderr
    assert result.returncode == 1, err
    assert f"the directory {snapshots} is not writable" in err, err
    assert "move it away" not in err and "move the file away" not in err, err


def test_finished_run_started_again_produces_nothing_twice(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    write_keys(keys, 5000, 50, seed=2)
    output = tmp_path / "out.txt"
    assert run_count(tmp_path, keys, output).returncode == 0
    lines = output.read_text().count("\n")
    again = run_count(tmp_path, keys, output)
    assert again.returncode == 0, again.stderr
    assert "going on after record 5000" in again.stderr
    assert output.read_text().count("\n") == lines == 5000


@pytest.mark.timeout(240)
@pytest.mark.parametrize("after", [1, 3])
def test_rescale_from_a_two_worker_snapshot(tmp_path: Path, after: int) -> None:
    keys = tmp_path / "keys.txt"
    expected = write_keys(keys, 40_000, 2_000, seed=after)
    half = run_count(tmp_path, keys, tmp_path / "a.txt", "--workers", "2",
                     "--max-records", "25000")  # fmt: skip
    assert half.returncode == 0, half.stderr
    stores = sorted(p.name for p in (tmp_path / "snapshots").glob("*.sqlite"))
    assert stores == ["worker-0.sqlite", "worker-1.sqlite"]
    rest = run_count(tmp_path, keys, tmp_path / "b.txt",
                     *(["--workers", str(after)] if after > 1 else []))  # fmt: skip
    assert rest.returncode == 0, rest.stderr
    assert "going on after record 25000" in rest.stderr
    got: dict = {}
    for name in ("a.txt", "b.txt"):
        for key, n in final_counts(tmp_path / name, expected)[0].items():
            got[key] = max(got.get(key, 0), n)
    assert_exact(got, expected)
    # Every key's state went somewhere: the new workers' stores hold them all.
    assert "recovered snapshot" in rest.stderr


def test_growing_a_resilient_cluster_is_refused_with_a_reason(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wallaroo", str(COUNT_APP), "--input", "x", "--output", "y",
         "-r", str(tmp_path / "s"), "-j", "127.0.0.1:1", "-n", "late"],
        cwd=tmp_path, env=app_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "does not grow or shrink while it runs" in result.stderr


def wait_progress(store: Path, sent: int, timeout: float = 30) -> None:
    """Wait until the store's progress row counts ``sent`` records."""
    deadline = time.monotonic() + timeout
    found = None
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
                found = db.execute("SELECT SUM(sent) FROM progress").fetchone()[0]
        except sqlite3.Error:
            found = None
        if found is not None and found >= sent:
            return
        time.sleep(0.05)
    pytest.fail(f"the store's progress row says {found} sent, not {sent}")


def test_tcp_source_loss_is_counted_after_a_crash(tmp_path: Path, tcp_app) -> None:
    """TCP input cannot be replayed: what was received after the last
    snapshot is lost, and the log after recovery says how much."""
    from wallaroo.sender import connect, frame

    out = tmp_path / "out.txt"
    args = ["--in", "127.0.0.1:0", "--output", str(out), "-r", str(tmp_path / "snapshots"),
            "--snapshot-interval", "4"]  # fmt: skip

    def send(address: tuple, n: int, lines: int) -> None:
        with connect(*address) as conn:
            conn.sendall(b"".join(frame(b"k1") for _ in range(n)))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and out.read_text().count("\n") < lines:
            time.sleep(0.05)

    crashing = RunningApp([sys.executable, "-m", "wallaroo", str(COUNT_APP), *args],
                          app_env(), str(tmp_path))  # fmt: skip
    try:
        ((_pipeline, host, port),) = crashing.wait_listening(1, 15)
        address = (host, int(port))
        send(address, 1000, 1000)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "snapshot 1 written" not in crashing.stderr:
            time.sleep(0.05)
        send(address, 2000, 3000)
        # The progress row (records sent per pipeline) reaches the store.
        wait_progress(tmp_path / "snapshots" / "initializer.sqlite", 3000)
    finally:
        crashing.proc.kill()
        crashing.proc.wait()
    with tcp_app(COUNT_APP, *args, sources=1) as running:
        text = running.stderr
    found = re.search(r"(\d+) records it had received after snapshot 1 are lost", text)
    assert found, text
    assert int(found.group(1)) == 2000


# ---------------------------------------------------------------------------
# star leaders through a broker apart from the engine
# ---------------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(600)
@pytest.mark.parametrize("workers", [1, 2])
def test_kill_nine_star_leaders_publishes_every_leaderboard(
    tmp_path: Path, broker, workers: int
) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition
    from test_star_leaders import _partitioner, reference
    from wallaroo.demo.generator import generate_events

    events = list(
        generate_events(seed=21, count=20_000, repos=300, rate=0.1, start="2017-01-01T00")
    )
    expected = reference(events)
    source, sink = f"gharchive-{workers}-{os.getpid()}", f"leaderboard-{workers}-{os.getpid()}"
    # Events of one state partition stay in order in one Kafka partition.
    broker.create_topic(source, partitions=2)
    broker.create_topic(sink, partitions=1)
    partitioner = _partitioner()

    argv = ["star_leaders", "--kafka_source_topic", source, "--kafka_source_brokers",
            broker.bootstrap, "--kafka_sink_topic", sink, "--kafka_sink_brokers",
            broker.bootstrap, "--no-demo", "-r", str(tmp_path / "snapshots"),
            "--snapshot-interval", "0.5"]  # fmt: skip
    if workers > 1:
        argv += ["--workers", str(workers)]
    chaos = Chaos(argv, tmp_path, seed=60 + workers, log=tmp_path / "run.log")
    kills = 10
    slice_size = len(events) // (2 * kills)

    def produce() -> None:
        """The stream comes in 2 slices per kill: slices 2k and 2k+1 once k
        kills are done, so every life after a kill has new events to work
        on (a kill waits for new state), however slow the machine is."""
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20})
        for i, event in enumerate(events):
            if i % slice_size == 0:
                producer.flush(30)
                deadline = time.monotonic() + 300
                while chaos.kills < (i // slice_size) // 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
            partition = partitioner.partition_of(event["repo"]["name"]) % 2
            producer.produce(source, json.dumps(event).encode(), partition=partition)
            producer.poll(0)
        producer.flush(30)

    feeder = threading.Thread(target=produce, daemon=True)
    feeder.start()
    supervisor = proc = None

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"{sink}-reader"})
    consumer.assign([TopicPartition(sink, 0, 0)])
    published: dict = collections.defaultdict(list)

    def drain(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                body = json.loads(message.value())
                published[body["partition"]].append(body["leaders"])

    try:
        if workers == 1:
            while chaos.kills < kills:
                proc = chaos._start()
                killed = chaos.kill_after_a_snapshot(proc, 1, lambda: drain(0.1))
                assert killed, f"star_leaders exited\n{chaos.output()}"
                proc.wait()
            supervisor = chaos._start()
        else:
            supervisor = chaos._start()
            while chaos.kills < kills:
                killed = chaos.kill_after_a_snapshot(
                    supervisor, workers, lambda: drain(0.1), chaos.workers_of(supervisor, workers)
                )
                assert killed, f"star_leaders exited\n{chaos.output()}"
        feeder.join(timeout=120)
        finals = {p: json.dumps(v[-1]) for p, v in expected.items()}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            drain(1.0)
            last = {p: json.dumps(v[-1]) for p, v in published.items() if v}
            # The last start may find everything published already: it is
            # done once it recovered too.
            if last == finals and chaos.recoveries() >= chaos.kills:
                break
    finally:
        consumer.close()
        for running in (proc, supervisor):
            if running is not None:
                stop(running)
    log = chaos.output()
    assert chaos.kills >= kills
    assert chaos.recoveries() >= chaos.kills, log
    for partition, boards in expected.items():
        seen = {json.dumps(b) for b in published.get(partition, [])}
        wanted = [json.dumps(b) for b in boards]
        missing = [b for b in wanted if b not in seen]
        assert not missing, f"partition {partition}: {len(missing)} never published\n{log}"
        extra = seen - set(wanted)
        assert not extra, f"partition {partition}: leaderboards no uninterrupted run publishes"
        assert json.dumps(published[partition][-1]) == wanted[-1], log
