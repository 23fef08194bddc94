"""Wallaroo 0.6 pipeline applications: the Pipeline API, build_application's
shape, the 0.6 decorators and return contracts, merge, key_by/collect, version
detection, and apps run end to end."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import wallaroo
from wallaroo import versions
from wallaroo.plan import ApplicationError, compile_plan

APPS = Path(__file__).resolve().parent / "apps"


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return bs.decode()


@wallaroo.encoder
def encode(x):
    return f"{x}\n"


@wallaroo.computation(name="upper")
def upper(x):
    return x.upper()


@wallaroo.key_extractor
def first_letter(x):
    return x[0]


@wallaroo.key_extractor
def as_number(x):
    return 65


class Seen:
    def __init__(self):
        self.items = []


@wallaroo.state_computation(name="remember", state=Seen)
def remember(x, seen):
    seen.items.append(x)
    return (x, len(seen.items))


@wallaroo.state_computation_multi(name="twice", state=Seen)
def twice(x, seen):
    return [x, None, x]


def _source(name="src", path="in.txt"):
    return wallaroo.source(name, wallaroo.FileSourceConfig(path, decode))


def _sink():
    return wallaroo.FileSinkConfig("out.txt", encode)


def test_pipeline_methods_return_new_pipelines_and_leave_the_receiver():
    base = _source()
    keyed = base.key_by(first_letter)
    assert base is not keyed
    assert base._tree.vs == [[("source", "src", base._tree.vs[0][0][2])]]
    done = keyed.to(remember).collect().to(upper).to_sink(_sink())
    app = wallaroo.build_application("app", done)
    name, root, vs, es = app
    assert (name, root, es) == ("app", 0, [[]])
    assert [stage[0] for stage in vs[0]] == [
        "source",
        "key_by",
        "to_state",
        "collect",
        "to",
        "to_sink",
    ]
    with pytest.raises(wallaroo.WallarooParameterError):
        done.to(upper)


def test_build_application_needs_a_sink():
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo.build_application("app", _source().to(upper))


def test_merge_makes_a_tree_with_two_children():
    left = _source("a").to(upper)
    right = _source("b")
    merged = left.merge(right).key_by(first_letter).to(remember).to_sink(_sink())
    name, root, vs, es = wallaroo.build_application("app", merged)
    assert es[root] == [0, 2]
    assert vs[0][0][:2] == ("source", "a") and vs[2][0][:2] == ("source", "b")
    assert [s[0] for s in vs[root]] == ["key_by", "to_state", "to_sink"]
    assert left._tree.es == [[]]  # the receiver is unchanged


def test_a_merged_pipeline_compiles_to_one_engine_pipeline_per_source_sharing_state():
    merged = _source("a").to(upper).merge(_source("b")).key_by(first_letter).to(remember)
    plan = compile_plan(wallaroo.build_application("app", merged.to_sink(_sink())), "app.py")
    assert plan["api_version"] == versions.V06
    a, b = plan["pipelines"]
    assert [s["kind"] for s in a["steps"]] == ["map", "state"]
    assert [s["kind"] for s in b["steps"]] == ["state"]
    assert a["steps"][1]["state_name"] == b["steps"][0]["state_name"]
    assert a["sink"]["group"] == b["sink"]["group"]
    # The 0.6 state function's output is wrapped in the engine's (output, changed).
    assert a["steps"][1]["func"]("x", Seen()) == (("x", 1), True)


def test_key_extractor_int_becomes_a_character():
    assert as_number.extract_key("anything") == "A"


def test_a_decoders_none_is_dropped_by_the_first_keyed_window_step_itself():
    """0.5.1+: a decoder's None drops the record. The key function and the
    event-time window step of a first keyed stage take None themselves (no
    wrapper call per record): None keys None, the step drops it."""
    windows = (
        wallaroo.range_windows(10).with_event_time(lambda data: int(data[1:]))
        .over(_Count)
    )  # fmt: skip
    app = wallaroo.build_application(
        "app", _source().key_by(as_number).to(windows).to_sink(_sink())
    )
    step = compile_plan(app, "app.py")["pipelines"][0]["steps"][0]
    key_of, func = step["partition"], step["func"]
    assert getattr(key_of, "none_safe", False) and getattr(func, "none_safe", False)
    assert key_of(None) is None and key_of("x5") == "A"  # an int key is a character
    state = wallaroo.windows.KeyWindows()
    assert func(None, state, (0, 0)) == (None, False)
    assert not state.started
    assert list(func("x5", state, (0, 0))[0]) == [] and state.started


def test_0_6_state_computation_objects():
    assert remember.name() == "remember"
    assert isinstance(remember.initial_state(), Seen)
    assert remember.is_stateful
    assert remember.compute("a", Seen()) == ("a", 1)
    assert twice.compute_multi("a", Seen()) == ["a", None, "a"]


def test_un_keyed_state_gets_a_fresh_state_per_record():
    app = wallaroo.build_application("app", _source().to(remember).to_sink(_sink()))
    step = compile_plan(app, "app.py")["pipelines"][0]["steps"][0]
    assert step["kind"] == "map"
    assert step["func"]("a") == ("a", 1)
    assert step["func"]("a") == ("a", 1)


def test_a_builder_state_computation_in_a_pipeline_fails_naming_it():
    @wallaroo.state_computation(name="old style")
    def old(x, state):
        return (x, True)

    app = wallaroo.build_application("app", _source().key_by(first_letter).to(old).to_sink(_sink()))
    with pytest.raises(ApplicationError) as err:
        compile_plan(app, "app.py")
    assert "state_computation(name) is Wallaroo 0.4.2/0.5 API" in str(err.value)
    assert "0.6" in str(err.value)


def test_tcp_source_parallelism_is_0_6():
    config = wallaroo.TCPSourceConfig("127.0.0.1", 0, decode, parallelism=3)
    assert versions.mark_of(config).versions == versions.ONLY_06
    app = wallaroo.build_application("app", wallaroo.source("t", config).to_sink(_sink()))
    source = compile_plan(app, "app.py")["pipelines"][0]["source"]
    assert (source["kind"], source["max_connections"]) == ("tcp", 3)
    bad = wallaroo.TCPSourceConfig("127.0.0.1", 0, decode, parallelism=0)
    app = wallaroo.build_application("app", wallaroo.source("t", bad).to_sink(_sink()))
    with pytest.raises(ApplicationError, match="parallelism"):
        compile_plan(app, "app.py")


@pytest.mark.timeout(90)
def test_word_count_06_end_to_end(run_app, tmp_path):
    text = ["the cat and the hat", "a cat", "", "The end of the cat 42"]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(text) + "\n")
    out = tmp_path / "out.txt"
    result = run_app(APPS / "word_count_06.py", "--input", str(source), "--output", str(out))
    assert result.returncode == 0, result.stderr
    words = [w for line in text for w in line.lower().split() if w.isalpha()]
    got = [line.split() for line in out.read_text().splitlines()]
    assert len(got) == len(words)
    final = {}
    for word, count in got:
        final[word] = max(final.get(word, 0), int(count))
    assert final == dict(Counter(words))


def test_mixing_versions_fails_at_start_up(run_app, tmp_path):
    app = tmp_path / "mixed.py"
    app.write_text(
        "import wallaroo\n"
        "@wallaroo.state_computation(name='s', state=dict)\n"
        "def s(x, st):\n    return x\n"
        "@wallaroo.encoder\ndef e(x):\n    return x\n"
        "@wallaroo.decoder(header_length=4, length_fmt='>I')\ndef d(b):\n    return b\n"
        "def application_setup(args):\n"
        "    ab = wallaroo.ApplicationBuilder('mixed')\n"
        "    ab.new_pipeline('p', wallaroo.TCPSourceConfig('127.0.0.1', 0, d))\n"
        "    ab.to_stateful(s, dict, 'st')\n"
        "    ab.to_sink(wallaroo.TCPSinkConfig('127.0.0.1', 9, e))\n"
        "    return ab.build()\n"
    )
    result = run_app(app)
    assert result.returncode != 0
    assert re.search(r"state_computation\(name, state\) is Wallaroo 0\.6 API", result.stderr)
    assert "ApplicationBuilder is Wallaroo 0.4.2/0.5 API" in result.stderr


def test_collect_keys_every_record_alike_and_clone_is_independent():
    base = _source().to(upper)
    copy = base.clone()
    collected = base.collect().to(remember).to_sink(_sink())
    assert [s[0] for s in copy._tree.vs[0]] == ["source", "to"]
    plan = compile_plan(wallaroo.build_application("app", collected), "app.py")
    step = plan["pipelines"][0]["steps"][1]
    assert step["kind"] == "state"
    assert step["partition"]("a") == step["partition"]("zzz")


def test_un_keyed_windows_get_a_window_set_per_record():
    windows = wallaroo.count_windows(2).over(_Count)
    app = wallaroo.build_application("app", _source().to(windows).to_sink(_sink()))
    step = compile_plan(app, "app.py")["pipelines"][0]["steps"][0]
    assert step["kind"] == "state_multi" and callable(step["tick"])
    assert step["partition"]("a") != step["partition"]("a")


def test_to_sinks_in_a_pipeline_writes_each_output_to_every_sink():
    sinks = [_sink(), wallaroo.StdoutSinkConfig(encode)]
    app = wallaroo.build_application("app", _source().to(upper).to_sinks(sinks))
    sink = compile_plan(app, "app.py")["pipelines"][0]["sink"]
    assert [s["kind"] for s in sink["sinks"]] == ["file", "stdout"]
    assert sink["encode"]("x") == ["x\n", "x\n"]


class _Count(wallaroo.Aggregation):
    def initial_accumulator(self):
        return [0]

    def update(self, data, acc):
        acc[0] += 1

    def combine(self, a, b):
        return [a[0] + b[0]]

    def output(self, key, acc):
        return acc[0]


@pytest.mark.timeout(90)
def test_connectors_06_read_and_write_connector_frames(tcp_app):
    import socket
    import struct as st

    from wallaroo.receiver import Receiver

    words = [f"word {i} é" for i in range(50)]
    frames = b"".join(
        st.pack("<Iq", len(w.encode()) + 8, 1_700_000_000_000 + i) + w.encode()
        for i, w in enumerate(words)
    )
    with Receiver(length_fmt="<I") as rx:
        app_path = APPS / "connectors_06.py"
        with tcp_app(app_path, "--source-port", "0", "--sink-port", str(rx.port)) as app:
            ((_, _, port),) = app.listening()
            with socket.create_connection(("127.0.0.1", port)) as conn:
                conn.sendall(frames)
            assert rx.wait_for(len(words), timeout=30), app.stderr
    # Each output frame: event time 0, then the upper-cased payload.
    got = [(st.unpack("<q", m[:8])[0], m[8:].decode()) for m in rx.messages()]
    assert got == [(0, w.upper()) for w in words]


def test_connector_codecs_and_configs():
    import wallaroo.experimental as ex

    @ex.stream_message_encoder
    def enc(text):
        return text

    @ex.stream_message_decoder
    def dec(payload):
        return payload

    frame = enc.encode("hi", event_time=5)
    assert frame == b"\x0a\x00\x00\x00" + (5).to_bytes(8, "little") + b"hi"
    assert dec.header_length() == 4 and dec.payload_length(frame[:4]) == 10
    assert dec.decode(frame[4:]) == b"hi" and dec.decoder() is dec._func
    source = ex.SourceConnectorConfig("feed", enc, dec, 7100)
    assert source.to_tuple() == ("source_connector", "feed", "127.0.0.1", "7100", enc, dec)
    assert versions.mark_of(source).versions == versions.ONLY_06
    app = wallaroo.build_application(
        "app", wallaroo.source("s", source).to_sink(ex.SinkConnectorConfig("o", enc, dec, 7200))
    )
    plan = compile_plan(app, "app.py")["pipelines"][0]
    assert (plan["source"]["kind"], plan["source"]["port"]) == ("tcp", 7100)
    assert (plan["sink"]["kind"], plan["sink"]["port"]) == ("tcp", 7200)


def test_hand_written_0_6_classes_subclass_the_wallaroo_bases():
    class Tally(wallaroo.StateComputation):
        def name(self):
            return "tally"

        def compute(self, data, state):
            state.items.append(data)
            return len(state.items)

        def initial_state(self):
            return Seen()

    class Shout(wallaroo.Computation):
        def name(self):
            return "shout"

        def compute(self, data):
            return data + "!"

    pipeline = _source().to(Shout()).key_by(first_letter).to(Tally()).to_sink(_sink())
    shout, tally = compile_plan(wallaroo.build_application("app", pipeline), "app.py")[
        "pipelines"
    ][0]["steps"]
    assert (shout["kind"], shout["func"]("a")) == ("map", "a!")
    assert tally["kind"] == "state" and tally["func"]("a", Seen()) == (1, True)


@pytest.mark.timeout(120)
def test_tcp_source_parallelism_limits_the_connections_read_at_once(tcp_app):
    """parallelism=1: a second connection waits (in the listen backlog) until
    the first closes, as 0.6.1's pre-created source actors made it wait."""
    import struct
    import time

    from wallaroo.receiver import Receiver
    from wallaroo.sender import connect

    def send(sock, payload: bytes) -> None:
        sock.sendall(struct.pack(">I", len(payload)) + payload)

    def wait_for(condition, what: str) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    with Receiver(length_fmt=">I") as rx:
        app_path = APPS / "tcp_echo_06.py"
        args = ("--in", "127.0.0.1:0", "--out", f"127.0.0.1:{rx.port}", "--parallelism", "1")
        with tcp_app(app_path, *args) as app:
            ((_, _, in_port),) = app.listening()
            first = connect("127.0.0.1", in_port)
            send(first, b"a1")
            wait_for(lambda: b"a1" in rx.messages(), "a1")
            second = connect("127.0.0.1", in_port)  # the kernel's backlog takes it
            send(second, b"b1")
            send(first, b"a2")
            wait_for(lambda: b"a2" in rx.messages(), "a2")
            # The second connection is not read while the first is open.
            assert b"b1" not in rx.messages()
            assert "connection 2: accepted" not in app.stderr
            first.close()
            wait_for(lambda: b"b1" in rx.messages(), "b1 after the first connection closed")
            second.close()
            log = app.stderr
            assert log.index("connection 1: closed") < log.index("connection 2: accepted")


CLONE_APP = '''
import wallaroo


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return int(bs)


@wallaroo.computation(name="plus one")
def plus_one(x):
    return x + 1


@wallaroo.computation(name="times ten")
def times_ten(x):
    return x * 10


@wallaroo.computation(name="negate")
def negate(x):
    return -x


class Total:
    def __init__(self):
        self.value = 0


@wallaroo.state_computation(name="total", state=Total)
def total(x, state):
    state.value += x
    return f"{x} {state.value}"


@wallaroo.encoder
def encode(line):
    return line + "\\n"


def application_setup(args):
    import sys

    where = args[args.index("--where") + 1]
    if where == "tcp":
        config = wallaroo.TCPSourceConfig("127.0.0.1", args[args.index("--port") + 1], decode)
    elif where == "kafka":
        config = wallaroo.DefaultKafkaSourceCLIParser(decode)
    else:
        config = wallaroo.FileSourceConfig(args[args.index("--input") + 1], decode)
    numbers = wallaroo.source("Numbers", config).to(plus_one)
    copy = numbers.clone().to(times_ten)
    both = copy.merge(numbers.to(negate)).collect().to(total)
    sink = wallaroo.FileSinkConfig(args[args.index("--output") + 1], encode)
    return wallaroo.build_application("Clone merged back", both.to_sink(sink))
'''


def test_a_clone_merged_back_reads_its_source_twice(run_app, tmp_path):
    """``p.clone()`` merged back with ``p`` (both from one source): as in
    0.6.1, the source is in the application twice, each copy reading every
    record, so each record goes down both branches and the branches meet in
    the merged stages (here one state: the total of both)."""
    app = tmp_path / "clone_app.py"
    app.write_text(CLONE_APP)
    numbers, output = tmp_path / "numbers.txt", tmp_path / "out.txt"
    numbers.write_text("".join(f"{n}\n" for n in range(1, 6)))
    result = run_app(
        app, "--where", "file", "--input", str(numbers), "--output", str(output)
    )
    assert result.returncode == 0, result.stderr
    lines = output.read_text().splitlines()
    values = sorted(int(line.split()[0]) for line in lines)
    assert values == sorted([(n + 1) * 10 for n in range(1, 6)] + [-(n + 1) for n in range(1, 6)])
    # One state after the merge: its last total is the sum over both branches.
    assert sum(values) in {int(line.split()[1]) for line in lines}
    assert "'Numbers': 5 in" in result.stderr and "'Numbers (2)': 5 in" in result.stderr


@pytest.mark.timeout(120)
def test_a_clone_of_a_kafka_source_merged_back_reads_the_topic_twice(broker, run_app, tmp_path):
    """As with a file: each copy of the source reads every record of the topic
    (each assigns the partitions itself), so every record goes down both
    branches; each copy ends after its --max-records."""
    from confluent_kafka import Producer

    app = tmp_path / "clone_app.py"
    app.write_text(CLONE_APP)
    topic = f"clone-{tmp_path.name}"
    broker.create_topic(topic, partitions=1)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for n in range(1, 6):
        producer.produce(topic, str(n).encode())
    assert producer.flush(30) == 0
    output = tmp_path / "out.txt"
    result = run_app(
        app, "--where", "kafka", "--output", str(output), "--max-records", "5",
        "--kafka_source_topic", topic, "--kafka_source_brokers", broker.bootstrap,
        timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    values = sorted(int(line.split()[0]) for line in output.read_text().splitlines())
    assert values == sorted([(n + 1) * 10 for n in range(1, 6)] + [-(n + 1) for n in range(1, 6)])
    assert "'Numbers': 5 in" in result.stderr and "'Numbers (2)': 5 in" in result.stderr


def test_a_clone_of_a_tcp_source_merged_back_fails_at_start_up_naming_the_calls(
    run_app, tmp_path, free_port
):
    """0.6.1 failed here too (its second listener was "unable to listen")."""
    app = tmp_path / "clone_app.py"
    app.write_text(CLONE_APP)
    port = free_port()
    output = tmp_path / "out.txt"
    result = run_app(app, "--where", "tcp", "--port", str(port), "--output", str(output))
    assert result.returncode != 0
    assert "two sources are named" not in result.stderr
    both = f"pipelines 'Numbers' and 'Numbers (2)' both listen on 127.0.0.1:{port}"
    assert both in result.stderr, result.stderr
    assert "merged with a clone of itself (Pipeline.clone()" in result.stderr
