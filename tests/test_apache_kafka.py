"""Against Apache Kafka itself (``apache_kafka`` fixture, tests/apache_kafka.py),
because these need what tansu and the mock cluster lack: read_committed
isolation (exactly-once across kill -9), a broker restart that keeps its data,
Kafka's own consumer-group tool (lag), TLS and SASL/SCRAM listeners; and a
0.4.2-style Kafka application end to end. One broker per session (per xdist
worker); every test uses topics of its own."""

from __future__ import annotations

import collections
import random
import re
import sys
import time
from pathlib import Path

import pytest
from apache_kafka import ApacheKafka
from conftest import APPS_DIR

COUNT_APP = APPS_DIR / "resilient_count.py"


def test_broker_keeps_records_and_answers_on_every_listener(apache_kafka: ApacheKafka) -> None:
    from confluent_kafka.admin import AdminClient

    apache_kafka.create_topic("smoke", partitions=2)
    apache_kafka.produce("smoke", [b"a", b"b", b"c"], key=b"k")
    records = apache_kafka.consume("smoke", 4, timeout=5)
    assert [r.value for r in records] == [b"a", b"b", b"c"]
    # read_all ends at the end offsets, the empty partition (one key) included.
    assert [r.value() for r in apache_kafka.read_all("smoke", timeout=30)] == [b"a", b"b", b"c"]
    for bootstrap, settings in (
        (apache_kafka.ssl_bootstrap, apache_kafka.ssl_settings()),
        (apache_kafka.sasl_bootstrap, apache_kafka.sasl_settings()),
    ):
        admin = AdminClient({"bootstrap.servers": bootstrap, **settings})
        assert "smoke" in admin.list_topics(timeout=30).topics


# ---------------------------------------------------------------------------
# exactly-once: the transactional sink across kill -9
# ---------------------------------------------------------------------------

COMMITTING = re.compile(r"committing the transaction of snapshot (\d+)")
RECOVERED = re.compile(r"recovered snapshot (\d+)")


def orphaned_commits(log: str) -> int:
    """How many transactions were committed by a run that then went back to an
    earlier snapshot: a commit of snapshot ``k`` logged before a recovery of a
    snapshot ``r < k``. Their output is the one thing that may come twice (the
    crash fell between the commit and the snapshot's write, on some worker)."""
    orphans = 0
    committed: set = set()
    for line in log.splitlines():
        if found := COMMITTING.search(line):
            committed.add(int(found.group(1)))
        elif found := RECOVERED.search(line):
            back_to = int(found.group(1))
            orphans += sum(1 for k in committed if k > back_to)
            committed = set()
    return orphans


def wait_until_stable(broker: ApacheKafka, topic: str, timeout: float = 30.0) -> tuple:
    """Wait until no transaction holds partition 0 of ``topic`` open: its last
    stable offset (where a read_committed reader stops) reaches its high
    watermark; how far behind it was at first (offsets) and the seconds it took.

    A producer's ``commit_transaction`` returns once the coordinator has
    decided; the markers that make the records visible to read_committed
    readers are written after that, so right after the run a reader can stop
    short of the last transactions. ``timeout`` is below the producers'
    ``transaction.timeout.ms`` (60 s): a transaction left open (a producer
    that nobody fenced) fails here, with the broker's list of transactions."""
    from apache_kafka import java
    from confluent_kafka import Consumer, TopicPartition

    partition = TopicPartition(topic, 0)
    readers = {
        isolation: Consumer(broker.client_config({"group.id": f"stable-{isolation}",
                                                  "isolation.level": isolation}))
        for isolation in ("read_uncommitted", "read_committed")
    }  # fmt: skip
    started = time.monotonic()
    behind = None
    try:
        while True:
            end = readers["read_uncommitted"].get_watermark_offsets(partition, timeout=10)[1]
            stable = readers["read_committed"].get_watermark_offsets(partition, timeout=10)[1]
            behind = end - stable if behind is None else behind
            if stable == end:
                return behind, time.monotonic() - started
            if time.monotonic() - started > timeout:
                listed = java(
                    broker.jars,
                    "org.apache.kafka.tools.TransactionsCommand",
                    "--bootstrap-server",
                    broker.bootstrap,
                    "list",
                    env=broker._env(),
                )
                pytest.fail(
                    f"{topic}: last stable offset {stable} < high watermark {end} "
                    f"after {timeout} s: a transaction stays open\n{listed.stdout}"
                )
            time.sleep(0.05)
    finally:
        for reader in readers.values():
            reader.close()


def read_counts(broker: ApacheKafka, topic: str, isolation: str) -> list:
    """``(key, count)`` of every record of ``topic`` (one partition) in order."""
    out = []
    for record in broker.read_all(topic, {"isolation.level": isolation}):
        key, count = record.value().decode().split()
        out.append((key, int(count)))
    return out


@pytest.mark.chaos
@pytest.mark.timeout(420)
@pytest.mark.parametrize("workers", [1, 2])
def test_transactional_sink_is_exactly_once_across_kills(
    apache_kafka: ApacheKafka, tmp_path: Path, workers: int
) -> None:
    """kill -9 at random moments after a snapshot stored state (10 kills, one
    process or a worker of two): a read_committed consumer sees each count of
    each key once, in order; read_uncommitted sees those and maybe aborted ones.

    The one exception the engine allows (README): a transaction committed
    just before a crash that came before its snapshot was written on every
    worker comes again; the log says when that happened, and only then may a
    key's counts go back, never skipping one."""
    from test_recovery import SLOW, Chaos

    source, sink = f"eo-in-{workers}", f"eo-out-{workers}"
    apache_kafka.create_topic(source, partitions=2)
    apache_kafka.create_topic(sink, partitions=1)
    rng = random.Random(70 + workers)
    keys = [f"k{rng.randrange(2_000)}" for _ in range(100_000 * workers)]
    expected = collections.Counter(keys)
    # Equal halves per partition: --max-records bounds each worker's share.
    for partition in (0, 1):
        apache_kafka.produce(source, keys[partition::2], partition=partition, timeout=60)
    argv = [str(COUNT_APP), "--kafka_source_topic", source,
            "--kafka_source_brokers", apache_kafka.bootstrap,
            "--kafka_sink_topic", sink, "--kafka_sink_brokers", apache_kafka.bootstrap,
            "--kafka-sink-transactions", "--log-level", "debug", *SLOW,
            "--pause-ms", str(15 * workers), "--max-records", str(len(keys) // workers),
            "-r", str(tmp_path / "snapshots"), "--snapshot-interval", "0.3",
            "--workers", str(workers)]  # fmt: skip
    chaos = Chaos(argv, tmp_path, seed=80 + workers, log=tmp_path / "run.log", hold=True)
    code = chaos.single(kills=10) if workers == 1 else chaos.workers(10, workers)
    log = chaos.log.read_text(errors="replace")
    assert code == 0, log[-6000:]
    assert chaos.kills >= 10, log[-6000:]
    assert chaos.recoveries() >= chaos.kills // 2, log[-6000:]

    behind, settled = wait_until_stable(apache_kafka, sink)
    committed = read_counts(apache_kafka, sink, "read_committed")
    uncommitted = read_counts(apache_kafka, sink, "read_uncommitted")
    orphans = orphaned_commits(log)
    per_key: dict = collections.defaultdict(list)
    for key, count in committed:
        per_key[key].append(count)
    assert set(per_key) == set(expected)
    if orphans == 0:
        wrong = {k: v for k, v in per_key.items() if v != list(range(1, expected[k] + 1))}
        seen = set(uncommitted)
        short = {k: (len(v), expected[k]) for k, v in wrong.items()}
        aborted_only = sum(1 for k in wrong if (k, expected[k]) in seen)
        assert not wrong, (
            f"{len(wrong)} keys not exactly 1..n (got, expected): {list(short.items())[:5]}; "
            f"{aborted_only} of them have their last count among read_uncommitted records"
        )
        assert len(committed) == len(keys)
    else:
        for key, counts in per_key.items():
            # Runs of consecutive counts; a run may go back (a repeated
            # interval) but never skips a count.
            backs = sum(1 for a, b in zip(counts, counts[1:]) if b <= a)
            assert backs <= orphans, (key, counts)
            assert all(b <= a + 1 for a, b in zip(counts, counts[1:])), (key, counts)
            assert counts[0] == 1 and max(counts) == expected[key], (key, counts)
    # Every committed record is among what read_uncommitted sees.
    missing = collections.Counter(committed) - collections.Counter(uncommitted)
    assert not missing, f"committed records read_uncommitted did not see: {list(missing)[:5]}"
    aborted = len(uncommitted) - len(committed)
    print(f"{workers} worker(s): {chaos.kills} kills, {orphans} orphaned commits, "
          f"{len(committed) - len(keys)} repeated, {aborted} aborted, "
          f"last stable offset {behind} behind after the run, "
          f"settled in {settled:.3f} s")  # fmt: skip


# ---------------------------------------------------------------------------
# the end of a transactional run: a failed last commit, a failed run
# ---------------------------------------------------------------------------

TRANSACTIONAL_ID = re.compile(r"transactional producer (\S+):")


def start_transactional_count(
    broker: ApacheKafka, tmp_path: Path, source: str, sink: str, *extra: str
):
    """The counting app from ``source`` to ``sink`` with transactions and no
    snapshot before the end (``--snapshot-interval 3600``), in the background."""
    from conftest import RunningApp, app_env

    argv = [sys.executable, "-m", "wallaroo", str(COUNT_APP), "--kafka_source_topic", source,
            "--kafka_source_brokers", broker.bootstrap, "--kafka_sink_topic", sink,
            "--kafka_sink_brokers", broker.bootstrap, "--kafka_sink_max_produce_buffer_ms",
            "5", "--kafka-sink-transactions", "-r", str(tmp_path / "snapshots"),
            "--snapshot-interval", "3600", *extra]  # fmt: skip
    return RunningApp(argv, app_env(), str(tmp_path))


def wait_for_records(broker: ApacheKafka, app, topic: str, n: int, timeout: float = 120) -> None:
    """Wait until partition 0 of ``topic`` holds ``n`` records (its high
    watermark: records of an open transaction count) while ``app`` runs."""
    from confluent_kafka import Consumer, TopicPartition

    reader = Consumer(broker.client_config({"group.id": "wait-for-records",
                                            "isolation.level": "read_uncommitted"}))  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while reader.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1] < n:
            assert app.proc.poll() is None, app.stderr[-3000:]
            assert time.monotonic() < deadline, app.stderr[-3000:]
            time.sleep(0.2)
    finally:
        reader.close()


@pytest.mark.timeout(240)
def test_failed_last_commit_fails_the_run_and_counts_its_records(
    apache_kafka: ApacheKafka, tmp_path: Path
) -> None:
    """The transaction the run's last snapshot commits fails (another producer
    with the same transactional.id fenced the engine's while it held 300
    records): the run exits 1 naming the sink and why, and the summary counts
    the 300 records as not delivered (the run used to exit 0 with them lost)."""
    from confluent_kafka import Producer

    source, sink = "fenced-in", "fenced-out"
    apache_kafka.create_topic(source)
    apache_kafka.create_topic(sink)
    keys = [f"k{i % 30}" for i in range(300)]
    apache_kafka.produce(source, keys)
    app = start_transactional_count(apache_kafka, tmp_path, source, sink)
    try:
        wait_for_records(apache_kafka, app, sink, len(keys))
        found = TRANSACTIONAL_ID.search(app.stderr)
        assert found, app.stderr[-3000:]
        # Fences the engine's producer and aborts its open transaction.
        fence = Producer(apache_kafka.client_config({"transactional.id": found.group(1)}))
        fence.init_transactions(60)
        code = app.stop(timeout=120)
        fence.flush(10)
    finally:
        if app.proc.poll() is None:
            app.proc.kill()
            app.proc.wait()
    err = app.stderr
    assert code == 1, err[-4000:]
    assert "This instance has been fenced by a newer instance" in err, err
    assert f"its {len(keys)} records are not delivered" in err, err
    assert f", {len(keys)} not delivered" in err, err
    assert (
        f'error: {len(keys)} records were not delivered: pipeline "count": kafka topic {sink}: '
        "the Kafka transaction of snapshot 1 failed to commit" in err
    ), err[-2000:]
    wait_until_stable(apache_kafka, sink)
    assert read_counts(apache_kafka, sink, "read_committed") == []


@pytest.mark.timeout(240)
def test_failed_run_aborts_its_open_transaction(apache_kafka: ApacheKafka, tmp_path: Path) -> None:
    """A step fails after 200 records went out in the open transaction, no
    snapshot stored yet: the run exits 1 and aborts that transaction, so
    read_committed consumers see none of it (the run used to commit it at
    the end: output of state no snapshot holds, produced again by a restart)."""
    source, sink = "failing-in", "failing-out"
    apache_kafka.create_topic(source)
    apache_kafka.create_topic(sink)
    keys = [f"k{i % 20}" for i in range(200)]
    apache_kafka.produce(source, keys)
    app = start_transactional_count(apache_kafka, tmp_path, source, sink, "--fail-on", "boom")
    try:
        wait_for_records(apache_kafka, app, sink, len(keys))
        apache_kafka.produce(source, ["boom"])
        code = app.proc.wait(timeout=120)
        app.stop()
    finally:
        if app.proc.poll() is None:
            app.proc.kill()
            app.proc.wait()
    err = app.stderr
    assert code == 1, err[-4000:]
    assert "failing on key boom, as asked" in err, err[-4000:]
    wait_until_stable(apache_kafka, sink)
    assert read_counts(apache_kafka, sink, "read_committed") == []
    assert len(read_counts(apache_kafka, sink, "read_uncommitted")) == len(keys)
    assert (
        f"aborted the open transaction: its {len(keys)} records came after the last snapshot" in err
    ), err[-3000:]


# ---------------------------------------------------------------------------
# TLS and SASL/SCRAM listeners, through --kafka-*-config only
# ---------------------------------------------------------------------------


def as_flags(flag: str, settings: dict) -> list:
    return [arg for key, value in settings.items() for arg in (flag, f"{key}={value}")]


def test_source_over_tls_and_sink_over_sasl_scram(
    apache_kafka: ApacheKafka, tmp_path: Path, run_app
) -> None:
    """The counting app reads through the TLS listener (CA of the test) and
    writes through the SASL/SCRAM-SHA-512 one; only --kafka-*-config flags
    carry the security settings."""
    source, sink = "tls-in", "sasl-out"
    apache_kafka.create_topic(source)
    apache_kafka.create_topic(sink)
    keys = [f"k{i % 7}" for i in range(700)]
    apache_kafka.produce(source, keys)
    result = run_app(
        COUNT_APP, "--kafka_source_topic", source,
        "--kafka_source_brokers", apache_kafka.ssl_bootstrap,
        *as_flags("--kafka-source-config", apache_kafka.ssl_settings()),
        "--kafka_sink_topic", sink, "--kafka_sink_brokers", apache_kafka.sasl_bootstrap,
        *as_flags("--kafka-sink-config", apache_kafka.sasl_settings()),
        "--max-records", str(len(keys)), timeout=120,
    )  # fmt: skip
    result.check()
    lines = [r.value().decode().split() for r in apache_kafka.read_all(sink)]
    assert len(lines) == len(keys)
    final: dict = {}
    for key, n in lines:
        final[key] = int(n)
    assert final == collections.Counter(keys)


@pytest.mark.parametrize("side", ["source", "sink"])
def test_wrong_scram_password_stops_at_start_naming_broker_and_mechanism(
    apache_kafka: ApacheKafka, run_app, side: str
) -> None:
    """The run stops within seconds with one line saying which brokers
    refused which mechanism (it used to retry forever)."""
    apache_kafka.create_topic(f"wrong-pw-{side}")
    settings = as_flags(f"--kafka-{side}-config", apache_kafka.sasl_settings("not-the-password"))
    good = "--kafka_source_brokers" if side == "sink" else "--kafka_sink_brokers"
    result = run_app(
        COUNT_APP, f"--kafka_{side}_topic", f"wrong-pw-{side}",
        f"--kafka_{side}_brokers", apache_kafka.sasl_bootstrap, *settings,
        good, apache_kafka.bootstrap,
        "--kafka_source_topic" if side == "sink" else "--kafka_sink_topic", "wrong-pw-other",
        "--kafka-create-topics", timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    refused = [line for line in result.stderr.splitlines() if "refused the connection" in line]
    assert refused, result.stderr[-3000:]
    assert f"Kafka {side}" in refused[0]
    assert apache_kafka.sasl_bootstrap in refused[0]
    assert "SASL mechanism SCRAM-SHA-512" in refused[0]
    assert "invalid credentials" in refused[0]


# ---------------------------------------------------------------------------
# the broker killed and restarted on its data; consumer-group lag
# ---------------------------------------------------------------------------


def group_offsets_by_tool(broker: ApacheKafka, group: str) -> dict:
    """``{(topic, partition): (current offset, log end, lag)}`` from
    ``kafka-consumer-groups --describe`` (Kafka's own tool)."""
    out = broker.consumer_groups("--describe", "--group", group)
    rows = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[0] == group:
            _, topic, partition, current, end, lag = fields[:6]
            rows[(topic, int(partition))] = (current, end, lag)
    return rows


@pytest.mark.timeout(420)
def test_broker_killed_and_restarted_mid_run_loses_nothing(
    apache_kafka: ApacheKafka, tmp_path: Path
) -> None:
    """SIGKILL the broker while the app runs (no -r), start it again on its
    log directory: the run waits, goes on and every key's count is exact;
    then the offsets the engine committed for its group are what
    kafka-consumer-groups reports (current offset = log end, lag 0)."""
    from confluent_kafka import Consumer, TopicPartition
    from conftest import RunningApp, app_env

    source, sink, group = "restart-in", "restart-out", "restart-group"
    apache_kafka.create_topic(source, partitions=2)
    apache_kafka.create_topic(sink)
    keys = [f"k{i % 50}" for i in range(20_000)]
    half = len(keys) // 2
    apache_kafka.produce(source, keys[:half], timeout=60)
    argv = [sys.executable, "-m", "wallaroo", str(COUNT_APP), "--kafka_source_topic", source,
            "--kafka_source_brokers", apache_kafka.bootstrap, "--kafka_sink_topic", sink,
            "--kafka_sink_brokers", apache_kafka.bootstrap, "--kafka-group-id", group,
            "--max-records", str(len(keys))]  # fmt: skip
    app = RunningApp(argv, app_env(), str(tmp_path))
    try:
        deadline = time.monotonic() + 120
        while len(apache_kafka.read_all(sink)) < half:
            assert app.proc.poll() is None, app.stderr[-3000:]
            assert time.monotonic() < deadline, app.stderr[-3000:]
            time.sleep(0.5)
        apache_kafka.kill()
        apache_kafka.start()
        apache_kafka.produce(source, keys[half:], timeout=60)
        assert app.proc.wait(timeout=240) == 0, app.stderr[-3000:]
    finally:
        if app.proc.poll() is None:
            app.proc.kill()
        app.proc.wait()
    final: dict = {}
    for record in apache_kafka.read_all(sink):
        key, n = record.value().decode().split()
        final[key] = max(final.get(key, 0), int(n))
    assert final == collections.Counter(keys)

    consumer = Consumer({"bootstrap.servers": apache_kafka.bootstrap, "group.id": group})
    try:
        parts = [TopicPartition(source, p) for p in (0, 1)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=30)}
        ends = {p: consumer.get_watermark_offsets(TopicPartition(source, p))[1] for p in (0, 1)}
    finally:
        consumer.close()
    assert committed == ends  # every record read, as committed by the engine
    tool = group_offsets_by_tool(apache_kafka, group)
    assert tool == {(source, p): (str(ends[p]), str(ends[p]), "0") for p in (0, 1)}, tool


# ---------------------------------------------------------------------------
# a 0.4.2-style Kafka application, unmodified
# ---------------------------------------------------------------------------


def test_celsius_kafka_app_matches_its_functions_run_directly(
    apache_kafka: ApacheKafka, tmp_path: Path, run_app
) -> None:
    """tests/apps/celsius_kafka.py (the 0.4.2 celsius-kafka example's shape)
    through Apache Kafka: every output equals decoder -> multiply -> add ->
    encoder applied directly to the same input, in order."""
    import importlib.util
    import struct

    spec = importlib.util.spec_from_file_location("celsius_kafka", APPS_DIR / "celsius_kafka.py")
    assert spec is not None and spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)

    def direct(payload: bytes) -> bytes:
        celsius = app.decoder.decode(payload)
        return app.encoder.encode(app.add.compute(app.multiply.compute(celsius)))

    inputs = [struct.pack(">f", -40.0 + i * 0.25) for i in range(2_000)]
    apache_kafka.create_topic("celsius")
    apache_kafka.create_topic("fahrenheit")
    apache_kafka.produce("celsius", inputs)
    result = run_app(
        APPS_DIR / "celsius_kafka.py", "--kafka_source_topic", "celsius",
        "--kafka_source_brokers", apache_kafka.bootstrap, "--kafka_sink_topic", "fahrenheit",
        "--kafka_sink_brokers", apache_kafka.bootstrap, "--kafka_sink_max_message_size",
        "100000", "--kafka_sink_max_produce_buffer_ms", "10",
        "--max-records", str(len(inputs)), timeout=120,
    )  # fmt: skip
    result.check()
    outputs = [r.value() for r in apache_kafka.read_all("fahrenheit")]
    assert outputs == [direct(p) for p in inputs]
    assert struct.unpack(">f", outputs[0])[0] == -40.0
