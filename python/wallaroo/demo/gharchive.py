"""GitHub Archive events: timestamps, file readers and the archive URLs.

The GitHub Archive (https://www.gharchive.org) publishes one gzipped file per hour,
``https://data.gharchive.org/YYYY-MM-DD-H.json.gz`` (the hour is not zero-padded),
holding one JSON event per line. This module reads that stream
(:mod:`wallaroo.demo.generator` invents one offline):

* :func:`read_events` reads hour files (``.json`` or ``.json.gz``) or a directory
  of them; lines that are not JSON objects or lack a valid ``created_at`` are
  counted in a :class:`ReadStats` and skipped.
* :func:`archive_hours`, :func:`archive_url` and :func:`fetch_archive_lines` name
  and download hour files with :mod:`urllib`; a failed download raises
  :class:`ArchiveUnavailable` with a message that says what to do instead.

The archive streamer (:mod:`wallaroo.demo.streamer`) replays any of these into Kafka.
"""

from __future__ import annotations

import gzip
import json
import re
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal, NamedTuple, overload

__all__ = [
    "ARCHIVE_URL",
    "DEFAULT_START",
    "ArchiveUnavailable",
    "ReadStats",
    "TimedEvent",
    "archive_hours",
    "archive_url",
    "fetch_archive_lines",
    "format_created_at",
    "parse_created_at",
    "parse_lines",
    "parse_start",
    "read_events",
    "read_lines",
    "source_files",
]

#: Where the hour files are published (a mirror with the same layout works too).
ARCHIVE_URL = "https://data.gharchive.org/"

#: Start of generated events when none is given.
DEFAULT_START = "2017-01-01T00"

_TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_FAST_TS = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")
_HOUR_SPEC = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})-(\d{1,2})$")


# -- timestamps -----------------------------------------------------------------


def parse_created_at(value: object) -> float:
    """Seconds since the epoch (UTC) of a ``created_at`` value.

    Accepts the archive's ``YYYY-MM-DDTHH:MM:SSZ`` and other ISO 8601 forms with an
    offset (the archive of 2011-2014 wrote ``2012-03-10T22:00:04-08:00``); a time
    without an offset is taken as UTC. Raises :class:`ValueError` for anything else.
    """
    if not isinstance(value, str):
        raise ValueError(f"created_at is not a string: {value!r}")
    if _FAST_TS.match(value):
        fields = (value[0:4], value[5:7], value[8:10], value[11:13], value[14:16], value[17:19])
        year, month, day, hour, minute, second = (int(f) for f in fields)
        return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc).timestamp()
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def format_created_at(seconds: float) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` (UTC) of seconds since the epoch."""
    return datetime.fromtimestamp(int(seconds), timezone.utc).strftime(_TS_FORMAT)


def parse_start(value: str | datetime | float | int) -> float:
    """Seconds since the epoch of a start time: ``YYYY-MM-DD``, ``YYYY-MM-DDTHH``,
    ``YYYY-MM-DDTHH:MM[:SS][Z]``, a :class:`~datetime.datetime` (naive means UTC)
    or a number (already seconds since the epoch)."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1]
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            moment = datetime.strptime(text, fmt)
        except ValueError:
            continue
        return moment.replace(tzinfo=timezone.utc).timestamp()
    raise ValueError(f"start time {value!r} is not YYYY-MM-DD[THH[:MM[:SS]]]")


# -- reading hour files -------------------------------------------------------------


@dataclass
class ReadStats:
    """What reading a source met: files opened, lines read, events, bad lines."""

    files: int = 0
    lines: int = 0
    events: int = 0
    bad_lines: int = 0


class TimedEvent(NamedTuple):
    """One valid event: its ``created_at`` in seconds, its line as read, the parsed JSON."""

    created_at: float
    line: bytes
    event: dict


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def source_files(path: str | Path) -> list[Path]:
    """The hour files of ``path``: the file itself, or the ``.json`` and ``.json.gz``
    files of a directory in name order (numbers compared as numbers, so
    ``2017-01-01-2`` comes before ``2017-01-01-10``)."""
    path = Path(path)
    if path.is_dir():
        files = [
            p
            for p in path.iterdir()
            if p.is_file() and (p.name.endswith(".json") or p.name.endswith(".json.gz"))
        ]
        if not files:
            raise FileNotFoundError(f"no .json or .json.gz files in {path}")
        return sorted(files, key=_natural_key)
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {path}")
    return [path]


def read_lines(path: str | Path, stats: ReadStats | None = None) -> Iterator[bytes]:
    """The non-blank lines (without line ends) of an hour file or a directory of them.

    Gzipped files are recognised by their content, whatever their name. A file cut
    short (a truncated download) counts its unfinished last line as bad and ends
    there; reading goes on with the next file.
    """
    stats = stats if stats is not None else ReadStats()
    for file in source_files(path):
        stats.files += 1
        with open(file, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        opener = gzip.open if gzipped else open
        with opener(file, "rb") as handle:
            try:
                for line in handle:
                    line = line.strip()
                    if line:
                        stats.lines += 1
                        yield line
            except (EOFError, OSError, zlib.error):
                stats.lines += 1
                stats.bad_lines += 1


def parse_lines(lines: Iterable[bytes], stats: ReadStats | None = None) -> Iterator[TimedEvent]:
    """The valid events of archive lines; bad lines are counted in ``stats`` and skipped.

    A line is bad when it is not a JSON object, or its ``created_at`` is missing or
    not a time (:func:`parse_created_at`).
    """
    stats = stats if stats is not None else ReadStats()
    for line in lines:
        try:
            event = json.loads(line)
            created_at = parse_created_at(event["created_at"])
        except (ValueError, KeyError, TypeError):
            stats.bad_lines += 1
            continue
        stats.events += 1
        yield TimedEvent(created_at, line, event)


@overload
def read_events(
    path: str | Path, stats: ReadStats | None = None, *, raw: Literal[False] = False
) -> Iterator[dict]: ...


@overload
def read_events(
    path: str | Path, stats: ReadStats | None = None, *, raw: Literal[True]
) -> Iterator[bytes]: ...


def read_events(
    path: str | Path, stats: ReadStats | None = None, *, raw: bool = False
) -> Iterator[dict] | Iterator[bytes]:
    """The valid events of an hour file (``.json`` or ``.json.gz``) or a directory of
    them, in file order then line order: parsed dicts, or with ``raw`` the lines
    exactly as stored. Bad lines are counted in ``stats`` (see :func:`parse_lines`).
    Raises :class:`FileNotFoundError` at once for a missing path or empty directory.
    """
    source_files(path)  # fail now rather than at the first next()
    timed = parse_lines(read_lines(path, stats), stats)
    if raw:
        return (item.line for item in timed)
    return (item.event for item in timed)


# -- the archive on the web -------------------------------------------------------------


class ArchiveUnavailable(RuntimeError):
    """An hour file could not be downloaded (no network, no such hour, cut short)."""


def _hour(spec: str) -> datetime:
    match = _HOUR_SPEC.match(spec.strip())
    if not match:
        raise ValueError(f"archive hour {spec!r} is not YYYY-MM-DD-H")
    year, month, day, hour = (int(g) for g in match.groups())
    if hour > 23:
        raise ValueError(f"archive hour {spec!r}: the hour must be 0..23")
    return datetime(year, month, day, hour, tzinfo=timezone.utc)


def archive_hours(
    spec: str,
    hours: int | None = None,
    start: str | datetime | float | None = None,
) -> list[datetime]:
    """The hours (UTC) named by a ``gharchive`` source.

    ``spec`` is ``YYYY-MM-DD-H`` (``hours`` hours from there, default 1),
    ``YYYY-MM-DD-H..YYYY-MM-DD-H`` (both ends included; ``hours`` then ignored), or
    empty: ``hours`` hours from ``start`` (rounded down to its hour).
    """
    count = 1 if hours is None else hours
    if count < 1:
        raise ValueError("hours must be at least 1")
    spec = spec.strip()
    if not spec:
        if start is None:
            raise ValueError("an archive source needs YYYY-MM-DD-H or a start time")
        first = datetime.fromtimestamp(parse_start(start) // 3600 * 3600, timezone.utc)
    elif ".." in spec:
        left, right = spec.split("..", 1)
        first, last = _hour(left), _hour(right)
        if last < first:
            raise ValueError(f"archive range {spec!r} ends before it starts")
        count = int((last - first).total_seconds() // 3600) + 1
    else:
        first = _hour(spec)
    return [first + timedelta(hours=i) for i in range(count)]


def archive_url(hour: datetime, base: str = ARCHIVE_URL) -> str:
    """The URL of the hour file of ``hour``: ``{base}YYYY-MM-DD-H.json.gz``."""
    if hour.tzinfo is not None:
        hour = hour.astimezone(timezone.utc)
    return f"{base.rstrip('/')}/{hour:%Y-%m-%d}-{hour.hour}.json.gz"


def fetch_archive_lines(
    url: str, stats: ReadStats | None = None, timeout: float = 30.0
) -> Iterator[bytes]:
    """The non-blank lines of the gzipped hour file at ``url``, streamed as downloaded.

    Raises :class:`ArchiveUnavailable` when the download fails or is cut short.
    """
    stats = stats if stats is not None else ReadStats()
    hint = "no network here? Download the hour files and pass them as --source FILE|DIR"
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as err:
        raise ArchiveUnavailable(
            f"cannot fetch {url}: HTTP {err.code} {err.reason} (is that hour in the archive?)"
        ) from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise ArchiveUnavailable(f"cannot fetch {url}: {reason} ({hint})") from err
    stats.files += 1
    with response, gzip.GzipFile(fileobj=response) as handle:
        try:
            for line in handle:
                line = line.strip()
                if line:
                    stats.lines += 1
                    yield line
        except (EOFError, OSError, zlib.error) as err:
            raise ArchiveUnavailable(f"download of {url} failed: {err} ({hint})") from err
