"""Wallaroo 0.5 applications: version detection, GenSourceConfig, dynamic keys,
to_sinks, the Kafka CLI-parser classes and the 3-tuple encoder shape."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import wallaroo
from wallaroo import versions
from wallaroo.api05 import resolve_internal_kafka
from wallaroo.plan import ApplicationError, compile_plan

APPS = Path(__file__).resolve().parent / "apps"


@wallaroo.computation(name="double")
def double(x):
    return x * 2


@wallaroo.encoder
def encode(x):
    return str(x)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return bs


class Gen:
    def initial_value(self):
        return 1

    def apply(self, previous):
        return previous + 1 if previous < 5 else None


def _builder_plan(build) -> dict:
    ab = wallaroo.ApplicationBuilder("app")
    build(ab)
    return compile_plan(ab.build(), "app.py")


def test_a_042_app_is_told_042():
    plan = _builder_plan(
        lambda ab: (
            ab.new_pipeline("p", wallaroo.TCPSourceConfig("127.0.0.1", 0, decode))
            .to(double)
            .to_sink(wallaroo.TCPSinkConfig("127.0.0.1", 9, encode))
        )
    )
    assert plan["api_version"] == versions.V042


def test_05_calls_make_a_05_app():
    plan = _builder_plan(
        lambda ab: (
            ab.new_pipeline("p", wallaroo.GenSourceConfig(Gen()))
            .to(double)
            .to_sinks([wallaroo.TCPSinkConfig("127.0.0.1", 9, encode)])
        )
    )
    assert plan["api_version"] == versions.V05
    assert plan["pipelines"][0]["source"]["kind"] == "gen"


def test_mixing_042_and_05_calls_fails_naming_both():
    kafka_042 = wallaroo.KafkaSourceConfig("t", "localhost:9092", "Warn", decode)
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", kafka_042).to(double)
    ab.to_sinks([wallaroo.TCPSinkConfig("127.0.0.1", 9, encode)])
    with pytest.raises(ApplicationError) as err:
        compile_plan(ab.build(), "app.py")
    message = str(err.value)
    assert "to_sinks is Wallaroo 0.5 API" in message
    assert "KafkaSourceConfig(...) is Wallaroo 0.4.2 API" in message


def test_a_06_state_computation_in_a_builder_fails():
    @wallaroo.state_computation(name="count", state=dict)
    def count(x, state):
        return x

    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", wallaroo.TCPSourceConfig("127.0.0.1", 0, decode))
    ab.to_stateful(count, dict, "s").to_sink(wallaroo.TCPSinkConfig("127.0.0.1", 9, encode))
    with pytest.raises(ApplicationError, match=r"state_computation\(name, state\) is Wallaroo 0.6"):
        compile_plan(ab.build(), "app.py")


def test_05_decoder_none_drops_the_record():
    plan = _builder_plan(
        lambda ab: (
            ab.new_pipeline("p", wallaroo.GenSourceConfig(Gen()))
            .to(double)
            .to_sink(wallaroo.TCPSinkConfig("127.0.0.1", 9, encode))
        )
    )
    step = plan["pipelines"][0]["steps"][0]
    assert step["func"](None) is None
    assert step["func"](4) == 8


def test_custom_kafka_parsers_read_the_042_flags():
    args = [
        "--kafka_source_topic",
        "in",
        "--kafka_source_brokers",
        "h1:1,h2",
        "--kafka_sink_topic",
        "out",
        "--kafka_sink_max_message_size",
        "5",
    ]
    src = wallaroo.CustomKafkaSourceCLIParser(args, decode)
    assert src.to_tuple() == ("kafka", "in", [("h1", "1"), ("h2", "9092")], "Warn", decode)
    sink = wallaroo.CustomKafkaSinkCLIParser(args, encode)
    assert sink.to_tuple()[:6] == ("kafka", "out", [("", "9092")], "Warn", 0, 5)


def test_default_kafka_parsers_take_flags_named_after_the_connector():
    spec = wallaroo.DefaultKafkaSourceCLIParser(decode, name="My-Source").to_tuple()
    assert spec == ("kafka-internal", "My-Source", decode)
    args = ["--mysource_topic", "t", "--mysource_brokers", "b:7", "--other_topic", "x"]
    assert resolve_internal_kafka(spec, args, sink=False) == (
        "kafka",
        "t",
        [("b", "7")],
        "Warn",
        decode,
    )
    sink = wallaroo.DefaultKafkaSinkCLIParser(encode).to_tuple()
    resolved = resolve_internal_kafka(sink, ["--kafka_sink_topic", "o"], sink=True)
    assert resolved == ("kafka", "o", [], "Warn", 0, 1000000, encode)


def test_default_kafka_parsers_are_resolved_from_the_args_compile_plan_is_given():
    source = wallaroo.DefaultKafkaSourceCLIParser(decode, name="feed")
    sink = wallaroo.DefaultKafkaSinkCLIParser(encode)
    builder = wallaroo.ApplicationBuilder("app")
    builder.new_pipeline("p", source).to(double).to_sink(sink)
    pipeline_app = wallaroo.build_application("app", wallaroo.source("p", source).to_sink(sink))

    def topics(app, args):
        (pipeline,) = compile_plan(app, "app.py", args)["pipelines"]
        return pipeline["source"]["topic"], pipeline["sink"]["topic"]

    for app in (builder.build(), pipeline_app):
        first = ["--feed_topic", "in1", "--kafka_sink_topic", "out1"]
        assert topics(app, first) == ("in1", "out1")
        # Each compile reads its own arguments (nothing kept from the one before).
        second = ["--feed_topic", "in2", "--kafka_sink_topic", "out2"]
        assert topics(app, second) == ("in2", "out2")
        with pytest.raises(ApplicationError, match="no topic"):
            topics(app, [])


def test_gen_source_config_needs_the_generator_methods():
    with pytest.raises(wallaroo.WallarooParameterError, match="initial_value"):
        wallaroo.GenSourceConfig(object())


@pytest.mark.timeout(90)
def test_alphabet_05_runs_with_dynamic_keys_a_generator_and_two_sinks(run_app, tmp_path):
    out, copy = tmp_path / "out.txt", tmp_path / "copy.txt"
    result = run_app(
        APPS / "alphabet_05.py", "--output", str(out), "--copy", str(copy), "--votes", "30"
    )
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    # Independently: vote 0 is "a", vote i is "abc"[i % 3].
    letters = ["a"] + ["abc"[i % 3] for i in range(1, 30)]
    assert len(lines) == 30
    last = {}
    for line in lines:
        letter, total = line.split()
        last[letter] = int(total)
    assert last == dict(Counter(letters))
    assert copy.read_text().splitlines() == [line.upper() for line in lines]


def test_to_sinks_compiles_to_one_sink_per_config():
    plan = _builder_plan(
        lambda ab: ab.new_pipeline("p", wallaroo.GenSourceConfig(Gen()))
        .to(double)
        .to_sinks(
            [wallaroo.TCPSinkConfig("127.0.0.1", 9, encode), wallaroo.FileSinkConfig("f", encode)]
        )
    )
    sink = plan["pipelines"][0]["sink"]
    assert sink["kind"] == "many"
    assert [s["kind"] for s in sink["sinks"]] == ["tcp", "file"]
    assert sink["encode"](3) == ["3", "3"]
