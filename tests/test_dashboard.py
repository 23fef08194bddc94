"""The star leaders dashboard (``wallaroo.demo.dashboard``).

* the merge of per-partition leaders and message parsing, as units;
* the HTTP API, the SSE stream and the consumer against a real loopback
  Kafka broker (``wallaroo._engine.EmbeddedKafka``, fed with confluent-kafka);
* the page in headless Chromium (``tests/browser.py``; ``make browser``
  installs it). Without Chromium the UI tests fail, unless
  ``WALLAROO_SKIP_BROWSER=1``. Screenshots go to ``artifacts/<test name>/``.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable

import pytest
from browser import require_chromium
from confluent_kafka import Producer
from wallaroo._engine import EmbeddedKafka
from wallaroo.demo.dashboard import (
    STATIC_DIR,
    BadMessage,
    Dashboard,
    Leader,
    Leaderboard,
    merge_leaders,
    parse_message,
)

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
PARTITIONS = 10

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------------- helpers


def leader(repo: str, stars: int, partition: int = 0) -> Leader:
    """A parsed leader without recent events."""
    return {"repo": repo, "stars": stars, "partition": partition, "recent_events": []}


def ranking(leaders: list[Any]) -> list[tuple[str, int]]:
    """``[(repo, stars), ...]`` of leaders (dicts)."""
    return [(item["repo"], item["stars"]) for item in leaders]


def message(partition: int, leaders: list[tuple[str, int]], **extra: Any) -> bytes:
    """A leaderboard message as the star leaders application writes it."""
    return json.dumps(
        {
            "leaders": [
                {"repo": repo, "stars": stars, "recent_events": [], **extra}
                for repo, stars in leaders
            ],
            "partition": partition,
        }
    ).encode()


def expected_top(final: dict[int, list[tuple[str, int]]], n: int = 10) -> list[tuple[str, int]]:
    """The global top ``n``, computed apart from the code under test: two stable
    sorts (repo name, then stars descending) over every partition's last leaders."""
    rows = [row for leaders in final.values() for row in leaders]
    rows.sort(key=lambda row: row[0])
    rows.sort(key=lambda row: row[1], reverse=True)
    return rows[:n]


def wait_until(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(0.05)


def get(url: str) -> tuple[int, str, bytes]:
    """``(status, content type, body)`` of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def api(dashboard: Dashboard) -> dict:
    """The dashboard's ``/api/leaders``."""
    status, content_type, body = get(dashboard.url + "api/leaders")
    assert status == 200 and content_type == "application/json"
    return json.loads(body)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def kafka() -> Iterator[EmbeddedKafka]:
    """A Kafka-protocol broker in this process."""
    yield EmbeddedKafka()


@pytest.fixture
def topic(kafka: EmbeddedKafka, request: pytest.FixtureRequest) -> str:
    """A fresh 10-partition topic for this test."""
    name = "leaderboard-" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)
    kafka.create_topic(name, PARTITIONS)
    return name


class Feed:
    """Writes leaderboard messages to one topic, each to Kafka partition K."""

    def __init__(self, kafka: EmbeddedKafka, topic: str) -> None:
        self.topic = topic
        self.producer = Producer(
            {"bootstrap.servers": kafka.bootstrap_servers, "log.connection.close": False}
        )
        self.sent = 0

    def send(self, kafka_partition: int, value: bytes) -> None:
        """Produce one value and wait until the broker has it."""
        self.producer.produce(self.topic, value, partition=kafka_partition)
        assert self.producer.flush(10) == 0
        self.sent += 1

    def leaders(
        self,
        partition: int,
        leaders: list[tuple[str, int]],
        kafka_partition: int | None = None,
        **extra: Any,
    ) -> None:
        """Produce a well-formed message of state partition ``partition``, by default
        to the Kafka partition of the same number (Kafka orders messages only
        within one partition)."""
        target = partition if kafka_partition is None else kafka_partition
        self.send(target, message(partition, leaders, **extra))


@pytest.fixture
def feed(kafka: EmbeddedKafka, topic: str) -> Feed:
    """A producer of leaderboard messages to the test's topic."""
    return Feed(kafka, topic)


@pytest.fixture
def dashboard(kafka: EmbeddedKafka, topic: str) -> Iterator[Dashboard]:
    """A started dashboard of the test's topic."""
    board = Dashboard(kafka.bootstrap_servers, topic=topic).start()
    yield board
    board.stop()




# --------------------------------------------------------------------------- merge and parsing


def test_merge_breaks_star_ties_by_repo_name() -> None:
    partitions = {
        0: [leader("b/x", 5, 0), leader("a/z", 5, 0)],
        1: [leader("c/y", 7, 1), leader("a/a", 5, 1)],
    }
    assert ranking(merge_leaders(partitions)) == [("c/y", 7), ("a/a", 5), ("a/z", 5), ("b/x", 5)]


def test_merge_with_fewer_than_ten_leaders_returns_them_all() -> None:
    partitions = {3: [leader("a/one", 1, 3)], 7: [leader("b/two", 2, 7)], 8: []}
    assert ranking(merge_leaders(partitions)) == [("b/two", 2), ("a/one", 1)]
    assert merge_leaders({}) == []


def test_merge_keeps_the_ten_most_starred() -> None:
    partitions = {p: [leader(f"o{p}/r{i}", 10 * i + p, p) for i in range(5)] for p in range(3)}
    top = merge_leaders(partitions)
    assert len(top) == 10
    assert [stars for _, stars in ranking(top)] == [42, 41, 40, 32, 31, 30, 22, 21, 20, 12]
    assert top[0]["repo"] == "o2/r4" and top[0]["partition"] == 2


def test_merge_keeps_a_repo_once_with_its_most_stars() -> None:
    partitions = {0: [leader("a/dup", 3, 0)], 1: [leader("a/dup", 9, 1), leader("b/b", 4, 1)]}
    assert ranking(merge_leaders(partitions)) == [("a/dup", 9), ("b/b", 4)]


def test_a_message_replaces_the_previous_leaders_of_its_partition() -> None:
    board = Leaderboard()
    assert board.apply(message(0, [("a/a", 10), ("b/b", 9)])) is not None
    assert board.apply(message(1, [("c/c", 5)])) is not None
    changed = board.apply(message(0, [("d/d", 3)]))
    assert changed is not None and ranking(changed) == [("c/c", 5), ("d/d", 3)]
    assert ranking(board.top) == [("c/c", 5), ("d/d", 3)]
    snapshot = board.snapshot()
    assert snapshot["updates_per_partition"] == {"0": 2, "1": 1}
    assert snapshot["messages_consumed"] == 3 and snapshot["bad_messages"] == 0
    assert [row["rank"] for row in snapshot["leaders"]] == [1, 2]


def test_an_unchanged_top_is_not_reported_as_a_change() -> None:
    board = Leaderboard()
    board.apply(message(4, [("a/a", 2)]))
    version = board.version
    assert board.apply(message(4, [("a/a", 2)])) is None
    assert board.version == version + 1  # still counted, and pushed to the page


def test_parsing_tolerates_missing_and_odd_event_fields() -> None:
    events = [
        {"type": "ForkEvent", "created_at": "2024-05-01T10:00:00Z"},
        {
            "type": "PullRequestEvent",
            "created_at": "2024-05-01T10:01:00Z",
            "actor": {"login": "alice", "id": 1},
            "id": 1234,
            "payload": {"pull_request": {"html_url": "https://github.com/a/b/pull/7"}},
        },
        {"type": "ForkEvent", "actor": "bob", "id": "99"},
        "not an event",
        {},
    ]
    value = json.dumps(
        {"leaders": [{"repo": "a/b", "stars": 3, "recent_events": events}], "partition": 2}
    )
    partition, leaders = parse_message(value)
    assert partition == 2
    assert leaders[0]["recent_events"] == [
        {
            "type": "PullRequestEvent",
            "actor": "alice",
            "created_at": "2024-05-01T10:01:00Z",
            "id": "1234",
            "url": "https://github.com/a/b/pull/7",
        },
        {"type": "ForkEvent", "actor": "bob", "created_at": None, "id": "99", "url": None},
        {"type": "Event", "actor": None, "created_at": None, "id": None, "url": None},
    ]
    _, without_events = parse_message(b'{"leaders": [{"repo": "x/y", "stars": 0}], "partition": 0}')
    assert without_events[0]["recent_events"] == []


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"leaders": []}',
        b'{"partition": "1", "leaders": []}',
        b'{"partition": true, "leaders": []}',
        b'{"partition": -1, "leaders": []}',
        b'{"partition": 1, "leaders": {}}',
        b'{"partition": 1, "leaders": [["a/b", 1]]}',
        b'{"partition": 1, "leaders": [{"repo": "a/b"}]}',
        b'{"partition": 1, "leaders": [{"repo": "a/b", "stars": "5"}]}',
        b'{"partition": 1, "leaders": [{"repo": "", "stars": 5}]}',
        b'{"partition": 1, "leaders": [{"repo": "a/b", "stars": 5, "recent_events": 3}]}',
    ],
)
def test_bad_messages_are_counted_and_change_nothing(value: bytes | None) -> None:
    board = Leaderboard()
    board.apply(message(1, [("keep/me", 4)]))
    with pytest.raises(BadMessage):
        board.apply(value)
    snapshot = board.snapshot()
    assert snapshot["bad_messages"] == 1 and snapshot["messages_consumed"] == 2
    assert ranking(snapshot["leaders"]) == [("keep/me", 4)]


# --------------------------------------------------------------------------- HTTP API over Kafka


def test_api_serves_the_merged_top_10_of_every_partition(dashboard: Dashboard, feed: Feed) -> None:
    rng = random.Random(20240501)
    final: dict[int, list[tuple[str, int]]] = {}
    updates: dict[str, int] = {}
    for round_ in range(3):
        for partition in range(PARTITIONS):
            if round_ > 0 and rng.random() < 0.4:
                continue  # not every partition changes every round
            size = rng.randint(0, 10)
            # Few distinct star counts: plenty of ties across partitions.
            leaders = [(f"owner{partition}/repo{rng.randint(0, 30)}", rng.randint(1, 12))]
            leaders += [(f"p{partition}/r{i}", rng.randint(1, 12)) for i in range(size)]
            leaders = list(dict(leaders).items())
            feed.leaders(partition, leaders)
            final[partition] = leaders
            updates[str(partition)] = updates.get(str(partition), 0) + 1
    expected = expected_top(final)
    assert len(expected) == 10

    snapshot = wait_until(
        lambda: (s := api(dashboard))["messages_consumed"] == feed.sent and s,
        what="every message consumed",
    )
    assert ranking(snapshot["leaders"]) == expected
    assert [row["rank"] for row in snapshot["leaders"]] == list(range(1, 11))
    assert snapshot["updates_per_partition"] == dict(sorted(updates.items()))
    assert snapshot["bad_messages"] == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", snapshot["last_update"])
    assert snapshot["status"] == f"consuming {PARTITIONS} partition(s)"


def test_bad_messages_over_kafka_are_counted_and_skipped(dashboard: Dashboard, feed: Feed) -> None:
    feed.leaders(0, [("good/first", 2)])
    feed.send(1, b"\x00\x01 binary junk")
    feed.send(2, b'{"leaders": "nope", "partition": 2}')
    feed.send(3, b'{"partition": 3}')
    feed.leaders(4, [("good/second", 5)])
    snapshot = wait_until(
        lambda: (s := api(dashboard))["messages_consumed"] == 5 and s, what="5 messages consumed"
    )
    assert snapshot["bad_messages"] == 3
    assert ranking(snapshot["leaders"]) == [("good/second", 5), ("good/first", 2)]
    assert snapshot["updates_per_partition"] == {"0": 1, "4": 1}


def test_events_stream_pushes_the_leaders_after_a_new_message(
    dashboard: Dashboard, feed: Feed
) -> None:
    feed.leaders(5, [("first/repo", 1)])
    wait_until(lambda: api(dashboard)["leaders"], what="the first leaders")
    port = int(dashboard.url.rsplit(":", 1)[1].strip("/"))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/events")
        response = connection.getresponse()
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")

        def next_event() -> tuple[str, dict]:
            name, data = "message", ""
            while True:
                line = response.readline().decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: "):
                    data += line[len("data: ") :]
                elif line == "" and data:
                    return name, json.loads(data)

        name, first = next_event()
        assert name == "leaders" and ranking(first["leaders"]) == [("first/repo", 1)]
        feed.leaders(6, [("second/repo", 8)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            name, pushed = next_event()
            if name == "leaders" and ranking(pushed["leaders"]) == [
                ("second/repo", 8),
                ("first/repo", 1),
            ]:
                break
        else:
            pytest.fail("no pushed update with second/repo")
        assert pushed["version"] > first["version"]
    finally:
        connection.close()


def test_on_change_gets_each_new_top_and_survives_a_failing_callback(
    dashboard: Dashboard, feed: Feed
) -> None:
    calls: list[list[tuple[str, int]]] = []

    def record(leaders: list[Leader]) -> None:
        calls.append(ranking(leaders))
        if len(calls) == 1:
            raise RuntimeError("a failing callback must not stop the dashboard")

    dashboard.on_change = record
    # One Kafka partition, so that the dashboard reads them in this order.
    feed.leaders(0, [("a/a", 3)], kafka_partition=7)
    feed.leaders(1, [("b/b", 4)], kafka_partition=7)
    feed.leaders(1, [("b/b", 4)], kafka_partition=7)  # same top: no call
    feed.leaders(0, [("a/a", 5)], kafka_partition=7)
    wait_until(lambda: len(calls) >= 3, what="three on_change calls")
    time.sleep(0.3)
    assert calls == [[("a/a", 3)], [("b/b", 4), ("a/a", 3)], [("a/a", 5), ("b/b", 4)]]


def test_waits_for_a_topic_created_later(kafka: EmbeddedKafka) -> None:
    name = f"leaderboard-later-{os.getpid()}-{time.monotonic_ns()}"
    with Dashboard(kafka.bootstrap_servers, topic=name) as board:
        wait_until(
            lambda: "does not exist yet" in api(board)["status"], what="the missing-topic status"
        )
        kafka.create_topic(name, PARTITIONS)
        Feed(kafka, name).leaders(9, [("late/topic", 1)])
        snapshot = wait_until(lambda: (s := api(board))["leaders"] and s, timeout=15)
        assert ranking(snapshot["leaders"]) == [("late/topic", 1)]


def test_serves_and_stops_while_the_broker_is_down() -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
    board = Dashboard(address, topic="leaderboard").start()
    try:
        snapshot = wait_until(
            lambda: (s := api(board))["status"].startswith(f"broker {address} unreachable") and s,
            what="the unreachable-broker status",
        )
        assert snapshot["leaders"] == [] and snapshot["brokers"] == address
    finally:
        started = time.monotonic()
        board.stop()
        assert time.monotonic() - started < 20  # not the broker's retry timeouts


def test_serves_the_page_and_its_assets_only(dashboard: Dashboard) -> None:
    status, content_type, body = get(dashboard.url)
    assert status == 200 and content_type.startswith("text/html")
    assert b"GitHub star leaders" in body and b'src="dashboard.js"' in body
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        status, content_type, body = get(dashboard.url + name)
        assert status == 200 and content_type.startswith(kind)
        assert body == (STATIC_DIR / name).read_bytes()
    for path in ("nope", "../dashboard.py", "%2e%2e/dashboard.py", "api/leaders/x"):
        assert get(dashboard.url + path)[0] == 404


def test_static_files_ship_in_the_wheel() -> None:
    """maturin puts every file under python/wallaroo in the wheel except those
    matched by .gitignore: the page's files must not be ignored."""
    names = sorted(path.name for path in STATIC_DIR.iterdir())
    assert names == ["dashboard.css", "dashboard.js", "index.html"]
    git = shutil.which("git")
    if git is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        [git, "check-ignore", *[str(STATIC_DIR / name) for name in names]],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert ignored.returncode == 1, f"ignored by git, so left out of the wheel: {ignored.stdout}"


def test_command_line_serves_until_sigterm(kafka: EmbeddedKafka, topic: str, feed: Feed) -> None:
    feed.leaders(2, [("cli/repo", 7)])
    port = free_port()
    paths = [str(REPO_ROOT / "python"), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)))
    command = [
        sys.executable, "-m", "wallaroo.demo.dashboard", "--brokers", kafka.bootstrap_servers
    ]
    process = subprocess.Popen(
        [*command, "--topic", topic, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"Dashboard: http://127.0.0.1:{port}/"
        url = f"http://127.0.0.1:{port}/api/leaders"
        snapshot = wait_until(lambda: json.loads(get(url)[2])["leaders"], what="the leaders")
        assert ranking(snapshot) == [("cli/repo", 7)]
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- the page


class LeaderRows(HTMLParser):
    """The rows of the page's leaders table. Each row: ``repo`` (its
    ``data-repo``), ``attrs`` of its elements by class (first one seen),
    ``text`` of its elements by class, ``badges`` (how many)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self._open: list[tuple[str, list[str]]] = []  # elements open in the current row
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {name: value or "" for name, value in attrs}
        classes = attr.get("class", "").split()
        if tag == "tbody":
            self._in_body = attr.get("id") == "leaders-body"
            return
        if not self._in_body:
            return
        if tag == "tr" and "leader" in classes:
            self.rows.append({"repo": attr["data-repo"], "attrs": {}, "text": {}, "badges": 0})
            self._open = []
        if not self.rows:
            return
        row = self.rows[-1]
        self._open.append((tag, classes))
        for name in classes:
            row["attrs"].setdefault(name, attr)
        row["badges"] += "badge" in classes
        if tag == "a" and "repo" in [name for _, names in self._open for name in names]:
            row.setdefault("href", attr.get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
            self._open = []
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if not self._open:
            return
        text = self.rows[-1]["text"]
        for _, classes in self._open:
            for name in classes:
                text[name] = text.get(name, "") + data


def leader_rows(html: str) -> list[dict[str, Any]]:
    """The leader rows of a serialized page (see :class:`LeaderRows`)."""
    parser = LeaderRows()
    parser.feed(html)
    return parser.rows


def assert_png(path: Path, size: tuple[int, int] = (1280, 900)) -> None:
    """``path`` is a PNG of ``size`` pixels with real content."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert struct.unpack(">II", data[16:24]) == size
    assert len(data) > 20_000, f"{path} is only {len(data)} bytes: a blank page?"


def event(kind: str, actor: str, minute: int) -> dict:
    """A GitHub Archive event of 2015-01-01 15:MM as the application keeps it."""
    return {
        "type": kind,
        "actor": {"login": actor},
        "created_at": f"2015-01-01T15:{minute:02d}:00Z",
        "id": str(1000 + minute),
    }


class Flow(threading.Thread):
    """Keeps messages flowing: ``rising/star`` climbs to ``peak`` stars in
    partition 4 (with a bad message on the way), then the final leaders of
    every partition are sent again and again (changing nothing) until stopped."""

    def __init__(self, feed: Feed, final: dict[int, list[tuple[str, int]]], peak: int) -> None:
        super().__init__(name="leaderboard-flow", daemon=True)
        self.feed, self.final, self.peak = feed, final, peak
        self.stopping = threading.Event()

    def run(self) -> None:
        for stars in [*range(1, self.peak, 9), self.peak]:
            if self.stopping.wait(0.02):
                return
            self.feed.leaders(4, [("rising/star", stars), *self.final[4][1:]])
            if stars == 10:
                self.feed.send(4, b"{oops")
        while not self.stopping.wait(0.05):
            for partition, leaders in self.final.items():
                events = [event("ForkEvent", "alice", 5), event("PullRequestEvent", "bob", 9)]
                self.feed.leaders(partition, leaders, recent_events=events)


def test_page_shows_the_live_top_10(dashboard: Dashboard, feed: Feed, artifacts: Path) -> None:
    require_chromium()
    from browser import render

    final = {
        p: [(f"owner{p}/project-{i}", 100 - 7 * i - p) for i in range(3)] for p in range(PARTITIONS)
    }
    final[4] = [("rising/star", 250), *final[4]]
    expected = expected_top(final)
    for partition, leaders in final.items():
        feed.leaders(partition, leaders[1:] if partition == 4 else leaders)
    flow = Flow(feed, final, peak=250)
    flow.start()
    try:

        def settled() -> bool:
            leaders = api(dashboard)["leaders"]
            return ranking(leaders) == expected and all(row["recent_events"] for row in leaders)

        wait_until(settled, what="the flow's final top 10 with events")
        html = render(
            dashboard.url,
            artifacts / "dashboard.png",
            wait_ms=300,
            until="document.querySelectorAll('tr.leader .badge').length === 20",
        )
    finally:
        flow.stopping.set()
        flow.join(5)
    (artifacts / "dashboard.html").write_text(html)

    rows = leader_rows(html)
    assert [(row["repo"], int(row["attrs"]["stars"]["data-stars"])) for row in rows] == expected
    assert [row["text"]["count"] for row in rows] == [str(stars) for _, stars in expected]
    ranks = [re.match(r"\s*(\d+)", row["text"]["rank"]) for row in rows]
    assert [match and match.group(1) for match in ranks] == [str(i) for i in range(1, 11)]
    assert [row["href"] for row in rows] == [f"https://github.com/{repo}" for repo, _ in expected]
    assert rows[0]["repo"] == "rising/star" and rows[0]["text"]["count"] == "250"
    assert "fork" in rows[0]["text"]["badges"] and "alice" in rows[0]["text"]["badges"]
    assert all(row["badges"] == 2 for row in rows)
    assert 'id="connection" class="status status-live"' in html
    messages = re.search(r'<dd id="messages">([\d,]+)</dd>', html)
    assert messages and int(messages.group(1).replace(",", "")) >= 20
    assert re.search(r'<dd id="bad-messages">1</dd>', html)
    assert_png(artifacts / "dashboard.png")


def test_page_updates_live_and_reconnects(
    kafka: EmbeddedKafka, topic: str, feed: Feed, artifacts: Path
) -> None:
    chromium = require_chromium()
    from browser import Browser

    port = free_port()
    feed.leaders(0, [("steady/one", 10), ("steady/two", 9)])
    first = Dashboard(kafka.bootstrap_servers, topic=topic, port=port).start()
    second: Dashboard | None = None
    try:
        with Browser(chromium) as browser:
            browser.open(first.url)
            browser.wait_for("document.querySelectorAll('tr.leader').length === 2")
            browser.evaluate("window.notReloaded = true")

            feed.leaders(1, [("new/leader", 50)])
            browser.wait_for(
                "(r => r && r.dataset.repo === 'new/leader' && r.classList.contains('changed'))"
                "(document.querySelector('tr.leader'))"
            )
            assert browser.evaluate("window.notReloaded") is True
            browser.screenshot(artifacts / "dashboard-live.png")

            first.stop()
            browser.wait_for(
                "document.getElementById('connection').className.includes('reconnecting')"
            )
            second = Dashboard(kafka.bootstrap_servers, topic=topic, port=port).start()
            browser.wait_for(
                "document.getElementById('connection').className.includes('live')", timeout=15
            )
            feed.leaders(2, [("after/reconnect", 70)])
            browser.wait_for(
                "document.querySelector('tr.leader').dataset.repo === 'after/reconnect'"
            )
            assert browser.evaluate("window.notReloaded") is True
            rows = leader_rows(browser.dom())
            assert [(row["repo"], row["text"]["count"]) for row in rows] == [
                ("after/reconnect", "70"),
                ("new/leader", "50"),
                ("steady/one", "10"),
                ("steady/two", "9"),
            ]
            browser.screenshot(artifacts / "dashboard.png")
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert_png(artifacts / "dashboard.png")
