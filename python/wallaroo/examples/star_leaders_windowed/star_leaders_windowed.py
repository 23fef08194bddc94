"""GitHub star leaders with windows: the star leaders example written with
Wallaroo 0.6 pipelines and this engine's event-time range windows instead of
the hand-made hourly buckets of ``RepoMetadata``.

Stars per repository are counted in 24-hour windows sliding by the hour, on
event time (``created_at``), so every window ends on the hour; each
partition's top 10 of a window is published as it fills, in the same message
shape as the hand-windowed example (``{"leaders": [...], "partition": p}``),
so the same dashboard shows it. An event more than ``--lateness-minutes``
(default 0) behind the newest one seen, whose windows have fired, is late:
counted, logged and kept (``--dead-letter``), not dropped silently.

Run it like the hand-windowed one: ``python -m wallaroo star_leaders_windowed
--input events.jsonl --output leaders.jsonl``, or with Kafka:
``--kafka_source_brokers HOST:9092 --kafka_source_topic gharchive
--kafka_sink_brokers HOST:9092 --kafka_sink_topic leaderboard``.
"""

import argparse

import simplejson as json
import wallaroo
from repo_partitioner import RepoPartitioner

INTERESTING = ("WatchEvent", "ForkEvent", "PullRequestEvent")
PARTITIONER = RepoPartitioner(10)
TOP = 10
RECENT = 3
#: Boards kept per partition: windows ending up to this long before the
#: newest (an older window's counts have all come: they fire in order).
KEEP_NS = 48 * 3600 * 10**9


def application_setup(args):
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--input", help="read events from this file instead of Kafka")
    flags.add_argument("--output", help="write leaderboards to this file instead of Kafka")
    flags.add_argument("--lateness-minutes", type=int, default=0)
    opts = flags.parse_known_args(args)[0]

    if opts.input:
        source = wallaroo.FileSourceConfig(opts.input, decoder)
    else:
        source = wallaroo.CustomKafkaSourceCLIParser(args, decoder)
    if opts.output:
        sink = wallaroo.FileSinkConfig(opts.output, line_encoder)
    else:
        sink = wallaroo.CustomKafkaSinkCLIParser(args, encoder)

    stars = (
        wallaroo.range_windows(wallaroo.hours(24))
        .with_slide(wallaroo.hours(1))
        .with_event_time(created_at)
        .with_allowed_lateness(wallaroo.minutes(opts.lateness_minutes))
        .over(StarCount)
    )
    pipeline = (
        wallaroo.source("star leaders", source)
        .to(filter_interesting_events)
        .key_by(repo_name)
        .to(stars)
        .key_by(partition_of_repo)
        .to(leaderboards)
        .to_sink(sink)
    )
    return wallaroo.build_application("GitHub Star Leaders (windowed)", pipeline)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return json.loads(bs)


@wallaroo.computation(name="filter interesting events")
def filter_interesting_events(event):
    return event if event.get("type") in INTERESTING else None


@wallaroo.key_extractor
def repo_name(event):
    return event["repo"]["name"]


@wallaroo.timestamp_extractor
def created_at(event):
    return event["created_at"]


def compact_event(event):
    """The few fields of an event shown with a leader."""
    actor = event.get("actor") or {}
    if isinstance(actor, dict):
        actor = actor.get("login")
    return {
        "id": event.get("id"),
        "type": event["type"],
        "actor": actor,
        "created_at": event["created_at"],
    }


class StarCount(wallaroo.Aggregation):
    """Stars of a repository in a window, and its last fork / pull-request events."""

    def initial_accumulator(self):
        return {"stars": 0, "recent": []}

    def update(self, event, acc):
        if event["type"] == "WatchEvent":
            acc["stars"] += 1
        else:
            acc["recent"].append(compact_event(event))
            del acc["recent"][:-RECENT]

    def combine(self, a, b):
        return {"stars": a["stars"] + b["stars"], "recent": (a["recent"] + b["recent"])[-RECENT:]}

    def output(self, key, acc):
        return None  # windows report through output_window

    def output_window(self, key, acc, start, end):
        if not acc["stars"]:
            return None
        return {"repo": key, "stars": acc["stars"], "recent": acc["recent"], "end": end}


@wallaroo.key_extractor
def partition_of_repo(count):
    return str(PARTITIONER.partition_of(count["repo"]))


class Boards:
    """A partition's leaderboards of the newest windows: window end -> {repo: count}."""

    def __init__(self):
        self.windows = {}
        self.published = {}


def rank_key(count):
    return (-count["stars"], count["repo"])


@wallaroo.state_computation(name="leaderboards", state=Boards)
def leaderboards(count, boards):
    end = count["end"]
    newest = max(boards.windows) if boards.windows else end
    if end < newest - KEEP_NS:
        return None  # a window long gone (its board was dropped)
    board = boards.windows.setdefault(end, {})
    board[count["repo"]] = count
    for old in [e for e in boards.windows if e < end - KEEP_NS]:
        del boards.windows[old]
        boards.published.pop(old, None)
    top = sorted(board.values(), key=rank_key)[:TOP]
    leaders = [
        {"repo": c["repo"], "stars": c["stars"], "recent_events": list(c["recent"])} for c in top
    ]
    if leaders == boards.published.get(end):
        return None
    boards.published[end] = leaders
    return {
        "leaders": leaders,
        "partition": PARTITIONER.partition_of(count["repo"]),
        "window_end": end // 10**9,
    }


@wallaroo.encoder
def encoder(data):
    return (json.dumps(data), None, None)


@wallaroo.encoder
def line_encoder(data):
    return json.dumps(data, sort_keys=True) + "\n"
