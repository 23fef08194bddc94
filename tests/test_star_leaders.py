"""The star leaders example end to end, against an independent reference.

The reference below recomputes each partition's leaderboard from scratch at
every event (all stars of the 24-hour window, sorted), so it shares no code
with the example's incremental state class; only the partitioner (consistent
hashing of repository names, the spec of which partition a repo is in) is
imported from the example.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import PYTHON_DIR, app_env, process_alive

EXAMPLE_DIR = PYTHON_DIR / "wallaroo" / "examples" / "star_leaders"
REPO_ROOT = PYTHON_DIR.parent
ARTIFACTS = REPO_ROOT / "artifacts"
INTERESTING = ("WatchEvent", "ForkEvent", "PullRequestEvent")
WINDOW = timedelta(hours=24)


def _partitioner():
    sys.path.insert(0, str(EXAMPLE_DIR))
    try:
        from repo_partitioner import RepoPartitioner
    finally:
        sys.path.remove(str(EXAMPLE_DIR))
    return RepoPartitioner(10)


class ReferencePartition:
    """One partition's leaderboard, recomputed from all its events each time."""

    def __init__(self) -> None:
        self.current: datetime | None = None
        self.stars: list = []  # (hour, repo) of every watch event kept
        self.recent: dict = {}
        self.published: list = []

    def apply(self, event: dict) -> list | None:
        created = datetime.strptime(event["created_at"], "%Y-%m-%dT%H:%M:%SZ")
        hour = created.replace(minute=0, second=0)
        if self.current is None or hour > self.current:
            self.current = hour
        in_window = hour > self.current - WINDOW
        repo = event["repo"]["name"]
        if in_window and event["type"] == "WatchEvent":
            self.stars.append((hour, repo))
        totals: dict = {}
        for star_hour, star_repo in self.stars:
            if star_hour > self.current - WINDOW:
                totals[star_repo] = totals.get(star_repo, 0) + 1
        top = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:10]
        names = {name for name, _ in top}
        self.recent = {name: events for name, events in self.recent.items() if name in names}
        if in_window and event["type"] != "WatchEvent" and repo in names:
            actor = event.get("actor") or {}
            events = self.recent.setdefault(repo, [])
            events.append(
                {
                    "id": event.get("id"),
                    "type": event["type"],
                    "actor": actor.get("login") if isinstance(actor, dict) else actor,
                    "created_at": event["created_at"],
                }
            )
            del events[:-3]
        leaders = [
            {"repo": name, "stars": stars, "recent_events": list(self.recent.get(name, []))}
            for name, stars in top
        ]
        if leaders == self.published:
            return None
        self.published = leaders
        return leaders


def reference(events: list) -> dict:
    """Partition -> the sequence of leaderboards the app must publish."""
    partitioner = _partitioner()
    partitions: dict = {}
    outputs: dict = {}
    for event in events:
        if event.get("type") not in INTERESTING:
            continue
        key = partitioner.partition_of(event["repo"]["name"])
        leaders = partitions.setdefault(key, ReferencePartition()).apply(event)
        if leaders is not None:
            outputs.setdefault(key, []).append(leaders)
    return outputs


def by_partition(messages: list) -> dict:
    outputs: dict = {}
    for message in messages:
        outputs.setdefault(message["partition"], []).append(message["leaders"])
    return outputs


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> tuple:
    """Generated GitHub events over ~30 hours (so the window rolls over)."""
    from wallaroo.demo.generator import generate_events

    # Few repos and a high rate: stars concentrate, leaders change and roll.
    generated = list(
        generate_events(seed=11, count=12_000, repos=300, rate=0.1, start="2017-01-01T00")
    )
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    with open(path, "w") as out:
        for event in generated:
            out.write(json.dumps(event) + "\n")
    return path, generated


def test_reference_window_rolls_over(events) -> None:
    _path, generated = events
    first = generated[0]["created_at"]
    last = generated[-1]["created_at"]
    span = datetime.strptime(last, "%Y-%m-%dT%H:%M:%SZ") - datetime.strptime(
        first, "%Y-%m-%dT%H:%M:%SZ"
    )
    assert span > WINDOW, "the test data must span more than the 24-hour window"
    expected = reference(generated)
    assert len(expected) == 10
    assert sum(len(v) for v in expected.values()) > 100


@pytest.mark.timeout(120)
def test_file_run_matches_reference(events, tmp_path: Path, run_app) -> None:
    path, generated = events
    output = tmp_path / "leaders.jsonl"
    result = run_app("star_leaders", "--input", str(path), "--output", str(output), timeout=100)
    result.check()
    messages = [json.loads(line) for line in output.read_text().splitlines()]
    assert by_partition(messages) == reference(generated)
    assert "translated" in result.stderr or "py2" in result.stderr or result.returncode == 0


@pytest.mark.timeout(180)
def test_kafka_run_matches_reference(events, tmp_path: Path) -> None:
    from confluent_kafka import Consumer, TopicPartition
    from kafka_broker import TansuBroker

    _path, generated = events
    expected = reference(generated)
    total = sum(len(v) for v in expected.values())
    with TansuBroker() as broker:
        broker.create_topic("gharchive", partitions=1)
        broker.create_topic("leaderboard", partitions=1)
        broker.produce("gharchive", [json.dumps(e).encode() for e in generated])
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wallaroo",
                "star_leaders",
                "--kafka_source_brokers",
                broker.bootstrap,
                "--kafka_sink_brokers",
                broker.bootstrap,
                "--no-demo",
            ],
            cwd=tmp_path,
            env=app_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        consumer = Consumer(
            {"bootstrap.servers": broker.bootstrap, "group.id": "test", "session.timeout.ms": 6000}
        )
        consumer.assign([TopicPartition("leaderboard", 0, 0)])
        messages: list = []
        deadline = time.monotonic() + 120
        while len(messages) < total and time.monotonic() < deadline and proc.poll() is None:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                messages.append(json.loads(message.value()))
        consumer.close()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert by_partition(messages) == expected


def _read_lines(stream, lines: list) -> None:
    for raw in iter(stream.readline, b""):
        lines.append(raw.decode("utf-8", "replace"))


@pytest.mark.timeout(120)
def test_one_command_demo_from_another_directory(tmp_path: Path) -> None:
    """``python -m wallaroo star_leaders`` with nothing else: embedded Kafka,
    built-in streamer, terminal leaderboard, dashboard in a real browser."""
    from browser import render, require_chromium

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wallaroo",
            "star_leaders",
            "--dashboard-port",
            "0",
            "--demo-speedup",
            "600",
        ],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lines: list = []
    reader = threading.Thread(target=_read_lines, args=(proc.stderr, lines), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        url = None
        while time.monotonic() < deadline and proc.poll() is None:
            text = "".join(lines)
            found = re.search(r"dashboard: (http://\S+)", text)
            url = found.group(1) if found else None
            if url and text.count("top: 1.") >= 3:
                break
            time.sleep(0.2)
        text = "".join(lines)
        assert url, text
        assert "started an embedded broker at 127.0.0.1:" in text
        assert text.count("top: 1.") >= 3, text
        leaders = re.findall(r"top: 1\. (\S+) \d+\*", text)
        require_chromium()
        shot = ARTIFACTS / "test_star_leaders" / "demo_dashboard.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        rows_shown = "document.querySelectorAll('tbody tr').length > 0"
        html = render(url, shot, wait_ms=1500, until=rows_shown)
        assert any(name in html for name in leaders), "the dashboard shows none of the leaders"
        assert shot.stat().st_size > 10_000
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, "".join(lines)[-3000:]


@pytest.mark.timeout(180)
def test_bounded_run_streamer_engine_dashboard_on_the_test_broker(tmp_path: Path) -> None:
    """streamer -> gharchive -> engine -> leaderboard -> dashboard, all apart,
    on a real Kafka-protocol broker, as the README's "Running with a real Kafka"
    starts them; the run ends by itself (--max-records)."""
    import urllib.request

    from confluent_kafka import Consumer, TopicPartition
    from kafka_broker import TansuBroker, free_port

    events = 3000
    with TansuBroker() as broker:
        broker.create_topic("gharchive", partitions=1)
        broker.create_topic("leaderboard", partitions=1)
        streamer = subprocess.run(
            [
                sys.executable,
                "-m",
                "wallaroo.demo.streamer",
                "--brokers",
                broker.bootstrap,
                "--topic",
                "gharchive",
                "--limit",
                str(events),
                "--speedup",
                "0",
                "-q",
            ],
            env=app_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert streamer.returncode == 0, streamer.stderr
        port = free_port()
        dashboard = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wallaroo.demo.dashboard",
                "--brokers",
                broker.bootstrap,
                "--topic",
                "leaderboard",
                "--port",
                str(port),
            ],
            env=app_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            app = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "wallaroo",
                    "star_leaders",
                    "--kafka_source_brokers",
                    broker.bootstrap,
                    "--kafka_sink_brokers",
                    broker.bootstrap,
                    "--max-records",
                    str(events),
                ],
                cwd=tmp_path,
                env=app_env(),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert app.returncode == 0, app.stderr
            assert f"{events} in" in app.stderr
            # Given brokers, the bundled example starts no companion of its own
            # (README, "Running with a real Kafka": the dashboard is yours).
            assert "demo" not in app.stderr and "dashboard:" not in app.stderr
            consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "check"})
            consumer.assign([TopicPartition("leaderboard", 0, 0)])
            latest: dict = {}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None:
                    if latest:
                        break
                    continue
                if not message.error():
                    board = json.loads(message.value())
                    latest[board["partition"]] = board["leaders"]
            consumer.close()
            assert latest, "no leaderboard came out"
            merged = sorted(
                (leader for leaders in latest.values() for leader in leaders),
                key=lambda leader: (-leader["stars"], leader["repo"]),
            )[:10]
            expected = [(leader["repo"], leader["stars"]) for leader in merged]
            shown: list = []
            deadline = time.monotonic() + 30
            while shown != expected and time.monotonic() < deadline:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/leaders") as answer:
                    snapshot = json.loads(answer.read())
                shown = [(leader["repo"], leader["stars"]) for leader in snapshot["leaders"]]
                time.sleep(0.2)
            assert shown == expected
        finally:
            dashboard.send_signal(signal.SIGTERM)
            dashboard.wait(timeout=15)


# -- a user's own copy: no demo --------------------------------------------------------

USER_COPY = Path(__file__).resolve().parent / "py2apps" / "star_leaders"
DIRECT = Path(__file__).resolve().parent / "star_leaders_direct.py"


class Run:
    """A runner process whose output (stdout and stderr) is collected line by line."""

    def __init__(self, command: list, cwd: Path, env: dict) -> None:
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: list = []
        self.reader = threading.Thread(
            target=_read_lines, args=(self.proc.stdout, self.lines), daemon=True
        )
        self.reader.start()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match:
        """The first match of ``pattern`` in the log, waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text)
            if found:
                return found
            assert self.proc.poll() is None, f"the run ended early:\n{self.text[-3000:]}"
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in {timeout} s:\n{self.text[-3000:]}")

    def stop(self, signum: int = signal.SIGINT, timeout: float = 30.0) -> int:
        """Signal the runner and wait for it (killed if it does not end)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.reader.join(timeout=10)
        return code


def direct_run(app: Path, events_path: Path) -> dict:
    """Partition -> the leaderboards the app's own functions make, in order."""
    done = subprocess.run(
        [sys.executable, str(DIRECT), str(app), "file", str(events_path)],
        env=app_env(apps_on_path=False),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return by_partition([json.loads(line) for line in done.stdout.splitlines()])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("broker", ["embedded", "tansu", "apache"])
def test_users_own_star_leaders_reads_only_what_it_is_sent(
    events, tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    """A user's py2-era copy, run from its own directory (where it shadows the
    bundled example): no injected events, no dashboard; every leaderboard is
    what the app's own functions make of the N events, partition by partition."""
    import shutil

    from kafka_broker import BrokerClients, TansuBroker

    # The embedded broker keeps about 5 MiB per partition: 3,000 events fit.
    generated = events[1][:3000]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(event) + "\n" for event in generated))
    app_dir = tmp_path / "my_app"
    shutil.copytree(USER_COPY, app_dir)
    expected = direct_run(app_dir / "star_leaders.py", path)
    total = sum(len(boards) for boards in expected.values())
    assert total > 100
    command = [
        sys.executable, "-m", "wallaroo", "--application-module", "star_leaders",
        "--kafka_source_topic", "gharchive", "--kafka_sink_topic", "leaderboard",
        "--kafka_sink_max_message_size", "250000", "--kafka_sink_max_produce_buffer_ms", "10",
    ]
    with contextlib.ExitStack() as stack:
        if broker != "embedded":
            # "apache": Apache Kafka itself (tests/apache_kafka.py), the session's broker.
            tansu = (
                stack.enter_context(TansuBroker())
                if broker == "tansu"
                else request.getfixturevalue("apache_kafka")
            )
            tansu.create_topic("gharchive", partitions=1)
            tansu.create_topic("leaderboard", partitions=1)
            command += ["--kafka_source_brokers", tansu.bootstrap]
            command += ["--kafka_sink_brokers", tansu.bootstrap]
        run = Run(command, app_dir, app_env(apps_on_path=False))
        try:
            if broker != "embedded":
                clients: BrokerClients = tansu
            else:
                clients = BrokerClients()
                clients.bootstrap = run.wait_for(r"started an embedded broker at (\S+) ").group(1)
                hint = run.wait_for(r"nothing else writes to topic 'gharchive'.*")
                assert "python -m wallaroo.demo.streamer --brokers" in hint.group(0)
            run.wait_for(r"running application 'GitHub Star Leaders'")
            clients.produce("gharchive", [json.dumps(event) for event in generated], timeout=60)
            records = clients.consume("leaderboard", total, timeout=120)
        finally:
            code = run.stop()
    assert code == 0, run.text[-3000:]
    assert by_partition([json.loads(record.value) for record in records]) == expected
    assert f"'star leaders': {len(generated)} in" in run.text, run.text[-3000:]
    assert "star leaders: gharchive -> leaderboard" in run.text  # the py2 print ran
    for companion in ("dashboard:", "demo streamer", "feeding generated", "top: 1."):
        assert companion not in run.text


# -- the demo's companions are processes of their own ----------------------------------


def _children(pid: int) -> dict:
    """pid -> command line of the live child processes of ``pid``."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            children[int(entry)] = [part.decode() for part in command if part]
    return children


def _listening_socket(port: int) -> str:
    """The inode of the loopback TCP socket listening on ``port``."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                return inode
    raise AssertionError(f"nothing listens on port {port}")


def _holds(pid: int, inode: str) -> bool:
    """Whether process ``pid`` has the socket ``inode`` open."""
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(f"{fd_dir}/{fd}") == f"socket:[{inode}]":
                return True
        except OSError:
            continue
    return False


def _loads_confluent_kafka(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as maps:
        return "confluent_kafka" in maps.read()


@pytest.mark.timeout(180)
def test_demo_companions_run_beside_the_engine_not_inside_it(tmp_path: Path) -> None:
    """``python -m wallaroo star_leaders``: leaderboards appear; the streamer and
    the dashboard are child processes (the engine's process serves no page and
    has no Kafka client of theirs); a companion that dies is logged and the run
    goes on; Ctrl-C stops everything, no child left behind."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    command = [sys.executable, "-m", "wallaroo", "star_leaders", "--dashboard-port", "0",
               "--demo-speedup", "600"]
    run = Run(command, tmp_path, env)
    children: dict = {}
    try:
        url = run.wait_for(r"dashboard: (http://\S+)").group(1)
        run.wait_for(r"top: 1\.(.|\n)*top: 1\.")
        engine = run.proc.pid
        children = _children(engine)
        roles = {pid: command[command.index("wallaroo.demo.companions") + 1]
                 for pid, command in children.items() if "wallaroo.demo.companions" in command}
        assert sorted(roles.values()) == ["dashboard", "streamer"], children
        by_role = {role: pid for pid, role in roles.items()}
        socket_inode = _listening_socket(int(url.rstrip("/").rsplit(":", 1)[1]))
        assert _holds(by_role["dashboard"], socket_inode)
        assert not _holds(engine, socket_inode), "the engine's process serves the dashboard"
        assert _loads_confluent_kafka(by_role["dashboard"])
        assert _loads_confluent_kafka(by_role["streamer"])
        assert not _loads_confluent_kafka(engine), "a companion's Kafka client in the engine"
        os.kill(by_role["streamer"], signal.SIGKILL)
        run.wait_for(r"demo streamer exited with status -9; the app runs on without it")
        assert run.proc.poll() is None
        assert process_alive(by_role["dashboard"])
    finally:
        code = run.stop(signal.SIGINT)
    assert code == 0, run.text[-3000:]
    assert "final top: 1." in run.text
    deadline = time.monotonic() + 15
    while any(process_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if process_alive(pid)], "a companion outlived the runner"


def test_runner_api_and_cluster_import_nothing_of_the_demo() -> None:
    """The demo is reached through the runner's one hook, at run time only."""
    code = (
        "import sys, wallaroo, wallaroo.runner, wallaroo.cluster, wallaroo.loader\n"
        "print(sorted(m for m in sys.modules if m.startswith('wallaroo.demo')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=app_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.timeout(180)
def test_demo_flag_accompanies_any_app(tmp_path: Path) -> None:
    """``--demo`` starts the companions around a user's own app too."""
    import shutil

    app_dir = tmp_path / "my_app"
    shutil.copytree(USER_COPY, app_dir)
    command = [sys.executable, "-m", "wallaroo", "star_leaders", "--demo", "--dashboard-port",
               "0", "--demo-speedup", "600", "--demo-events", "2000", "--max-records", "2000"]
    run = Run(command, app_dir, app_env(apps_on_path=False))
    try:
        run.proc.wait(timeout=150)
    finally:
        code = run.stop()
    assert code == 0, run.text[-3000:]
    assert "star leaders: gharchive -> leaderboard" in run.text  # the user's copy ran
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/", run.text), run.text[-3000:]
    assert "top: 1." in run.text and "'star leaders': 2000 in" in run.text


@pytest.mark.timeout(180)
def test_demo_companions_end_when_the_runner_is_killed(tmp_path: Path) -> None:
    """A runner killed with SIGKILL cannot stop its companions: they see it gone
    and end by themselves."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    command = [sys.executable, "-m", "wallaroo", "star_leaders", "--dashboard-port", "0",
               "--demo-speedup", "600"]
    run = Run(command, tmp_path, env)
    try:
        run.wait_for(r"dashboard: (http://\S+)")
        run.wait_for(r"top: 1\.")
        children = _children(run.proc.pid)
        assert len(children) == 2, children
    finally:
        run.proc.kill()
        run.proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(process_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if process_alive(pid)], "a companion outlived the runner"


@pytest.mark.parametrize(
    ("bundled", "on_embedded", "flags", "starts"),
    [
        (True, True, [], True),  # python -m wallaroo star_leaders
        (True, False, [], False),  # given brokers: the README's real-Kafka commands
        (True, True, ["--no-demo"], False),
        (False, True, [], False),  # a user's own star_leaders
        (False, False, ["--demo"], True),
        (True, True, ["--demo", "--no-demo"], False),  # --no-demo wins (cluster workers)
    ],
)
def test_the_demo_rule(bundled: bool, on_embedded: bool, flags: list, starts: bool) -> None:
    import argparse

    from wallaroo.demo import Demo, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    demo = Demo(parser.parse_args(flags), bundled=bundled)
    assert demo.starts_companions(on_embedded) is starts
    filled = demo.app_argv(["--kafka_source_topic", "mine"])
    if bundled or "--demo" in flags:
        assert filled.count("--kafka_source_topic") == 1 and "--kafka_sink_topic" in filled
    else:
        assert filled == ["--kafka_source_topic", "mine"]


@pytest.mark.timeout(180)
def test_windowed_star_leaders_match_the_hand_windowed_boards(events, tmp_path: Path, run_app):
    """The bundled windowed example (24-hour range windows sliding by the hour
    on event time) publishes, for every partition and hour, the same final
    leaderboard (repositories and stars) as the hand-windowed example held
    when its window rolled past that hour, computed here by running the
    hand-windowed example's own state class over the same events.

    Differences, by design: the windowed app publishes per window (a window
    is final once the watermark passes its end), so it also publishes the
    windows ending after the last event, as stars age out; its recent events
    are the window's last three fork / pull-request events, where the
    hand-windowed app keeps those seen since a repository became a leader.
    (The original 0.4 example's ``_recalc_window_cache`` never filled its
    cache; the bundled hand-windowed app is a corrected rewrite, checked
    against a from-scratch reference above.)"""
    from wallaroo.loader import load_app

    path, generated = events
    hand = load_app("star_leaders")
    states: dict = {}
    expected: dict = {}
    for event in generated:
        if event.get("type") not in INTERESTING:
            continue
        key = hand.PARTITIONER.partition(event)
        state = states.setdefault(key, hand.RepoMetadata())
        created = datetime.strptime(event["created_at"], "%Y-%m-%dT%H:%M:%SZ")
        hour = created.replace(minute=0, second=0)
        if state.current_hour is not None and hour > state.current_hour:
            end = state.current_hour + timedelta(hours=1)
            expected[(key, end)] = [(repo, stars) for repo, stars in state.leaders]
        state.update(event)
    for key, state in states.items():
        end = state.current_hour + timedelta(hours=1)
        expected[(key, end)] = [(repo, stars) for repo, stars in state.leaders]

    output = tmp_path / "windowed.jsonl"
    result = run_app(
        "star_leaders_windowed", "--input", str(path), "--output", str(output), timeout=150
    )
    result.check()
    final: dict = {}
    for line in output.read_text().splitlines():
        message = json.loads(line)
        end = datetime(1970, 1, 1) + timedelta(seconds=message["window_end"])
        final[(message["partition"], end)] = [
            (leader["repo"], leader["stars"]) for leader in message["leaders"]
        ]
    compared = {place: board for place, board in expected.items() if board}
    assert len(compared) > 200  # 10 partitions, ~30 hours
    for place, board in compared.items():
        assert final.get(place) == board, place
    last = max(end for _key, end in expected)
    # Beyond the last event's hour: the stars ageing out of the windows.
    assert any(end > last for _key, end in final)
