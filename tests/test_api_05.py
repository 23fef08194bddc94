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


# ---------------------------------------------------------------------------
# Arity checks of the decorators (0.5+) and the checks of 0.5's build()
# ---------------------------------------------------------------------------


def _two(data, extra):
    return data


def _none():
    return None


def _three(data, state, extra):
    return data


def _one(data):
    return data


_EX = wallaroo.experimental
_ARITY_CASES = [
    # (decorator, function, the decorator as the message names it, what it expects)
    (wallaroo.computation(name="c"), _two, "computation(name='c')", "1 positional argument (data)"),
    (wallaroo.computation_multi(name="m"), _none, "computation_multi(name='m')", "(data)"),
    (
        wallaroo.state_computation(name="s"),
        _one,
        "state_computation(name='s')",
        "2 positional arguments (data, state)",
    ),
    (
        wallaroo.state_computation_multi(name="sm"),
        _three,
        "state_computation_multi(name='sm')",
        "(data, state)",
    ),
    (
        wallaroo.state_computation(name="s6", state=dict),
        _one,
        "state_computation(name='s6', state=...)",
        "(data, state)",
    ),
    (wallaroo.partition, _two, "partition", "(data)"),
    (
        wallaroo.decoder(header_length=4, length_fmt=">I"),
        _none,
        "decoder(header_length=4, length_fmt='>I')",
        "(payload bytes)",
    ),
    (wallaroo.encoder, _two, "encoder", "(data)"),
    (wallaroo.key_extractor, _none, "key_extractor", "(data)"),
    (_EX.stream_message_encoder, _two, "experimental.stream_message_encoder", "(data)"),
    (_EX.stream_message_decoder, _none, "experimental.stream_message_decoder", "(payload bytes)"),
]


@pytest.mark.parametrize(("decorate", "func", "call", "expects"), _ARITY_CASES)
def test_a_decorated_function_of_the_wrong_arity_fails_naming_it(decorate, func, call, expects):
    with pytest.raises(wallaroo.WallarooParameterError) as err:
        decorate(func)
    message = str(err.value)
    assert message.startswith(f"@wallaroo.{call} on {func.__name__}() ({__file__}, line ")
    assert f"line {func.__code__.co_firstlineno})" in message
    assert expects in message


def test_arity_accepts_what_can_be_called_so():
    def defaults(data, state, extra=1):
        return (data, True)

    def star(*args):
        return args[0]

    class Callable:
        def __call__(self, data):
            return data

    assert wallaroo.state_computation(name="d")(defaults).compute(1, None) == (1, True)
    assert wallaroo.computation(name="star")(star).compute(3) == 3
    assert wallaroo.computation(name="inst")(Callable()).compute(4) == 4
    assert wallaroo.encoder(lambda x: x).encode("y") == "y"
    with pytest.raises(wallaroo.WallarooParameterError, match="must accept 1 positional"):
        wallaroo.computation(name="kw")(lambda data, *, keyword: data)
    with pytest.raises(wallaroo.WallarooParameterError, match="expected a function, got 5"):
        wallaroo.partition(5)


def _state_app(**extra):
    """A 0.5 app (to_sinks) whose second step is configurable."""

    @wallaroo.state_computation(name="count")
    def count(x, state):
        return (x, True)

    ab = wallaroo.ApplicationBuilder("checks")
    ab.new_pipeline("p", wallaroo.GenSourceConfig(Gen())).to_stateful(count, Counter, "tally")
    ab.to_sinks([wallaroo.TCPSinkConfig("127.0.0.1", 9, encode)])
    return ab, count


@wallaroo.partition
def _by_parity(x):
    return x % 2


def test_05_build_rejects_a_reused_pipeline_name():
    ab, _ = _state_app()
    ab.new_pipeline("p", wallaroo.GenSourceConfig(Gen())).to(double).done()
    with pytest.raises(wallaroo.WallarooParameterError) as err:
        ab.build()
    assert str(err.value) == (
        "ApplicationBuilder.build(): new_pipeline('p', ...): a pipeline named 'p' exists already; "
        "pipeline names must be unique (Wallaroo 0.5 checks this; the app is 0.5 because it "
        "calls GenSourceConfig(...))"
    )


def test_05_build_rejects_a_state_name_with_another_class_or_partitioning():
    ab, count = _state_app()
    ab.new_pipeline("q", wallaroo.GenSourceConfig(Gen())).to_stateful(count, dict, "tally")
    with pytest.raises(wallaroo.WallarooParameterError) as err:
        ab.build()
    assert "to_stateful(" in str(err.value) and "state 'tally' is made by Counter" in str(err.value)
    ab, count = _state_app()
    ab.new_pipeline("q", wallaroo.GenSourceConfig(Gen()))
    ab.to_state_partition(count, Counter, "tally", _by_parity, ["0", "1"])
    keys = r"partitioned by keys None .*here by \['0', '1'\]"
    with pytest.raises(wallaroo.WallarooParameterError, match=keys):
        ab.build()


@pytest.mark.parametrize(
    ("keys", "problem"),
    [(["a", "b", "a"], "partition key 'a' is listed twice"), ([["a"]], "cannot be hashed")],
)
def test_05_build_rejects_bad_partition_keys(keys, problem):
    ab, count = _state_app()
    ab.new_pipeline("q", wallaroo.GenSourceConfig(Gen()))
    ab.to_state_partition(count, Counter, "by key", _by_parity, keys).to_sink(
        wallaroo.TCPSinkConfig("127.0.0.1", 9, encode)
    )
    with pytest.raises(wallaroo.WallarooParameterError, match=problem):
        ab.build()


def test_05_build_needs_a_sink_and_042_build_checks_nothing():
    ab = wallaroo.ApplicationBuilder("no sink")
    ab.new_pipeline("p", wallaroo.GenSourceConfig(Gen())).to(double).done()
    with pytest.raises(wallaroo.WallarooParameterError, match="the application has no sink"):
        ab.build()
    # The same mistakes in a 0.4.2 app: 0.4.2's build() did not check them.
    ab = wallaroo.ApplicationBuilder("0.4.2")
    source = wallaroo.TCPSourceConfig("127.0.0.1", 0, decode)
    ab.new_pipeline("p", source).to(double).done()
    ab.new_pipeline("p", source).to(double).done()
    assert [a[0] for a in ab.build()] == ["name", "new_pipeline", "to", "done"] * 1 + [
        "new_pipeline",
        "to",
        "done",
    ]


def test_05_int_partition_keys_become_characters():
    @wallaroo.state_computation(name="total")
    def total(x, state):
        return (x, True)

    def plan(*sinks):
        ab = wallaroo.ApplicationBuilder("keys")
        ab.new_pipeline("p", wallaroo.TCPSourceConfig("127.0.0.1", 0, decode))
        ab.to_state_partition(total, Counter, "t", _by_parity, ["\x00", "\x01"])
        ab.to_sinks(sinks) if len(sinks) > 1 else ab.to_sink(sinks[0])
        return compile_plan(ab.build(), "app.py")

    sink = wallaroo.TCPSinkConfig("127.0.0.1", 9, encode)
    plan05 = plan(sink, sink)
    assert plan05["api_version"] == versions.V05
    assert plan05["pipelines"][0]["steps"][0]["partition"](3) == "\x01"
    plan042 = plan(sink)
    assert plan042["api_version"] == versions.V042
    assert plan042["pipelines"][0]["steps"][0]["partition"](3) == 1


def test_05_names_of_the_base_classes():
    assert isinstance(_by_parity, wallaroo.Partition)
    assert isinstance(double, wallaroo.BaseWrapped) and isinstance(decode, wallaroo.OctetDecoder)
    assert isinstance(encode, wallaroo.OctetEncoder)
    assert wallaroo.StateBuilder("s", Counter).____wallaroo_build____() == Counter()


BAD_ARITY_APP = '''
import wallaroo

@wallaroo.state_computation(name="add up")
def add_up(vote):
    return (vote, True)

def application_setup(args):
    raise AssertionError("not reached")
'''


def test_a_bad_arity_fails_the_start_naming_the_function(run_app, tmp_path):
    app = tmp_path / "bad_arity.py"
    app.write_text(BAD_ARITY_APP)
    result = run_app(app)
    assert result.returncode != 0
    assert (
        f"@wallaroo.state_computation(name='add up') on add_up() ({app}, line 4): the function "
        "must accept 2 positional arguments (data, state)"
    ) in result.stderr
    assert "not reached" not in result.stderr


def test_05_chained_pipelines_share_state_and_a_second_may_end_in_done():
    """0.5.4 market_spread's shape: ``.to_sink(...).new_pipeline(...)`` without
    ``done()`` between, the second pipeline sink-less, ended by ``done()``,
    both on one state name."""

    @wallaroo.state_computation(name="check order")
    def check(order, quotes):
        return (None, False)

    @wallaroo.state_computation(name="update quote")
    def update(quote, quotes):
        return (None, True)

    keys = ["AA", "BB"]
    ab = wallaroo.ApplicationBuilder("spread")
    ab.new_pipeline("Orders", wallaroo.GenSourceConfig(Gen()))
    ab.to_state_partition(check, dict, "quotes", _by_parity, keys)
    ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", 9, encode))
    ab.new_pipeline("Quotes", wallaroo.GenSourceConfig(Gen()))
    ab.to_state_partition(update, dict, "quotes", _by_parity, keys).done()
    plan = compile_plan(ab.build(), "spread.py")
    assert plan["api_version"] == versions.V05
    orders, quotes = plan["pipelines"]
    assert (orders["name"], orders["sink"]["kind"]) == ("Orders", "tcp")
    assert (quotes["name"], quotes["sink"]) == ("Quotes", None)
    assert [s["state_name"] for s in orders["steps"] + quotes["steps"]] == ["quotes", "quotes"]
    assert list(plan["states"]) == ["quotes"]


PRINTING_APP = '''
import wallaroo

def application_setup(args):
    port = args[args.index("--port") + 1]
    ab = wallaroo.ApplicationBuilder("printing")
    ab.new_pipeline("p", wallaroo.TCPSourceConfig("127.0.0.1", port, decode))
    ab.to(show).to_sinks([wallaroo.FileSinkConfig(args[args.index("--out") + 1], encode)])
    return ab.build()

@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return bs.decode()

@wallaroo.computation(name="show")
def show(text):
    print("saw " + text)
    return text

@wallaroo.encoder
def encode(text):
    return text + "\\n"
'''


@pytest.mark.timeout(120)
def test_05_app_output_to_a_pipe_shows_at_once(app_env, free_port, tmp_path):
    """0.5.4 flushed stdout at every write when it was not a terminal: a
    line the app prints reaches the pipe while it runs, not at its exit."""
    import socket
    import subprocess
    import sys
    import threading
    import time

    app = tmp_path / "printing.py"
    app.write_text(PRINTING_APP)
    env = app_env()
    env.pop("PYTHONUNBUFFERED", None)
    port = free_port()
    argv = [sys.executable, "-m", "wallaroo", str(app), "--port", str(port)]
    proc = subprocess.Popen(
        [*argv, "--out", str(tmp_path / "out.txt")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    lines: list = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "app not listening"
                time.sleep(0.1)
        with conn:
            conn.sendall(len(b"hello").to_bytes(4, "big") + b"hello")
            while b"saw hello\n" not in lines:
                assert time.monotonic() < deadline, f"not printed while running: {lines}"
                assert proc.poll() is None, "the app exited"
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)
