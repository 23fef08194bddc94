"""Kafka end to end: applications in ``tests/apps/kafka_*.py`` run through the runner
(``python -m wallaroo APP ...`` in a subprocess) against a real Kafka-protocol broker,
tansu (``kafka_broker.TansuBroker``), or the runner's embedded broker.

A run with a Kafka source never ends by itself: each test waits until the output
topic holds the expected number of records (never for end offsets: tansu reports
wrong high watermarks), then sends SIGTERM and expects exit 0. Input topics are
created with 1 partition wherever the order of the output is checked. Expected
outputs are computed here, in plain Python, independently of the application code.

Broker outages put a ``tcp_proxy.TcpProxy`` between every client and tansu: tansu
advertises the proxy's address, so once bootstrapped every client (the engine's and
the test's own) reaches the broker only through the proxy, and pausing the proxy is
an outage that keeps the broker's data.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import re
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RunningApp, app_env
from kafka_broker import HOST, Record, TansuBroker, free_port
from tcp_proxy import TcpProxy

APPS_DIR = Path(__file__).resolve().parent / "apps"
JSON_APP = APPS_DIR / "kafka_json.py"
KEYED_APP = APPS_DIR / "kafka_keyed.py"
ECHO_APP = APPS_DIR / "kafka_echo.py"
WHERE_APP = APPS_DIR / "kafka_where_decoded.py"
BAD_INPUT_APP = APPS_DIR / "kafka_bad_input.py"
FILE_TO_TOPIC_APP = APPS_DIR / "kafka_file_to_topic.py"

#: What the source logs once its partitions are assigned (src/sources/kafka.rs).
READING = re.compile(r"kafka topic (\S+): reading partitions \[([\d, ]*)\]")
#: What the engine logs while the brokers do not answer (src/kafka.rs, src/sources/kafka.rs).
UNREACHABLE = re.compile(r"Kafka brokers .*(do not answer yet|not reachable)")
#: What the runner logs when it starts the embedded broker (python/wallaroo/kafka.py).
EMBEDDED = re.compile(r"started an embedded broker at (\S+):(\d+)")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def new_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def kafka_flags(bootstrap: str, in_topic: str, out_topic: str) -> list:
    """The 0.4.2 application flags of a topic -> topic run."""
    return [
        "--kafka_source_topic", in_topic,
        "--kafka_source_brokers", bootstrap,
        "--kafka_sink_topic", out_topic,
        "--kafka_sink_brokers", bootstrap,
    ]  # fmt: skip


@contextlib.contextmanager
def kafka_app(app: Path, *args: str, stop_timeout: float = 20.0) -> Iterator[RunningApp]:
    """Start an application whose Kafka source never ends by itself; on leaving the
    block send SIGTERM and expect exit 0. On an error the process is killed."""
    running = RunningApp(
        [sys.executable, "-m", "wallaroo", str(app), *args], app_env(), None
    )
    try:
        yield running
    except BaseException:
        if running.proc.poll() is None:
            running.proc.kill()
        running.proc.wait()
        raise
    code = running.stop(stop_timeout)
    assert code == 0, f"exit code {code} after SIGTERM\n{running.stderr}"


def wait_log(running: RunningApp, pattern: re.Pattern, timeout: float = 15.0) -> re.Match:
    """Wait until the application's log matches ``pattern``; fail if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        found = pattern.search(running.stderr)
        if found:
            return found
        if running.proc.poll() is not None or time.monotonic() > deadline:
            time.sleep(0.2)  # let the reader thread catch up with the last lines
            found = pattern.search(running.stderr)
            if found:
                return found
            pytest.fail(
                f"no log line matching {pattern.pattern!r} "
                f"(exit code {running.proc.poll()})\n{running.stderr}"
            )
        time.sleep(0.05)


def consume_exactly(
    broker: TansuBroker, topic: str, n: int, running: RunningApp, timeout: float = 30.0
) -> list:
    """The first ``n`` records of ``topic`` (all partitions), failing with the
    application's log when fewer arrive within ``timeout``."""
    records = broker.consume(topic, n, timeout=timeout)
    assert len(records) == n, f"{len(records)} of {n} records on {topic}\n{running.stderr}"
    return records


def assert_nothing_more(broker: TansuBroker, topic: str, n: int) -> None:
    """``topic`` holds exactly ``n`` records (nothing more comes within half a second)."""
    assert len(broker.consume(topic, n + 1, timeout=0.5)) == n


def values(records: list) -> list:
    return [r.value for r in records]


@pytest.fixture
def proxied_broker() -> Iterator[tuple]:
    """``(broker, proxy)``: a tansu reachable only through a running :class:`TcpProxy`."""
    port = free_port()
    with TcpProxy(target=(HOST, port)) as proxy:
        with TansuBroker(port=port, advertised=proxy.address) as b:
            yield b, proxy


# ---------------------------------------------------------------------------
# 1. JSON topic -> topic
# ---------------------------------------------------------------------------


def make_orders(n: int, seed: int = 7) -> list:
    rng = random.Random(seed)
    names = ["ada", "grace", "linus", "barbara", "ken", "dennis", "margaret", "élodie"]
    orders = []
    for i in range(n):
        items = [
            {
                "sku": f"sku-{rng.randint(1, 500)}",
                "qty": rng.randint(1, 9),
                "price": rng.randint(1, 100000) / 100,
            }
            for _ in range(rng.randint(1, 6))
        ]
        orders.append(
            {
                "id": i,
                "customer": rng.choice(names),
                "items": items,
                "discount": rng.choice([0.0, 0.05, 0.1, 0.25]),
            }
        )
    return orders


def expected_invoice(order: dict) -> dict:
    total = round(sum(item["qty"] * item["price"] for item in order["items"]), 2)
    return {
        "id": order["id"],
        "customer": order["customer"].upper(),
        "items": sum(item["qty"] for item in order["items"]),
        "total": total,
        "due": round(total * (1.0 - order["discount"]), 2),
    }


@pytest.mark.timeout(60)
def test_json_topic_to_topic_5000_records(broker) -> None:
    orders = make_orders(5000)
    in_topic, out_topic = new_topic("orders"), new_topic("invoices")
    broker.create_topic(in_topic, partitions=1)
    broker.create_topic(out_topic, partitions=1)
    broker.produce(in_topic, [json.dumps(o).encode() for o in orders])

    with kafka_app(JSON_APP, *kafka_flags(broker.bootstrap, in_topic, out_topic)) as app:
        records = consume_exactly(broker, out_topic, 5000, app)
    assert re.search(r"pipeline 'invoices': 5000 in, 5000 out, 0 filtered", app.stderr), app.stderr

    got = [json.loads(r.value) for r in records]
    expected = [expected_invoice(o) for o in orders]
    assert len(got) == len(expected)
    wrong = [(i, g, e) for i, (g, e) in enumerate(zip(got, expected)) if g != e]
    assert wrong == [], wrong[:3]  # exact values, in input order
    assert all(r.key is None for r in records)  # the encoder returned (value, None)
    assert_nothing_more(broker, out_topic, 5000)


# ---------------------------------------------------------------------------
# 2. keys: the encoder returns (value, key)
# ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_keys_preserved_and_same_key_same_partition(broker) -> None:
    sensors = [f"sensor-{k}" for k in range(12)]
    rng = random.Random(3)
    readings = [(sensors[rng.randrange(12)], i, rng.randint(-1000, 1000)) for i in range(600)]
    in_topic, out_topic = new_topic("readings"), new_topic("scaled")
    broker.create_topic(in_topic, partitions=1)
    broker.create_topic(out_topic, partitions=3)
    broker.produce(in_topic, [f"{s},{i},{v}".encode() for s, i, v in readings])

    with kafka_app(KEYED_APP, *kafka_flags(broker.bootstrap, in_topic, out_topic)) as app:
        records = consume_exactly(broker, out_topic, 600, app)
    assert_nothing_more(broker, out_topic, 600)

    by_seq = {}
    partitions_of_key = defaultdict(set)
    order_in_partition = defaultdict(list)
    for r in records:
        sensor, seq, value = r.value.decode().split(",")
        assert r.key == sensor.encode(), r  # every key is the record's own sensor
        by_seq[int(seq)] = (sensor, int(value))
        partitions_of_key[r.key].add(r.partition)
        order_in_partition[r.key].append(int(seq))
    assert by_seq == {i: (s, v * 10) for s, i, v in readings}
    # One partition per key, and the key's records in input order within it.
    assert {k: len(p) for k, p in partitions_of_key.items() if len(p) != 1} == {}
    for key, seqs in order_in_partition.items():
        assert seqs == sorted(seqs), key
    # The 12 keys were spread: more than one of the 3 partitions holds records.
    assert len({r.partition for r in records}) > 1


# ---------------------------------------------------------------------------
# 3. start offsets: committed (default), earliest, latest
# ---------------------------------------------------------------------------


def committed_offset(broker: TansuBroker, group: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(broker.client_config({"group.id": group, "enable.auto.commit": False}))
    try:
        (tp,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return tp.offset
    finally:
        consumer.close()


@pytest.mark.timeout(90)
def test_start_offsets_committed_earliest_latest(broker) -> None:
    in_topic = new_topic("events")
    broker.create_topic(in_topic, partitions=1)
    first = [f"first-{i}".encode() for i in range(100)]
    second = [f"second-{i}".encode() for i in range(50)]
    third = [f"third-{i}".encode() for i in range(20)]
    upper = [v.upper() for v in first + second + third]
    broker.produce(in_topic, first)
    default_group = "wallaroo.Kafka-echo.echo"  # wallaroo.APP.PIPELINE

    # Default (committed, nothing committed yet): everything from the beginning.
    out1 = new_topic("run1")
    broker.create_topic(out1, partitions=1)
    with kafka_app(ECHO_APP, *kafka_flags(broker.bootstrap, in_topic, out1)) as app:
        assert values(consume_exactly(broker, out1, 100, app)) == upper[:100]
    assert "stopped at {0: 100}" in app.stderr, app.stderr
    assert committed_offset(broker, default_group, in_topic) == 100

    # Same group again: exactly the 50 produced since (the offsets were committed).
    # tansu's high watermark is the base offset of the last batch + 1, which is the
    # true end only when that batch holds one record: `latest` (below) needs it.
    broker.produce(in_topic, second[:-1])
    broker.produce(in_topic, second[-1:])
    out2 = new_topic("run2")
    broker.create_topic(out2, partitions=1)
    with kafka_app(ECHO_APP, *kafka_flags(broker.bootstrap, in_topic, out2)) as app:
        assert values(consume_exactly(broker, out2, 50, app)) == upper[100:150]
        assert_nothing_more(broker, out2, 50)
    assert committed_offset(broker, default_group, in_topic) == 150

    # earliest with a new group: all 150; latest with another new group: only what
    # is produced after it started.
    out3, out4 = new_topic("run3"), new_topic("run4")
    broker.create_topic(out3, partitions=1)
    broker.create_topic(out4, partitions=1)
    earliest = kafka_app(
        ECHO_APP,
        *kafka_flags(broker.bootstrap, in_topic, out3),
        "--kafka-start-offset", "earliest",
        "--kafka-group-id", f"earliest-{uuid.uuid4().hex[:6]}",
    )  # fmt: skip
    latest = kafka_app(
        ECHO_APP,
        *kafka_flags(broker.bootstrap, in_topic, out4),
        "--kafka-start-offset", "latest",
        "--kafka-group-id", f"latest-{uuid.uuid4().hex[:6]}",
    )  # fmt: skip
    with earliest as app3, latest as app4:
        # The engine looked up the end offset before it logged where it starts.
        wait_log(app4, re.compile(r"reading partitions \[0\] \(start: Latest at \{0: 150\}"))
        assert values(consume_exactly(broker, out3, 150, app3)) == upper[:150]
        broker.produce(in_topic, third)
        assert values(consume_exactly(broker, out3, 170, app3)) == upper
        assert values(consume_exactly(broker, out4, 20, app4)) == upper[150:]
        assert_nothing_more(broker, out4, 20)
    assert "start: Earliest" in app3.stderr and "start: Latest" in app4.stderr


# ---------------------------------------------------------------------------
# 4. bad input: decode errors and oversize output
# ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_bad_input_counted_logged_and_kept(broker, tmp_path) -> None:
    inputs: list = [json.dumps({"n": i}).encode() for i in range(30)]
    undecodable = {
        3: b"not json at all",
        7: b'{"n": "seven"}',  # the decoder's own ValueError
        11: b"\xff\xfe\x00 binary",  # not UTF-8
        15: b'{"n": 15',  # truncated JSON
    }
    for offset, payload in undecodable.items():
        inputs[offset] = payload
    oversize_at = 20
    inputs[oversize_at] = json.dumps({"n": oversize_at, "pad": 5000}).encode()
    oversize_output = f"n={oversize_at}".ljust(5000, ".").encode()
    good = [i for i in range(30) if i not in undecodable and i != oversize_at]

    in_topic, out_topic = new_topic("checked-in"), new_topic("checked-out")
    broker.create_topic(in_topic, partitions=1)
    broker.create_topic(out_topic, partitions=1)
    broker.produce(in_topic, inputs)
    dead_letter = tmp_path / "dead.jsonl"

    with kafka_app(
        BAD_INPUT_APP,
        *kafka_flags(broker.bootstrap, in_topic, out_topic),
        "--kafka_sink_max_message_size", "1000",
        "--dead-letter", str(dead_letter),
    ) as app:
        records = consume_exactly(broker, out_topic, len(good), app)
        assert_nothing_more(broker, out_topic, len(good))
    # The good records, in order; the run went on past every bad one.
    assert values(records) == [f"n={i}".encode() for i in good]

    log = app.stderr
    assert re.search(r"bad input: .*\b4 decode_error\b", log), log
    assert re.search(r"bad input: .*\b1 oversize_output\b", log), log
    for offset in undecodable:
        position = f"kafka topic {in_topic} partition 0 offset {offset}"
        assert f"bad input (decode_error) in pipeline \"checked\" at {position}" in log, log
    assert "Traceback" not in log and "panic" not in log

    kept = [json.loads(line) for line in dead_letter.read_text().splitlines()]
    decode_errors = [k for k in kept if k["kind"] == "decode_error"]
    assert {
        k["position"]: base64.b64decode(k["payload_base64"]) for k in decode_errors
    } == {
        f"kafka topic {in_topic} partition 0 offset {o}": p for o, p in undecodable.items()
    }  # the exact bytes of each message
    assert all(k["pipeline"] == "checked" for k in kept)
    (oversize,) = [k for k in kept if k["kind"] == "oversize_output"]
    assert base64.b64decode(oversize["payload_base64"]) == oversize_output
    assert out_topic in oversize["position"]
    assert "5000" in oversize["error"] and "1000" in oversize["error"]
    assert len(kept) == 5
    # Count in = good out + bad; the engine's own counters agree (the oversize record
    # counts as out and as bad output, not as a delivery failure: it is kept; what
    # counts as delivered is what the broker acknowledged).
    assert len(inputs) == len(records) + len(kept)
    summary = (
        rf"pipeline 'checked': {len(inputs)} in, {len(good) + 1} out, .* "
        rf"{len(good)} delivered, 0 not delivered"
    )
    assert re.search(summary, log), log


# ---------------------------------------------------------------------------
# 5. missing topic
# ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_missing_topic_fails_at_start_unless_created(broker, run_app) -> None:
    in_topic, out_topic = new_topic("absent"), new_topic("present")
    broker.create_topic(out_topic, partitions=1)
    started = time.monotonic()
    result = run_app(ECHO_APP, *kafka_flags(broker.bootstrap, in_topic, out_topic))
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 20
    assert in_topic in result.stderr and "--kafka-create-topics" in result.stderr, result.stderr
    assert in_topic not in broker.topics()  # the check created nothing

    in2, out2 = new_topic("created-in"), new_topic("created-out")
    with kafka_app(
        ECHO_APP,
        *kafka_flags(broker.bootstrap, in2, out2),
        "--kafka-create-topics",
        "--kafka-partitions", "2",
    ) as app:  # fmt: skip
        wait_log(app, READING)
        assert {t: n for t, n in broker.topics().items() if t in (in2, out2)} == {in2: 2, out2: 2}
        sent = [f"created-{i}".encode() for i in range(40)]
        broker.produce(in2, sent)
        got = values(consume_exactly(broker, out2, 40, app))
    assert sorted(got) == sorted(v.upper() for v in sent)  # two partitions: any order


# ---------------------------------------------------------------------------
# 6. broker outages
# ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_broker_unreachable_at_start(proxied_broker) -> None:
    broker, proxy = proxied_broker
    in_topic, out_topic = new_topic("late-in"), new_topic("late-out")
    broker.create_topic(in_topic, partitions=1)
    broker.create_topic(out_topic, partitions=1)
    sent = [f"late-{i}".encode() for i in range(300)]
    broker.produce(in_topic, sent)
    proxy.pause()  # connections refused from now on

    with kafka_app(ECHO_APP, *kafka_flags(broker.bootstrap, in_topic, out_topic)) as app:
        time.sleep(2.0)
        assert app.proc.poll() is None, app.stderr  # waiting, not failing
        # The engine says so after its metadata timeout (5 s).
        wait_log(app, UNREACHABLE, timeout=15)
        proxy.resume()
        got = values(consume_exactly(broker, out_topic, 300, app))
        assert_nothing_more(broker, out_topic, 300)
    assert got == [v.upper() for v in sent]
    assert "pipeline 'echo': 300 in, 300 out" in app.stderr, app.stderr


@pytest.mark.timeout(60)
def test_broker_lost_mid_run_loses_nothing(proxied_broker) -> None:
    from confluent_kafka import Producer

    broker, proxy = proxied_broker
    in_topic, out_topic = new_topic("steady-in"), new_topic("steady-out")
    broker.create_topic(in_topic, partitions=1)
    broker.create_topic(out_topic, partitions=1)
    n = 2000
    errors: list = []
    produced = threading.Event()

    def produce() -> None:
        # tansu advertises the proxy: after bootstrapping, the test's producer goes
        # through the proxy too (and buffers while it is paused), in order.
        producer = Producer(broker.client_config({"enable.idempotence": True, "linger.ms": 5}))
        for i in range(n):
            producer.produce(in_topic, f"seq-{i}".encode(), on_delivery=on_delivery)
            producer.poll(0)
            if i % 50 == 49:
                time.sleep(0.1)  # about 500 records per second
        left = producer.flush(30)
        if left:
            errors.append(f"{left} not delivered")
        produced.set()

    def on_delivery(err, _msg) -> None:
        if err is not None:
            errors.append(err)

    with kafka_app(ECHO_APP, *kafka_flags(broker.bootstrap, in_topic, out_topic)) as app:
        wait_log(app, READING)
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        time.sleep(1.0)
        proxy.pause()  # every connection (engine and test) dropped, new ones refused
        time.sleep(3.0)
        proxy.resume()
        producer.join(40)
        assert produced.is_set() and errors == [], errors
        # Measured: the test's producer is through 1 s after the resume, the engine
        # about 7 s (its consumer waits out librdkafka's reconnect back-off, up to
        # reconnect.backoff.max.ms = 10 s by default; 1 s with that setting at 1000).
        records = consume_exactly(broker, out_topic, n, app, timeout=40)
        assert_nothing_more(broker, out_topic, n)
    got = [r.value.decode() for r in records]
    missing = sorted(set(f"SEQ-{i}" for i in range(n)) - set(got))
    assert missing == [], missing[:10]
    # Observed: no duplicates and input order kept (idempotent producers on both sides).
    assert got == [f"SEQ-{i}" for i in range(n)]
    assert f"pipeline 'echo': {n} in, {n} out" in app.stderr, app.stderr
    assert f"{n} delivered, 0 not delivered" in app.stderr, app.stderr
    # The engine's clients did lose their connections.
    assert re.search(r"librdkafka: .*Connect to \S+ failed: Connection refused", app.stderr)


# ---------------------------------------------------------------------------
# 7. embedded broker
# ---------------------------------------------------------------------------


def produce_to(bootstrap: str, topic: str, payloads: list) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for payload in payloads:
        producer.produce(topic, payload)
        producer.poll(0)
    assert producer.flush(15) == 0


def consume_from(bootstrap: str, topic: str, n: int, timeout: float) -> list:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False}
    )
    try:
        deadline = time.monotonic() + timeout
        consumer.list_topics(topic, timeout=5)  # the first fetch then starts at once
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        out: list = []
        while len(out) < n and time.monotonic() < deadline:
            for msg in consumer.consume(n - len(out), timeout=0.5):
                if msg.error() is None:
                    out.append(Record(msg.key(), msg.value(), msg.partition(), msg.offset()))
        return out
    finally:
        consumer.close()


@pytest.mark.timeout(60)
def test_embedded_broker_serves_external_clients() -> None:
    with kafka_app(
        ECHO_APP, "--kafka_source_topic", "embedded-in", "--kafka_sink_topic", "embedded-out"
    ) as app:
        host, port = wait_log(app, EMBEDDED).groups()
        assert host == HOST
        bootstrap = f"{host}:{port}"
        wait_log(app, READING)
        sent = [f"external-{i}".encode() for i in range(500)]
        produce_to(bootstrap, "embedded-in", sent)
        got = consume_from(bootstrap, "embedded-out", 500, timeout=20)
        assert values(got) == [v.upper() for v in sent], app.stderr
        assert consume_from(bootstrap, "embedded-out", 501, timeout=1.0) == got


# ---------------------------------------------------------------------------
# 8. librdkafka settings pass through
# ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_librdkafka_settings_pass_through(broker) -> None:
    in_topic, out_topic = new_topic("conf-in"), new_topic("conf-out")
    broker.create_topic(in_topic, partitions=1)
    broker.create_topic(out_topic, partitions=1)
    sent = [f"conf-{i}".encode() for i in range(100)]
    broker.produce(in_topic, sent)
    with kafka_app(
        ECHO_APP,
        *kafka_flags(broker.bootstrap, in_topic, out_topic),
        "--kafka-sink-config", "linger.ms=5",
        "--kafka-sink-config", "debug=conf",  # librdkafka prints its configuration
        "--kafka_sink_log_level", "Fine",
        "--log-level", "debug",
    ) as app:  # fmt: skip
        assert values(consume_exactly(broker, out_topic, 100, app)) == [v.upper() for v in sent]
    # The app's max_produce_buffer_ms (0) is the default linger.ms; the setting won.
    assert re.search(r"librdkafka: .*queue\.buffering\.max\.ms = 5\b", app.stderr), app.stderr
    # And the sink is an idempotent producer.
    assert re.search(r"librdkafka: .*enable\.idempotence = true", app.stderr), app.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "flag, setting",
    [
        ("--kafka-source-config", "no.such.setting"),
        ("--kafka-sink-config", "no.such.sink.setting"),
    ],
)
def test_unknown_librdkafka_setting_fails_at_start(broker, run_app, flag, setting) -> None:
    in_topic, out_topic = new_topic("unknown-in"), new_topic("unknown-out")
    broker.create_topic(in_topic, partitions=1)
    broker.create_topic(out_topic, partitions=1)
    started = time.monotonic()
    result = run_app(ECHO_APP, *kafka_flags(broker.bootstrap, in_topic, out_topic),
                     flag, f"{setting}=1")
    assert result.returncode != 0, result.stderr
    assert time.monotonic() - started < 20
    assert re.search(rf"error: .*No such configuration property: \"{setting}\"", result.stderr), (
        result.stderr
    )


# ---------------------------------------------------------------------------
# 9. the 0.4.2 log level reaches librdkafka
# ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_fine_log_level_shows_librdkafka_debug_lines(broker) -> None:
    in_topic, out_topic = new_topic("fine-in"), new_topic("fine-out")
    broker.create_topic(in_topic, partitions=1)
    broker.create_topic(out_topic, partitions=1)
    broker.produce(in_topic, [b"fine"])
    with kafka_app(
        ECHO_APP,
        *kafka_flags(broker.bootstrap, in_topic, out_topic),
        "--kafka_source_log_level", "Fine",
        "--log-level", "debug",
    ) as app:  # fmt: skip
        consume_exactly(broker, out_topic, 1, app)
    assert re.search(r"DEBUG librdkafka: ", app.stderr), app.stderr


@pytest.mark.timeout(60)
def test_librdkafka_debug_lines_reach_the_log(broker) -> None:
    """The logging path itself works: with debug contexts named explicitly, Fine lets
    librdkafka's debug lines through, under the logger ``librdkafka``."""
    in_topic, out_topic = new_topic("debug-in"), new_topic("debug-out")
    broker.create_topic(in_topic, partitions=1)
    broker.create_topic(out_topic, partitions=1)
    broker.produce(in_topic, [b"debug"])
    with kafka_app(
        ECHO_APP,
        *kafka_flags(broker.bootstrap, in_topic, out_topic),
        "--kafka_source_log_level", "Fine",
        "--kafka-source-config", "debug=consumer",
        "--log-level", "debug",
    ) as app:  # fmt: skip
        consume_exactly(broker, out_topic, 1, app)
    assert re.search(r"DEBUG librdkafka: librdkafka: \w+ \[thrd:", app.stderr), app.stderr


# ---------------------------------------------------------------------------
# the end of a run waits for the sink's acknowledgements
# ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_bounded_run_delivers_every_record_before_exit(broker, run_app, tmp_path) -> None:
    lines = [f"line {i}" for i in range(20000)]
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"{line}\n" for line in lines))
    out_topic = new_topic("lines")
    broker.create_topic(out_topic, partitions=1)
    result = run_app(
        FILE_TO_TOPIC_APP,
        "--input", str(path),
        "--kafka_sink_topic", out_topic,
        "--kafka_sink_brokers", broker.bootstrap,
    ).check()  # fmt: skip
    assert "delivery_failed" not in result.stderr, result.stderr[-2000:]
    got = broker.consume(out_topic, len(lines), timeout=10)
    assert [r.value.decode() for r in got] == lines


@pytest.mark.timeout(120)
def test_partitions_split_over_two_workers(broker, run_app) -> None:
    """A 4-partition topic read by a cluster of 2 worker processes: each
    worker reads its share of the partitions (assigned by the engine, no group
    rebalancing), every record comes out exactly once, in order per partition."""
    in_topic, out_topic = new_topic("split-in"), new_topic("split-out")
    broker.create_topic(in_topic, partitions=4)
    broker.create_topic(out_topic, partitions=1)
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": broker.bootstrap})
    sent: dict = {}
    for i in range(2000):
        partition = i % 4
        value = f"p{partition}-{i:05d}"
        sent.setdefault(partition, []).append(value.upper().encode())
        producer.produce(in_topic, value.encode(), partition=partition)
    assert producer.flush(30) == 0
    result = run_app(
        ECHO_APP,
        *kafka_flags(broker.bootstrap, in_topic, out_topic),
        "--max-records",
        "1000",
        "--workers",
        "2",
        timeout=90,
    )
    result.check()
    reads = re.findall(r"reading partitions \[([\d, ]+)\]", result.stderr)
    assert sorted(reads) == ["0, 2", "1, 3"], result.stderr
    got = values(broker.consume(out_topic, 2001, timeout=15))
    assert sorted(got) == sorted(v for vs in sent.values() for v in vs)
    for partition, expected in sent.items():
        assert [v for v in got if v.startswith(f"P{partition}-".encode())] == expected


@pytest.mark.timeout(60)
def test_05_encoder_names_the_partition(broker) -> None:
    """0.5+: an encoder's ``(value, key, partition)`` goes to that partition
    (whatever its key); ``(value, None, None)``: no key, the producer chooses."""
    rng = random.Random(5)
    orders = [(i, rng.choice(["north", "south", "east", "any", "west"])) for i in range(300)]
    in_topic, out_topic = new_topic("orders"), new_topic("by_region")
    broker.create_topic(in_topic, partitions=1)
    broker.create_topic(out_topic, partitions=3)
    broker.produce(in_topic, [f"{i},{region}".encode() for i, region in orders])
    expected = [(i, region) for i, region in orders if region != "west"]

    app = APPS_DIR / "kafka_partitioned_05.py"
    with kafka_app(app, *kafka_flags(broker.bootstrap, in_topic, out_topic)) as running:
        records = consume_exactly(broker, out_topic, len(expected), running)
    assert_nothing_more(broker, out_topic, len(expected))

    got = []
    for r in records:
        order_id, region = r.value.decode().split(",")
        got.append((int(order_id), region))
        if region == "any":
            assert r.key is None, r
        else:
            assert (r.key, r.partition) == (region.encode(), int(order_id) % 3), r
    assert sorted(got) == expected


@pytest.mark.timeout(150)
@pytest.mark.parametrize("partitions", [1, 2])
def test_batches_are_decoded_where_read_when_every_worker_reads(broker, run_app, partitions):
    """2 workers. A 2-partition topic: each worker reads one partition and
    decodes its batches itself (nothing crosses to be decoded; the state
    keys of its partition are its own, so no record crosses at all). A
    1-partition topic: its reader spreads the batches over both workers.
    Either way every record comes out once, per key in order."""
    in_topic, out_topic = new_topic("where-in"), new_topic("where-out")
    broker.create_topic(in_topic, partitions=partitions)
    broker.create_topic(out_topic, partitions=1)
    per_partition = 1000
    sent = {p: [f"p{p}-{i:05d}" for i in range(per_partition)] for p in range(2)}
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for p, texts in sent.items():
        for text in texts:
            producer.produce(in_topic, text.encode(), partition=p % partitions)
    assert producer.flush(30) == 0
    result = run_app(
        WHERE_APP,
        *kafka_flags(broker.bootstrap, in_topic, out_topic),
        "--max-records", str(2 * per_partition // partitions),
        "--batch-size", "50",
        "--workers", "2",
        timeout=120,
    )  # fmt: skip
    result.check()
    got = [v.decode().split() for v in values(broker.consume(out_topic, 2001, timeout=15))]
    decoders: dict = defaultdict(set)
    for key in ("p0", "p1"):
        mine = [row for row in got if row[0].startswith(key + "-")]
        assert [row[0] for row in mine] == sent[int(key[1])]
        assert [int(row[3]) for row in mine] == list(range(1, per_partition + 1))
        assert len({row[2] for row in mine}) == 1, "one owner per key"
        decoders[key] = {row[1] for row in mine}
    owners = {row[2] for row in got}
    assert len(owners) == 2
    if partitions == 2:
        # Each partition decoded by its reader alone, which owns its key.
        for key in ("p0", "p1"):
            owner = {row[2] for row in got if row[0].startswith(key + "-")}
            assert decoders[key] == owner, decoders
    else:
        assert decoders["p0"] | decoders["p1"] == owners, decoders
