"""Wallaroo 0.5 connectors (and the connector scripts' side for 0.5 and 0.6):
the 0.5 frame, ``ApplicationBuilder.source_connector``/``sink_connector`` and
connector names, ``SourceConnectorConfig``'s two forms, and connector scripts
(``wallaroo.experimental.SourceConnector``/``SinkConnector``) feeding and
draining a running 0.5 app and a running 0.6 app."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import wallaroo
import wallaroo.experimental as ex
from wallaroo import versions
from wallaroo.experimental.connector import SinkConnector, SourceConnector
from wallaroo.plan import compile_plan

TESTS = Path(__file__).resolve().parent
APPS = TESTS / "apps"
SCRIPTS = TESTS / "connector_scripts"
CITY = str(APPS / "city_max_05.py")
CONN06 = str(APPS / "connectors_06.py")


@pytest.fixture(autouse=True)
def _no_translation_left():
    """Scripts made here import the app as the runner does (Python 2 modules
    translated); take that away after each test."""
    path = list(sys.path)
    yield
    from wallaroo import py2compat

    py2compat.uninstall()
    sys.path[:] = path


@ex.stream_message_encoder
def enc(text):
    return text


@ex.stream_message_decoder
def dec(payload):
    return payload.decode()


def _le(value: int, size: int) -> bytes:
    return value.to_bytes(size, "little", signed=True)


def test_05_frames_carry_partition_and_sequence_metadata():
    frames = ex.frames05(enc)
    # u32 length of the rest, u16 metadata length, metadata, payload.
    assert frames.encode("hi") == _le(2 + 8 + 2, 4) + _le(8, 2) + _le(-1, 8) + b"hi"
    assert frames.encode("hi", partition="p7", sequence=42) == (
        _le(2 + 10 + 2, 4) + _le(10, 2) + b"p7" + _le(42, 8) + b"hi"
    )
    # As in 0.5, falsy metadata is left out: sequence 0 is written as -1.
    e_acute = "é".encode()
    assert frames.encode("é", sequence=0) == _le(12, 4) + _le(8, 2) + _le(-1, 8) + e_acute
    reader = ex.frames05(dec)
    frame = frames.encode("hello", partition="abc", sequence=3)
    assert reader.header_length() == 4
    assert reader.payload_length(frame[:4]) == len(frame) - 4
    assert reader.decode(frame[4:]) == "hello"
    assert reader.decoder() is dec._func
    with pytest.raises(ex.StreamDecoderError):
        reader.decode(b"x")
    # The 0.6 frame of the same codec: event time instead of the metadata.
    assert enc.encode("hi", 5) == _le(10, 4) + _le(5, 8) + b"hi"


def test_connectors_take_ports_in_declaration_order():
    ab = wallaroo.ApplicationBuilder("ports")
    ab.source_connector("a", encoder=enc, decoder=dec)
    ab.source_connector("b", encoder=enc, decoder=dec, port=9000)
    ab.source_connector("c", encoder=enc, decoder=dec)
    ab.sink_connector("x", encoder=enc, decoder=dec)
    ab.sink_connector("y", encoder=enc, decoder=dec)
    ab.new_pipeline("p", "a").to_sink("x")
    actions = ab.build()
    declared = [(a[0], a[1], a[2]) for a in actions if a[0].endswith("_connector")]
    # A given port still moves the count on (0.5): "c" gets 7102, not 7101.
    assert declared == [
        ("source_connector", "a", 7100),
        ("source_connector", "b", 9000),
        ("source_connector", "c", 7102),
        ("sink_connector", "x", 7200),
        ("sink_connector", "y", 7201),
    ]
    # The scripts get the codecs' 0.5 views.
    _, _, _, encoder, decoder = actions[1]
    assert encoder.encode("z") == ex.frames05(enc).encode("z")
    assert isinstance(decoder, ex.StreamDecoder05)


def test_connector_names_stand_for_05_connector_configs():
    ab = wallaroo.ApplicationBuilder("names")
    ab.source_connector("feed", encoder=enc, decoder=dec, port=7311)
    ab.sink_connector("out", encoder=enc, decoder=dec, port=7312)
    ab.sink_connector("copy", encoder=enc, decoder=dec, port=7313)
    ab.new_pipeline("p", "feed").to_sinks(["out", "copy"])
    actions = ab.build()
    (_, _, source), (_, sinks) = actions[4], actions[5]
    assert source.to_tuple()[:3] == ("connector", "localhost", "7311")
    assert [s.to_tuple()[:3] for s in sinks] == [
        ("connector", "localhost", "7312"),
        ("connector", "localhost", "7313"),
    ]
    plan = compile_plan(actions, "names.py")
    assert plan["api_version"] == versions.V05
    pipeline = plan["pipelines"][0]
    assert (pipeline["source"]["host"], pipeline["source"]["port"]) == ("127.0.0.1", 7311)
    assert pipeline["source"]["length_fmt"] == "<I"
    frame = ex.frames05(enc).encode("hey", partition="k")
    assert pipeline["source"]["decode"](frame[4:]) == "hey"
    assert [(s["host"], s["port"]) for s in pipeline["sink"]["sinks"]] == [
        ("127.0.0.1", 7312),
        ("127.0.0.1", 7313),
    ]
    assert pipeline["sink"]["encode"]("ok") == [ex.frames05(enc).encode("ok")] * 2


def test_an_unknown_connector_name_fails_naming_the_call():
    ab = wallaroo.ApplicationBuilder("unknown")
    ab.source_connector("feed", encoder=enc, decoder=dec)
    with pytest.raises(wallaroo.WallarooParameterError) as err:
        ab.new_pipeline("p", "fed")
    assert "new_pipeline('p', ...): no source connector named 'fed'" in str(err.value)
    assert "'feed'" in str(err.value)
    ab.new_pipeline("p", "feed")
    with pytest.raises(wallaroo.WallarooParameterError, match="to_sink.*no sink connector named"):
        ab.to_sink("feed")


def test_connector_configs_take_the_05_and_the_06_forms():
    old = ex.SourceConnectorConfig("localhost", 7100, dec)
    assert old.to_tuple()[:3] == ("connector", "localhost", "7100")
    assert isinstance(old.to_tuple()[3], ex.StreamDecoder05)
    assert versions.mark_of(old).versions == versions.ONLY_05
    old_sink = ex.SinkConnectorConfig(host="h", port=1, encoder=enc)
    assert old_sink.to_tuple()[:3] == ("connector", "h", "1")
    assert isinstance(old_sink.to_tuple()[3], ex.StreamEncoder05)
    new = ex.SinkConnectorConfig("out", enc, dec, 7200)
    assert new.to_tuple() == ("sink_connector", "out", "127.0.0.1", "7200", enc, dec)
    assert versions.mark_of(new).versions == versions.ONLY_06
    with pytest.raises(wallaroo.WallarooParameterError, match=r"\(host, port, decoder\) \(0.5\)"):
        ex.SourceConnectorConfig("only", "two")


def test_a_05_connector_config_in_a_06_pipeline_fails_naming_both():
    from wallaroo.plan import ApplicationError

    app = wallaroo.build_application(
        "mixed",
        wallaroo.source("s", ex.SourceConnectorConfig("localhost", 7100, dec)).to_sink(
            ex.SinkConnectorConfig("out", enc, dec, 7200)
        ),
    )
    with pytest.raises(ApplicationError) as err:
        compile_plan(app, "mixed.py")
    assert "SourceConnectorConfig(host, port, decoder) is Wallaroo 0.5 API" in str(err.value)


def _script_args(app: str, connector: str, *params: str) -> list:
    return ["script", "--application-module", app, "--connector", connector, *params]


def test_scripts_find_their_connector_in_either_version():
    source = SourceConnector(
        _script_args(CITY, "readings", "--feed-port", "7401", "--readings-file", "f"),
        required_params=["file"],
    )
    assert (source._host, source._port, source.params.file) == ("127.0.0.1", 7401, "f")
    assert isinstance(source._encoder, ex.StreamEncoder05)
    sink = SinkConnector(_script_args(CITY, "maxima", "--report-port", "7402"))
    assert sink._port == 7402 and isinstance(sink._decoder, ex.StreamDecoder05)
    # 0.6: the configs' own host and codecs.
    source = SourceConnector(_script_args(CONN06, "text_feed", "--source-port", "7403"))
    assert (source._host, source._port, source._version) == ("127.0.0.1", "7403", "0.6")
    sink = SinkConnector(_script_args(CONN06, "upper_out", "--sink-port", "7404"))
    assert sink._port == "7404" and isinstance(sink._decoder, ex.ConnectorDecoder)
    # A name the app does not have: 0.5 printed and exited -1, 0.6 raised.
    with pytest.raises(SystemExit) as exited:
        SourceConnector(_script_args(CITY, "maxima"))
    assert exited.value.code == -1
    with pytest.raises(RuntimeError, match="Unable to find a sink connector with the name nope"):
        SinkConnector(_script_args(CONN06, "nope"))
    with pytest.raises(SystemExit):  # a required parameter missing: argparse's usage error
        SourceConnector(_script_args(CITY, "readings"), required_params=["file"])


TO_SINKS_06 = """
import wallaroo
import wallaroo.experimental as ex

def application_setup(args):
    feed = ex.SourceConnectorConfig("feed", codec, codec, 7500, host="127.0.0.2")
    sinks = [ex.SinkConnectorConfig(name, codec, codec, port) for name, port in
             [("left", 7501), ("right", 7502)]]
    return wallaroo.build_application("fan", wallaroo.source("s", feed).to_sinks(sinks))

@ex.stream_message_encoder
def codec(x):
    return x
"""


def test_a_06_script_finds_a_sink_connector_inside_to_sinks(tmp_path):
    app = tmp_path / "fan_06.py"
    app.write_text(TO_SINKS_06)
    sink = SinkConnector(_script_args(str(app), "right"))
    assert (sink._host, sink._port) == ("127.0.0.1", "7502")
    source = SourceConnector(_script_args(str(app), "feed"))
    assert (source._host, source._port) == ("127.0.0.2", "7500")


def test_sink_connector_reads_frames_from_any_connection(free_port):
    port = free_port()
    sink = SinkConnector(_script_args(CITY, "maxima", "--report-port", str(port)))
    sink.listen()
    frames = ex.frames05(enc)
    first = frames.encode("one", sequence=1) + frames.encode("two", partition="x")
    with socket.create_connection(("127.0.0.1", port), timeout=60) as a:
        a.sendall(first[:7])  # a partial frame: nothing to read yet
        with pytest.raises(TimeoutError):
            sink.read(timeout=0.2)
        # Listening with 0.5's backlog of 0: connect once the first is accepted.
        b = socket.create_connection(("127.0.0.1", port), timeout=60)
        b.sendall(frames.encode("three"))
        assert sink.read(timeout=30) == "three"
        a.sendall(first[7:])
        assert [sink.read(timeout=30), sink.read(timeout=30)] == ["one", "two"]
        b.sendall(frames.encode("four")[:5])  # closed mid-frame: dropped, not returned
        b.close()
    with pytest.raises(TimeoutError):
        sink.read(timeout=0.2)


def test_source_connector_waits_for_the_application(free_port):
    port = free_port()
    source = SourceConnector(_script_args(CITY, "readings", "--feed-port", str(port)))
    with pytest.raises(RuntimeError, match="connect before writing"):
        source.write("x")
    connected = threading.Thread(target=source.connect, daemon=True)
    connected.start()  # refused: it tries again every second
    with socket.create_server(("127.0.0.1", port)) as server:
        server.settimeout(60)
        conn, _ = server.accept()
        connected.join(30)
        source.write("paris:21.5")
        source.close()
        with conn:
            received = b""
            while chunk := conn.recv(4096):
                received += chunk
    assert received == ex.frames05(enc).encode("paris:21.5")


def _start_script(name: str, *args: str, env: dict) -> subprocess.Popen:
    """Start a connector script; a Python 2 one (``py2_*``) through
    ``python -m wallaroo.experimental``, which translates it."""
    runner = ["-m", "wallaroo.experimental"] if name.startswith("py2_") else []
    return subprocess.Popen(
        [sys.executable, *runner, str(SCRIPTS / name), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=str(APPS),
        text=True,
    )


def _run_between_scripts(
    tcp_app,
    app_env,
    app,
    app_flags,
    feed,
    out,
    lines,
    tmp_path,
    source_script="lines_source",
    runner_flags=(),
):
    """Start the sink script, the app and the source script (in that order,
    as 0.5's ``run_sample``); return the lines the sink script received."""
    env = app_env()
    (tmp_path / "in.txt").write_text("".join(f"{line}\n" for line in lines))
    received = tmp_path / "out.txt"
    common = ["--application-module", Path(app).stem, *app_flags]
    sink = _start_script(
        "lines_sink",
        *common,
        "--connector",
        out,
        f"--{out}-file",
        str(received),
        f"--{out}-count",
        str(len(lines)),
        env=env,
    )
    source = None
    try:
        assert sink.stdout is not None and sink.stdout.readline() == "listening\n", sink.stderr
        with tcp_app(APPS / app, *app_flags, *runner_flags, env=env) as running:
            source = _start_script(
                source_script,
                *common,
                "--connector",
                feed,
                f"--{feed}-file",
                str(tmp_path / "in.txt"),
                env=env,
            )
            assert source.wait(90) == 0, source.stderr.read() if source.stderr else ""
            assert sink.wait(90) == 0, (sink.stderr.read() if sink.stderr else "", running.stderr)
    finally:
        for proc in (sink, source):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    return received.read_text().splitlines()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_05_app_runs_between_connector_scripts_one_in_python_2(
    tcp_app, app_env, free_port, tmp_path, workers
):
    cities = ["oslo", "rome", "lima"] * 20
    readings = [f"{city}:{(i * 7) % 23 - 5}.5" for i, city in enumerate(cities)]
    feed_port, report_port = free_port(), free_port()
    got = _run_between_scripts(
        tcp_app,
        app_env,
        "city_max_05.py",
        ["--feed-port", str(feed_port), "--report-port", str(report_port)],
        "readings",
        "maxima",
        readings,
        tmp_path,
        source_script="py2_lines_source",  # a Python 2 script, as 0.5's were
        runner_flags=["--workers", str(workers)] if workers > 1 else [],
    )
    # Independently: each reading's city and the highest value of that city so far.
    expected: dict = {}
    hottest: dict = {}
    for reading in readings:
        city, value = reading.split(":")
        hottest[city] = max(hottest.get(city, float("-inf")), float(value))
        expected.setdefault(city, []).append(f"{city} max {hottest[city]:.1f}")
    by_city: dict = {}
    for line in got:
        by_city.setdefault(line.split()[0], []).append(line)
    assert by_city == expected


@pytest.mark.timeout(180)
def test_a_06_app_runs_between_the_same_connector_scripts(tcp_app, app_env, free_port, tmp_path):
    words = [f"word {i} é" for i in range(40)]
    source_port, sink_port = free_port(), free_port()
    got = _run_between_scripts(
        tcp_app,
        app_env,
        "connectors_06.py",
        ["--source-port", str(source_port), "--sink-port", str(sink_port)],
        "text_feed",
        "upper_out",
        words,
        tmp_path,
    )
    assert got == [w.upper() for w in words]


def test_the_script_runner_translates_python_2_and_passes_the_arguments(
    tmp_path, capsys, monkeypatch
):
    from wallaroo.experimental.__main__ import main

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the runner sets the script's

    script = tmp_path / "py2_script"
    out = tmp_path / "out.txt"
    script.write_text(
        "import sys\n"
        "d = {'a': 1}\n"
        "print >>open(sys.argv[2], 'w'), sys.argv[1], d.has_key('a'), __name__\n"
    )
    assert main([str(script), "hello", str(out)]) == 0
    assert out.read_text() == "hello True __main__\n"
    assert main([]) == 2
    assert main([str(tmp_path / "missing")]) == 2
    assert "cannot read the connector script" in capsys.readouterr().err
