"""Against Apache Kafka itself (``apache_kafka`` fixture, tests/apache_kafka.py):
the broker's own behaviour the other brokers lack (read_committed isolation, a
restart that keeps its data, Kafka's own consumer-group tool, TLS and SASL/SCRAM
listeners) and the engine's Kafka source and sink through it."""

from __future__ import annotations

from apache_kafka import ApacheKafka


def test_broker_keeps_records_and_answers_on_every_listener(apache_kafka: ApacheKafka) -> None:
    from confluent_kafka.admin import AdminClient

    apache_kafka.create_topic("smoke", partitions=2)
    apache_kafka.produce("smoke", [b"a", b"b", b"c"], key=b"k")
    records = apache_kafka.consume("smoke", 4, timeout=5)
    assert [r.value for r in records] == [b"a", b"b", b"c"]
    for bootstrap, settings in (
        (apache_kafka.ssl_bootstrap, apache_kafka.ssl_settings()),
        (apache_kafka.sasl_bootstrap, apache_kafka.sasl_settings()),
    ):
        admin = AdminClient({"bootstrap.servers": bootstrap, **settings})
        assert "smoke" in admin.list_topics(timeout=30).topics
