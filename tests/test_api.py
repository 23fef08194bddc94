"""Unit tests of the public Python API (``import wallaroo``), without the engine.

Run with ``PYTHONPATH=python:tests pytest tests/test_api.py -q``.
"""

import os
import pickle
import struct
import subprocess
import sys

import apps_for_pickle as apps
import pytest
import wallaroo

ALL_PROTOCOLS = list(range(pickle.HIGHEST_PROTOCOL + 1))

# ---------------------------------------------------------------------------
# Module surface
# ---------------------------------------------------------------------------


def test_every_name_in_all_is_exported():
    missing = [name for name in wallaroo.__all__ if not hasattr(wallaroo, name)]
    assert missing == []


def test_wallaroo_parameter_error_is_an_exception():
    assert issubclass(wallaroo.WallarooParameterError, Exception)


def test_serialize_deserialize_round_trip_of_plain_data():
    record = {"repo": "a/b", "stars": [1, 2, 3], "nested": ("x", None, 1.5), "raw": b"\x00\xff"}
    data = wallaroo.serialize(record)
    assert isinstance(data, bytes)
    assert wallaroo.deserialize(data) == record


def test_serialize_deserialize_round_trip_of_a_decorated_object():
    restored = wallaroo.deserialize(wallaroo.serialize(apps.double))
    assert restored.compute(21) == 42


def test_serialize_uses_pickle():
    assert pickle.loads(wallaroo.serialize([1, "two"])) == [1, "two"]
    assert wallaroo.deserialize(pickle.dumps({"k": 3}, protocol=0)) == {"k": 3}


# ---------------------------------------------------------------------------
# Decorators
# ---------------------------------------------------------------------------


def test_computation_compute_and_name():
    @wallaroo.computation(name="add one")
    def add_one(data):
        return data + 1

    assert add_one.name() == "add one"
    assert add_one.compute(1) == 2


def test_computation_compute_may_return_none():
    @wallaroo.computation(name="drop odd")
    def drop_odd(data):
        return data if data % 2 == 0 else None

    assert drop_odd.compute(3) is None
    assert drop_odd.compute(4) == 4


def test_computation_name_given_positionally():
    @wallaroo.computation("positional name")
    def step(data):
        return data

    assert step.name() == "positional name"


def test_computation_multi_compute_multi_and_name():
    @wallaroo.computation_multi(name="split")
    def split(data):
        return data.split(",")

    assert split.name() == "split"
    assert split.compute_multi("a,b,c") == ["a", "b", "c"]


def test_computation_multi_may_return_none():
    @wallaroo.computation_multi(name="nothing")
    def nothing(data):
        return None

    assert nothing.compute_multi("x") is None


def test_state_computation_compute_and_name():
    @wallaroo.state_computation(name="count")
    def count(data, state):
        state["n"] = state.get("n", 0) + data
        return state["n"], True

    state = {}
    assert count.name() == "count"
    assert count.compute(2, state) == (2, True)
    assert count.compute(3, state) == (5, True)
    assert state == {"n": 5}


def test_state_computation_multi_compute_multi_and_name():
    @wallaroo.state_computation_multi(name="echo twice")
    def echo_twice(data, state):
        state.append(data)
        return [data, data], False

    state = []
    assert echo_twice.name() == "echo twice"
    assert echo_twice.compute_multi("x", state) == (["x", "x"], False)
    assert state == ["x"]


@pytest.mark.parametrize(
    "decorator",
    [
        wallaroo.computation,
        wallaroo.computation_multi,
        wallaroo.state_computation,
        wallaroo.state_computation_multi,
    ],
)
def test_named_decorators_default_to_the_function_name(decorator):
    @decorator()
    def my_step_function(*args):
        return None

    assert my_step_function.name() == "my_step_function"


def test_partition_partition():
    @wallaroo.partition
    def by_first_letter(data):
        return data[0]

    assert by_first_letter.partition("hello") == "h"
    assert by_first_letter.partition("world") == "w"


def test_encoder_encode():
    @wallaroo.encoder
    def frame(data):
        payload = data.encode()
        return struct.pack(">I", len(payload)) + payload

    assert frame.encode("abc") == b"\x00\x00\x00\x03abc"


def test_encoder_may_return_str_or_none():
    @wallaroo.encoder
    def as_text(data):
        return None if data is None else f"{data}\n"

    assert as_text.encode(5) == "5\n"
    assert as_text.encode(None) is None


def test_decoder_defaults_are_four_byte_big_endian():
    @wallaroo.decoder()
    def decode(data):
        return data

    assert decode.header_length() == 4
    assert decode.payload_length(struct.pack(">I", 70000)) == 70000


@pytest.mark.parametrize(
    ("header_length", "length_fmt", "value"),
    [
        (4, ">I", 123456),
        (4, ">I", 2**32 - 1),
        (2, ">H", 513),
        (2, ">H", 0),
        (8, "<Q", 2**40 + 7),
        (1, "B", 200),
    ],
)
def test_decoder_header_and_payload_length(header_length, length_fmt, value):
    @wallaroo.decoder(header_length=header_length, length_fmt=length_fmt)
    def decode(data):
        return data.decode("utf-8")

    header = struct.pack(length_fmt, value)
    assert decode.header_length() == header_length
    assert decode.payload_length(header) == value
    assert decode.length_fmt() == length_fmt
    assert decode.decode(b"h\xc3\xa9") == "h\u00e9"


def test_decoder_payload_length_follows_byte_order():
    @wallaroo.decoder(header_length=2, length_fmt=">H")
    def big(data):
        return data

    @wallaroo.decoder(header_length=2, length_fmt="<H")
    def little(data):
        return data

    assert big.payload_length(b"\x01\x02") == 0x0102
    assert little.payload_length(b"\x01\x02") == 0x0201


def test_decoder_payload_length_accepts_bytearray_and_memoryview():
    @wallaroo.decoder(header_length=4, length_fmt=">I")
    def decode(data):
        return data

    assert decode.payload_length(bytearray(b"\x00\x00\x01\x00")) == 256
    assert decode.payload_length(memoryview(b"\x00\x00\x01\x00")) == 256


@pytest.mark.parametrize(
    ("header_length", "length_fmt"),
    [(4, ">H"), (2, ">I"), (4, "<Q"), (8, ">I")],
)
def test_decoder_mismatched_length_fmt_raises(header_length, length_fmt):
    with pytest.raises(wallaroo.WallarooParameterError):

        @wallaroo.decoder(header_length=header_length, length_fmt=length_fmt)
        def decode(data):
            return data


@pytest.mark.parametrize("length_fmt", ["Z", ">", None])
def test_decoder_invalid_length_fmt_raises(length_fmt):
    with pytest.raises(wallaroo.WallarooParameterError):

        @wallaroo.decoder(header_length=4, length_fmt=length_fmt)
        def decode(data):
            return data


@pytest.mark.parametrize("header_length", [0, -4, "4", 4.0, True, None])
def test_decoder_bad_header_length_raises(header_length):
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo.decoder(header_length=header_length, length_fmt=">I")


@pytest.mark.parametrize(
    "obj",
    [
        apps.double,
        apps.split_words,
        apps.add_to_total,
        apps.add_and_echo,
        apps.first_letter,
        apps.decode_utf8,
        apps.encode_framed,
    ],
)
def test_calling_a_decorated_object_returns_itself(obj):
    assert obj() is obj
    assert obj("any", "arguments", key="word") is obj


def test_decorated_objects_keep_the_function_identity():
    assert apps.double.__name__ == "double"
    assert apps.double.__qualname__ == "double"
    assert apps.double.__module__ == "apps_for_pickle"
    assert "double" in repr(apps.double)


def test_decorated_object_kinds_have_their_methods():
    assert callable(apps.double.compute) and callable(apps.double.name)
    assert callable(apps.split_words.compute_multi)
    assert callable(apps.add_to_total.compute)
    assert callable(apps.add_and_echo.compute_multi)
    assert callable(apps.first_letter.partition)
    assert callable(apps.decode_utf8.decode)
    assert callable(apps.decode_utf8.payload_length)
    assert callable(apps.encode_framed.encode)


# ---------------------------------------------------------------------------
# Pickling decorated objects
# ---------------------------------------------------------------------------


def _round_trip(obj, protocol):
    return pickle.loads(pickle.dumps(obj, protocol=protocol))


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_pickle_computation(protocol):
    restored = _round_trip(apps.double, protocol)
    assert restored.name() == "double"
    assert restored.compute(4) == apps.double.compute(4) == 8


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_pickle_computation_multi(protocol):
    restored = _round_trip(apps.split_words, protocol)
    assert restored.name() == "split words"
    assert restored.compute_multi("a b") == apps.split_words.compute_multi("a b") == ["a", "b"]


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_pickle_state_computation(protocol):
    restored = _round_trip(apps.add_to_total, protocol)
    assert restored.name() == "add to total"
    assert restored.compute(3, [1, 2]) == apps.add_to_total.compute(3, [1, 2]) == (6, True)


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_pickle_state_computation_multi(protocol):
    restored = _round_trip(apps.add_and_echo, protocol)
    assert restored.name() == "add and echo"
    expected = ([5, 6], True)
    assert restored.compute_multi(5, [1]) == apps.add_and_echo.compute_multi(5, [1]) == expected


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_pickle_partition(protocol):
    restored = _round_trip(apps.first_letter, protocol)
    assert restored.partition("zebra") == apps.first_letter.partition("zebra") == "z"


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_pickle_decoder(protocol):
    restored = _round_trip(apps.decode_utf8, protocol)
    assert restored.header_length() == 4
    assert restored.payload_length(b"\x00\x00\x00\x09") == 9
    assert restored.decode(b"caf\xc3\xa9") == apps.decode_utf8.decode(b"caf\xc3\xa9") == "caf\u00e9"


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_pickle_little_endian_decoder(protocol):
    restored = _round_trip(apps.decode_reversed, protocol)
    assert restored.header_length() == 8
    assert restored.payload_length(struct.pack("<Q", 12345)) == 12345
    assert restored.decode(b"abc") == b"cba"


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_pickle_encoder(protocol):
    restored = _round_trip(apps.encode_framed, protocol)
    assert restored.encode("hi") == apps.encode_framed.encode("hi") == b"\x00\x00\x00\x02hi"


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_pickle_of_a_class_attribute_decorated_object(protocol):
    restored = _round_trip(apps.Holder.nested, protocol)
    assert restored.name() == "nested"
    assert restored.compute(1) == 2


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_pickle_by_reference_gives_back_the_module_object(protocol):
    assert _round_trip(apps.double, protocol) is apps.double
    assert _round_trip(apps.decode_utf8, protocol) is apps.decode_utf8


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_pickle_by_value_when_not_bound_to_its_function_name(protocol):
    restored = _round_trip(apps.TRIPLE, protocol)
    assert restored is not apps.TRIPLE
    assert restored.name() == "triple"
    assert restored.compute(3) == 9
    decoder = _round_trip(apps.UNBOUND_DECODER, protocol)
    assert decoder.header_length() == 2
    assert decoder.payload_length(b"\x00\x05") == 5
    assert decoder.decode(b"x") == b"x"


def test_pickle_of_a_decorated_object_in_a_list_with_data():
    restored = _round_trip([apps.double, {"k": 1}, apps.encode_framed], pickle.HIGHEST_PROTOCOL)
    assert restored[0].compute(5) == 10
    assert restored[1] == {"k": 1}
    assert restored[2].encode("") == b"\x00\x00\x00\x00"


def test_pickle_made_in_another_process_loads_here():
    code = (
        "import pickle, sys, apps_for_pickle as a; "
        "sys.stdout.buffer.write(pickle.dumps([a.double, a.split_words, a.add_to_total, "
        "a.add_and_echo, a.first_letter, a.decode_utf8, a.encode_framed]))"
    )
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    python_dir = os.path.join(os.path.dirname(here), "python")
    env["PYTHONPATH"] = os.pathsep.join([python_dir, here])
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, check=True
    ).stdout
    double, split, total, echo, part, dec, enc = pickle.loads(out)
    assert double.compute(2) == 4
    assert split.compute_multi("x y") == ["x", "y"]
    assert total.compute(1, [1]) == (2, True)
    assert echo.compute_multi(1, []) == ([1, 1], True)
    assert part.partition("abc") == "a"
    assert dec.decode(b"ok") == "ok"
    assert enc.encode("ok") == b"\x00\x00\x00\x02ok"


def test_pickle_of_a_local_decorated_object_fails_loudly():
    @wallaroo.computation(name="local")
    def local_step(data):
        return data

    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(local_step)


# ---------------------------------------------------------------------------
# Source and sink configs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["7010", 7010])
def test_tcp_source_config_accepts_str_or_int_port(port):
    config = wallaroo.TCPSourceConfig("127.0.0.1", port, apps.decode_utf8)
    assert config.host == "127.0.0.1"
    assert config.port == 7010
    assert isinstance(config.port, int)
    assert config.decoder is apps.decode_utf8
    assert config.to_tuple() == ("tcp", "127.0.0.1", "7010", apps.decode_utf8)


@pytest.mark.parametrize("port", ["7002", 7002])
def test_tcp_sink_config_accepts_str_or_int_port(port):
    config = wallaroo.TCPSinkConfig("localhost", port, apps.encode_framed)
    assert config.host == "localhost"
    assert config.port == 7002
    assert isinstance(config.port, int)
    assert config.encoder is apps.encode_framed
    assert config.to_tuple() == ("tcp", "localhost", "7002", apps.encode_framed)


@pytest.mark.parametrize("port", ["abc", "", None, -1, 65536, "70000", [7000]])
@pytest.mark.parametrize("config_class", [wallaroo.TCPSourceConfig, wallaroo.TCPSinkConfig])
def test_tcp_configs_reject_a_bad_port(config_class, port):
    with pytest.raises(wallaroo.WallarooParameterError):
        config_class("localhost", port, None)


@pytest.mark.parametrize("port", [0, "0", 65535, "65535"])
def test_tcp_configs_accept_the_port_range_ends(port):
    assert wallaroo.TCPSourceConfig("h", port, None).port == int(port)
    assert wallaroo.TCPSinkConfig("h", port, None).port == int(port)


def test_kafka_source_config():
    config = wallaroo.KafkaSourceConfig(
        "gharchive", [("kafka", "9092"), ("k2", "9093")], "Warn", apps.decode_utf8
    )
    assert config.topic == "gharchive"
    assert config.brokers == [("kafka", "9092"), ("k2", "9093")]
    assert config.log_level == "Warn"
    assert config.decoder is apps.decode_utf8
    assert config.to_tuple() == (
        "kafka",
        "gharchive",
        [("kafka", "9092"), ("k2", "9093")],
        "Warn",
        apps.decode_utf8,
    )


def test_kafka_sink_config():
    config = wallaroo.KafkaSinkConfig(
        "leaderboard", [("kafka", "9092")], "Error", "5", "200000", apps.encode_framed
    )
    assert config.topic == "leaderboard"
    assert config.brokers == [("kafka", "9092")]
    assert config.log_level == "Error"
    assert config.max_produce_buffer_ms == 5
    assert config.max_message_size == 200000
    assert config.encoder is apps.encode_framed
    assert config.to_tuple() == (
        "kafka",
        "leaderboard",
        [("kafka", "9092")],
        "Error",
        5,
        200000,
        apps.encode_framed,
    )


def _kafka_source(brokers="", log_level="Warn"):
    return wallaroo.KafkaSourceConfig("t", brokers, log_level, None)


def _kafka_sink(brokers="", log_level="Warn"):
    return wallaroo.KafkaSinkConfig("t", brokers, log_level, 0, 100000, None)


@pytest.mark.parametrize("make", [_kafka_source, _kafka_sink])
@pytest.mark.parametrize(
    ("brokers", "expected"),
    [
        ([("a", "1")], [("a", "1")]),
        ([("a", 1)], [("a", "1")]),
        ((("a", "1"), ("b", "2")), [("a", "1"), ("b", "2")]),
        (["a:1", "b"], [("a", "1"), ("b", "9092")]),
        ("a:1,b", [("a", "1"), ("b", "9092")]),
        ("localhost:9092", [("localhost", "9092")]),
        ([("", "9092")], [("", "9092")]),
        ([], []),
    ],
)
def test_kafka_configs_normalise_brokers(make, brokers, expected):
    assert make(brokers=brokers).brokers == expected


@pytest.mark.parametrize("make", [_kafka_source, _kafka_sink])
@pytest.mark.parametrize("brokers", [[("a", "1", "x")], [("a",)], [42]])
def test_kafka_configs_reject_bad_brokers(make, brokers):
    with pytest.raises(wallaroo.WallarooParameterError):
        make(brokers=brokers)


@pytest.mark.parametrize("make", [_kafka_source, _kafka_sink])
@pytest.mark.parametrize("level", ["Fine", "Info", "Warn", "Error"])
def test_kafka_configs_accept_each_log_level(make, level):
    assert make(brokers=[("a", "1")], log_level=level).log_level == level


@pytest.mark.parametrize("make", [_kafka_source, _kafka_sink])
@pytest.mark.parametrize("level", ["Debug", "warn", "", None, 3])
def test_kafka_configs_reject_a_bad_log_level(make, level):
    with pytest.raises(wallaroo.WallarooParameterError):
        make(brokers=[("a", "1")], log_level=level)


@pytest.mark.parametrize(("buffer_ms", "size"), [("x", 1), (1, "big"), (None, 1), (1, None)])
def test_kafka_sink_config_rejects_non_numeric_limits(buffer_ms, size):
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo.KafkaSinkConfig("t", [("a", "1")], "Warn", buffer_ms, size, None)


@pytest.mark.parametrize("framing", ["lines", "length"])
def test_file_source_config(framing, tmp_path):
    path = tmp_path / "in.txt"
    config = wallaroo.FileSourceConfig(path, apps.decode_utf8, framing=framing)
    assert config.path == str(path)
    assert isinstance(config.path, str)
    assert config.framing == framing
    assert config.decoder is apps.decode_utf8
    assert config.to_tuple() == ("file", str(path), framing, apps.decode_utf8)


def test_file_source_config_defaults_to_lines():
    assert wallaroo.FileSourceConfig("in.txt", None).framing == "lines"


@pytest.mark.parametrize("framing", ["line", "Lines", "", None, "tcp"])
def test_file_source_config_rejects_unknown_framing(framing):
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo.FileSourceConfig("in.txt", None, framing=framing)


def test_file_sink_config(tmp_path):
    path = tmp_path / "out.txt"
    config = wallaroo.FileSinkConfig(path, apps.encode_framed)
    assert config.path == str(path)
    assert config.encoder is apps.encode_framed
    assert config.to_tuple() == ("file", str(path), apps.encode_framed)


def test_stdout_sink_config():
    config = wallaroo.StdoutSinkConfig(apps.encode_framed)
    assert config.encoder is apps.encode_framed
    assert config.to_tuple() == ("stdout", apps.encode_framed)


def test_config_kinds():
    assert wallaroo.TCPSourceConfig.kind == "tcp"
    assert wallaroo.TCPSinkConfig.kind == "tcp"
    assert wallaroo.KafkaSourceConfig.kind == "kafka"
    assert wallaroo.KafkaSinkConfig.kind == "kafka"
    assert wallaroo.FileSourceConfig.kind == "file"
    assert wallaroo.FileSinkConfig.kind == "file"
    assert wallaroo.StdoutSinkConfig.kind == "stdout"


# ---------------------------------------------------------------------------
# ApplicationBuilder
# ---------------------------------------------------------------------------


class Counter:
    def __init__(self):
        self.count = 0


def _partition_by_parity(data):
    return data % 2


PARITY = wallaroo.partition(_partition_by_parity)


def test_builder_starts_with_the_name_action():
    assert wallaroo.ApplicationBuilder("My App").build() == [("name", "My App")]


def test_every_builder_method_returns_the_builder():
    builder = wallaroo.ApplicationBuilder("chain")
    source = wallaroo.TCPSourceConfig("localhost", "7010", apps.decode_utf8)
    sink = wallaroo.TCPSinkConfig("localhost", "7002", apps.encode_framed)
    assert builder.new_pipeline("p", source) is builder
    assert builder.to(apps.double) is builder
    assert builder.to_parallel(apps.double) is builder
    assert builder.to_stateful(apps.add_to_total, Counter, "counter") is builder
    assert builder.to_state_partition(apps.add_to_total, Counter, "s", PARITY, [0, 1]) is builder
    assert builder.to_state_partition_u64(apps.add_to_total, Counter, "u", PARITY, [0]) is builder
    assert builder.to_sink(sink) is builder
    assert builder.done() is builder
    assert [action[0] for action in builder.build()] == [
        "name",
        "new_pipeline",
        "to",
        "to_parallel",
        "to_stateful",
        "to_state_partition",
        "to_state_partition_u64",
        "to_sink",
        "done",
    ]


def test_build_of_a_multi_pipeline_app_gives_the_exact_actions():
    source_a = wallaroo.TCPSourceConfig("localhost", "7010", apps.decode_utf8)
    source_b = wallaroo.KafkaSourceConfig("topic", [("k", "9092")], "Info", apps.decode_utf8)
    sink_a = wallaroo.TCPSinkConfig("localhost", 7002, apps.encode_framed)
    sink_b = wallaroo.StdoutSinkConfig(apps.encode_framed)
    actions = (
        wallaroo.ApplicationBuilder("Two Pipelines")
        .new_pipeline("first", source_a)
        .to(apps.double)
        .to_state_partition(apps.add_to_total, Counter, "totals", PARITY, [0, 1])
        .to_sink(sink_a)
        .new_pipeline("second", source_b)
        .to_parallel(apps.split_words)
        .to_stateful(apps.add_and_echo, Counter, "totals")
        .to_state_partition_u64(apps.add_to_total, Counter, "by_u64", PARITY, [0, 1])
        .to_sink(sink_b)
        .done()
        .build()
    )
    assert actions == [
        ("name", "Two Pipelines"),
        ("new_pipeline", "first", source_a),
        ("to", apps.double),
        ("to_state_partition", apps.add_to_total, Counter, "totals", PARITY, [0, 1]),
        ("to_sink", sink_a),
        ("new_pipeline", "second", source_b),
        ("to_parallel", apps.split_words),
        ("to_stateful", apps.add_and_echo, Counter, "totals"),
        ("to_state_partition_u64", apps.add_to_total, Counter, "by_u64", PARITY, [0, 1]),
        ("to_sink", sink_b),
        ("done",),
    ]


def test_new_pipeline_after_to_sink_without_done():
    source = wallaroo.TCPSourceConfig("localhost", "7000", apps.decode_utf8)
    sink = wallaroo.TCPSinkConfig("localhost", "7002", apps.encode_framed)
    actions = (
        wallaroo.ApplicationBuilder("market spread")
        .new_pipeline("orders", source)
        .to_sink(sink)
        .new_pipeline("nbbo", source)
        .to(apps.double)
        .done()
        .build()
    )
    assert actions == [
        ("name", "market spread"),
        ("new_pipeline", "orders", source),
        ("to_sink", sink),
        ("new_pipeline", "nbbo", source),
        ("to", apps.double),
        ("done",),
    ]


def test_done_ends_a_pipeline_without_a_sink():
    source = wallaroo.TCPSourceConfig("localhost", "7000", apps.decode_utf8)
    actions = wallaroo.ApplicationBuilder("a").new_pipeline("p", source).to(apps.double).done()
    assert actions.build()[-1] == ("done",)


def test_to_state_partition_with_keys_makes_a_list():
    actions = (
        wallaroo.ApplicationBuilder("a")
        .to_state_partition(apps.add_to_total, Counter, "s", PARITY, (k for k in "abc"))
        .build()
    )
    assert actions[1] == (
        "to_state_partition",
        apps.add_to_total,
        Counter,
        "s",
        PARITY,
        ["a", "b", "c"],
    )


def test_to_state_partition_without_keys():
    actions = (
        wallaroo.ApplicationBuilder("a")
        .to_state_partition(apps.add_to_total, Counter, "s", PARITY)
        .build()
    )
    assert actions[1] == ("to_state_partition", apps.add_to_total, Counter, "s", PARITY, [])


def test_to_state_partition_with_none_keys():
    actions = (
        wallaroo.ApplicationBuilder("a")
        .to_state_partition(apps.add_to_total, Counter, "s", PARITY, None)
        .build()
    )
    assert actions[1][-1] == []


def test_to_state_partition_u64_with_and_without_keys():
    with_keys = (
        wallaroo.ApplicationBuilder("a")
        .to_state_partition_u64(apps.add_to_total, Counter, "s", PARITY, range(3))
        .build()
    )
    without_keys = (
        wallaroo.ApplicationBuilder("a")
        .to_state_partition_u64(apps.add_to_total, Counter, "s", PARITY)
        .build()
    )
    assert with_keys[1] == (
        "to_state_partition_u64",
        apps.add_to_total,
        Counter,
        "s",
        PARITY,
        [0, 1, 2],
    )
    assert without_keys[1] == (
        "to_state_partition_u64",
        apps.add_to_total,
        Counter,
        "s",
        PARITY,
        [],
    )


def test_to_state_partition_accepts_a_plain_partitioner_object():
    class Partitioner:
        partitions = [0, 1, 2]

        def partition(self, data):
            return hash(data) % 3

    partitioner = Partitioner()
    actions = (
        wallaroo.ApplicationBuilder("a")
        .to_state_partition(apps.add_to_total, Counter, "s", partitioner, partitioner.partitions)
        .build()
    )
    assert actions[1][4] is partitioner
    assert actions[1][5] == [0, 1, 2]
    assert actions[1][5] is not partitioner.partitions


def test_to_stateful_action():
    actions = wallaroo.ApplicationBuilder("a").to_stateful(apps.add_to_total, Counter, "c").build()
    assert actions == [("name", "a"), ("to_stateful", apps.add_to_total, Counter, "c")]


def test_to_parallel_action():
    actions = wallaroo.ApplicationBuilder("a").to_parallel(apps.split_words).build()
    assert actions == [("name", "a"), ("to_parallel", apps.split_words)]


def test_build_returns_a_fresh_list_each_time():
    builder = wallaroo.ApplicationBuilder("a").to(apps.double)
    first = builder.build()
    first.append(("junk",))
    assert builder.build() == [("name", "a"), ("to", apps.double)]


def test_builder_accepts_hand_written_duck_typed_steps():
    class Upper:
        def name(self):
            return "upper"

        def compute(self, data):
            return data.upper()

    step = Upper()
    actions = wallaroo.ApplicationBuilder("a").to(step).build()
    assert actions[1] == ("to", step)
    assert actions[1][1].compute("x") == "X"


# ---------------------------------------------------------------------------
# Argument helpers
# ---------------------------------------------------------------------------

RUNNER_FLAGS_BEFORE = ["machida", "--application-module", "app", "-t", "--ponythreads=1"]
RUNNER_FLAGS_AFTER = [
    "-c",
    "127.0.0.1:6000",
    "-d",
    "127.0.0.1:6001",
    "-n",
    "worker1",
    "--ponynoblock",
]
KAFKA_SOURCE_FLAGS = [
    "--kafka_source_topic",
    "in",
    "--kafka_source_brokers",
    "k1:1,k2",
    "--kafka_source_log_level",
    "Info",
]
KAFKA_SINK_FLAGS = [
    "--kafka_sink_topic",
    "out",
    "--kafka_sink_brokers",
    "k3:3",
    "--kafka_sink_log_level",
    "Error",
    "--kafka_sink_max_produce_buffer_ms",
    "20",
    "--kafka_sink_max_message_size",
    "500",
]
TCP_FLAGS = ["-i", "127.0.0.1:7010,127.0.0.1:7011", "-o", "127.0.0.1:7002"]
ALL_APP_FLAGS = TCP_FLAGS + KAFKA_SOURCE_FLAGS + KAFKA_SINK_FLAGS


@pytest.mark.parametrize("flag", ["-i", "--in"])
def test_tcp_parse_input_addrs_single(flag):
    assert wallaroo.tcp_parse_input_addrs([flag, "127.0.0.1:7010"]) == [("127.0.0.1", "7010")]


@pytest.mark.parametrize("flag", ["-i", "--in"])
def test_tcp_parse_input_addrs_several_mixed_with_other_flags(flag):
    args = RUNNER_FLAGS_BEFORE + [flag, "a:1,b:2,c:3"] + RUNNER_FLAGS_AFTER
    assert wallaroo.tcp_parse_input_addrs(args) == [("a", "1"), ("b", "2"), ("c", "3")]


def test_tcp_parse_input_addrs_equals_form():
    assert wallaroo.tcp_parse_input_addrs(["--in=h:9"]) == [("h", "9")]


@pytest.mark.parametrize("flag", ["-o", "--out"])
def test_tcp_parse_output_addrs_single(flag):
    assert wallaroo.tcp_parse_output_addrs([flag, "localhost:7002"]) == [("localhost", "7002")]


@pytest.mark.parametrize("flag", ["-o", "--out"])
def test_tcp_parse_output_addrs_several_mixed_with_other_flags(flag):
    args = RUNNER_FLAGS_BEFORE + [flag, "x:10,y:20"] + RUNNER_FLAGS_AFTER
    assert wallaroo.tcp_parse_output_addrs(args) == [("x", "10"), ("y", "20")]


def test_tcp_helpers_ignore_each_others_and_the_kafka_flags():
    args = RUNNER_FLAGS_BEFORE + ALL_APP_FLAGS + RUNNER_FLAGS_AFTER
    assert wallaroo.tcp_parse_input_addrs(args) == [("127.0.0.1", "7010"), ("127.0.0.1", "7011")]
    assert wallaroo.tcp_parse_output_addrs(args) == [("127.0.0.1", "7002")]


def test_tcp_parse_input_addrs_missing_flag_exits(capsys):
    with pytest.raises(SystemExit) as excinfo:
        wallaroo.tcp_parse_input_addrs(RUNNER_FLAGS_BEFORE + ["-o", "a:1"])
    assert excinfo.value.code != 0
    assert "--in" in capsys.readouterr().err


def test_tcp_parse_output_addrs_missing_flag_exits(capsys):
    with pytest.raises(SystemExit) as excinfo:
        wallaroo.tcp_parse_output_addrs(RUNNER_FLAGS_BEFORE + ["-i", "a:1"])
    assert excinfo.value.code != 0
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nohostport", "a:1,b", "a:"])
def test_tcp_parse_addrs_rejects_an_address_without_a_port(value):
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo.tcp_parse_input_addrs(["-i", value])


def test_kafka_parse_source_options_defaults():
    assert wallaroo.kafka_parse_source_options(["machida"]) == ("", [("", "9092")], "Warn")


def test_kafka_parse_source_options_values():
    args = [
        "--kafka_source_topic",
        "gharchive",
        "--kafka_source_brokers",
        "a:1,b",
        "--kafka_source_log_level",
        "Fine",
    ]
    assert wallaroo.kafka_parse_source_options(args) == (
        "gharchive",
        [("a", "1"), ("b", "9092")],
        "Fine",
    )


def test_kafka_parse_source_options_ignores_other_helpers_flags():
    args = RUNNER_FLAGS_BEFORE + ALL_APP_FLAGS + RUNNER_FLAGS_AFTER
    assert wallaroo.kafka_parse_source_options(args) == (
        "in",
        [("k1", "1"), ("k2", "9092")],
        "Info",
    )


def test_kafka_parse_source_options_bad_log_level_exits():
    with pytest.raises(SystemExit) as excinfo:
        wallaroo.kafka_parse_source_options(["--kafka_source_log_level", "Debug"])
    assert excinfo.value.code != 0


def test_kafka_parse_sink_options_defaults():
    assert wallaroo.kafka_parse_sink_options(["machida"]) == (
        "",
        [("", "9092")],
        "Warn",
        0,
        100000,
    )


def test_kafka_parse_sink_options_values_are_ints():
    args = [
        "--kafka_sink_topic",
        "leaderboard",
        "--kafka_sink_brokers",
        "kafka:9092,other",
        "--kafka_sink_log_level",
        "Info",
        "--kafka_sink_max_produce_buffer_ms",
        "15",
        "--kafka_sink_max_message_size",
        "2048",
    ]
    topic, brokers, log_level, buffer_ms, size = wallaroo.kafka_parse_sink_options(args)
    assert (topic, brokers, log_level) == (
        "leaderboard",
        [("kafka", "9092"), ("other", "9092")],
        "Info",
    )
    assert buffer_ms == 15 and isinstance(buffer_ms, int)
    assert size == 2048 and isinstance(size, int)


def test_kafka_parse_sink_options_ignores_other_helpers_flags():
    args = RUNNER_FLAGS_BEFORE + ALL_APP_FLAGS + RUNNER_FLAGS_AFTER
    assert wallaroo.kafka_parse_sink_options(args) == ("out", [("k3", "3")], "Error", 20, 500)


@pytest.mark.parametrize(
    "flag", ["--kafka_sink_max_produce_buffer_ms", "--kafka_sink_max_message_size"]
)
@pytest.mark.parametrize("value", ["abc", "1.5", ""])
def test_kafka_parse_sink_options_bad_int_exits(flag, value):
    with pytest.raises(SystemExit) as excinfo:
        wallaroo.kafka_parse_sink_options([flag, value])
    assert excinfo.value.code != 0


@pytest.mark.parametrize("level", ["Debug", "warn", "WARN"])
def test_kafka_parse_sink_options_bad_log_level_exits(level):
    with pytest.raises(SystemExit) as excinfo:
        wallaroo.kafka_parse_sink_options(["--kafka_sink_log_level", level])
    assert excinfo.value.code != 0


def test_helper_results_feed_the_configs():
    args = RUNNER_FLAGS_BEFORE + ALL_APP_FLAGS
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    topic, brokers, log_level = wallaroo.kafka_parse_source_options(args)
    sink_options = wallaroo.kafka_parse_sink_options(args)
    tcp_source = wallaroo.TCPSourceConfig(in_host, in_port, apps.decode_utf8)
    tcp_sink = wallaroo.TCPSinkConfig(out_host, out_port, apps.encode_framed)
    kafka_source = wallaroo.KafkaSourceConfig(topic, brokers, log_level, apps.decode_utf8)
    kafka_sink = wallaroo.KafkaSinkConfig(*sink_options, apps.encode_framed)
    assert tcp_source.port == 7010
    assert tcp_sink.port == 7002
    assert kafka_source.brokers == [("k1", "1"), ("k2", "9092")]
    assert kafka_sink.to_tuple()[1:6] == ("out", [("k3", "3")], "Error", 20, 500)
