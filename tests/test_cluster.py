"""Multi-process clusters: the same results as one worker, the 0.4.2 cluster
flags, the cluster secret, and what happens when a worker is lost or never
comes.

Like Bytewax's suite, the application tests are parametrised over execution
modes with one fixture (``entry_point``): "1 worker" runs the application
plainly, "2 processes" and "3 processes" through the ``--workers N``
supervisor (a cluster on loopback). In a cluster, file sources are read on
worker 0 and file sinks write on worker 0, so each run still writes one file.
Every mode is compared with the expected output computed here from the input
and, per partition key, with the 1-worker run (run once per module and kept):
the global interleaving of keys may differ between modes, the sequence of
outputs of each key may not, and it must follow the source order.

The other tests start the processes of a cluster by hand, with the flags of
the original scripts (``-t -w 2 -c HOST:PORT -d HOST:PORT`` for the
initializer, ``-c``/``-j HOST:PORT -n NAME -w 2`` for the others).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import re
import signal
import socket
import string
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from itertools import accumulate
from pathlib import Path

import pytest
from conftest import process_alive

TESTS_DIR = Path(__file__).resolve().parent
APPS_DIR = TESTS_DIR / "apps"
PYTHON_DIR = TESTS_DIR.parent / "python"
HOST = "127.0.0.1"

WORD_COUNT = APPS_DIR / "word_count.py"
STATEFUL_TOTAL = APPS_DIR / "stateful_total.py"
SHARED_QUOTES = APPS_DIR / "shared_quotes.py"
DYNAMIC_KEYS = APPS_DIR / "dynamic_keys.py"
CLUSTER_TOTAL = APPS_DIR / "cluster_total.py"
CLUSTER_SLOW = APPS_DIR / "cluster_slow.py"

#: Execution modes -> runner flags.
MODES = {
    "1 worker": (),
    "2 processes": ("--workers", "2"),
    "3 processes": ("--workers", "3"),
}
#: Small batches, in every mode: the records of one source spread over the workers.
BATCH = ("--batch-size", "50")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def plain_env() -> dict:
    """As conftest's ``app_env()``, for module-scoped fixtures."""
    paths = [str(APPS_DIR), str(PYTHON_DIR)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), WALLAROO_LOG_LEVEL="info",
                PYTHONUNBUFFERED="1")


# ---------------------------------------------------------------------------
# The execution-mode fixture
# ---------------------------------------------------------------------------


class EntryPoint:
    """Runs an application in one execution mode, with file sinks in a fresh
    directory; keeps the 1-worker outputs of each (app, args) as the reference."""

    def __init__(self, mode: str, run_app, out_dir: Path, references: dict, ref_dir: Path):
        self.mode = mode
        self.processes = int(MODES[mode][1]) if MODES[mode] else 1
        self._run_app = run_app
        self._out_dir = out_dir
        self._references = references
        self._ref_dir = ref_dir

    def _run(self, mode: str, out_dir: Path, app: Path, args: tuple, outputs: tuple,
             timeout: float, **kwargs) -> tuple:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {flag: out_dir / f"{flag.strip('-')}.txt" for flag in outputs}
        argv = [*args]
        for flag, path in paths.items():
            argv += [flag, str(path)]
        result = self._run_app(app, *argv, *BATCH, *MODES[mode], timeout=timeout, **kwargs)
        result.check()
        assert "panicked" not in result.stderr, result.stderr
        texts = {flag: path.read_text(encoding="utf-8") for flag, path in paths.items()}
        return result, texts

    def __call__(self, app: Path, *args: str, outputs: tuple = ("--output",),
                 timeout: float = 60.0, **kwargs) -> dict:
        """Run ``app`` in this mode; ``{output flag: file text}``."""
        result, texts = self._run(self.mode, self._out_dir, app, args, outputs, timeout, **kwargs)
        # Every process of the cluster ran the application.
        assert result.stderr.count("running application") == self.processes, result.stderr
        if self.mode == "1 worker":
            self._references.setdefault((str(app), args, outputs), texts)
        return texts

    def reference(self, app: Path, *args: str, outputs: tuple = ("--output",),
                  timeout: float = 60.0, **kwargs) -> dict:
        """The outputs of the same run on 1 worker (run once per module)."""
        key = (str(app), args, outputs)
        if key not in self._references:
            out_dir = self._ref_dir / f"ref{len(self._references)}"
            _, texts = self._run("1 worker", out_dir, app, args, outputs, timeout, **kwargs)
            self._references[key] = texts
        return self._references[key]


@pytest.fixture(scope="module")
def _references(tmp_path_factory) -> tuple:
    return {}, tmp_path_factory.mktemp("reference")


@pytest.fixture(params=list(MODES))
def mode(request) -> str:
    return request.param


@pytest.fixture
def entry_point(mode, run_app, tmp_path: Path, _references) -> EntryPoint:
    """``entry_point(app, *args, outputs=("--output",))`` runs ``app`` in the
    parametrised mode; ``entry_point.reference(...)`` gives the 1-worker outputs."""
    references, ref_dir = _references
    return EntryPoint(mode, run_app, tmp_path / "out", references, ref_dir)


def by_key(lines: list, key) -> dict:
    """``{key(line): [lines in file order]}``."""
    out: dict = defaultdict(list)
    for line in lines:
        out[key(line)].append(line)
    return dict(out)


# ---------------------------------------------------------------------------
# word_count: fan-out, then a state partitioned by the first letter
# ---------------------------------------------------------------------------

WORD_STRIP = string.punctuation + " \t\r\n"


@pytest.fixture(scope="module")
def word_text(tmp_path_factory) -> Path:
    rng = random.Random(21)
    vocab = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 6)))
             for _ in range(300)]
    vocab += ["über", "42nd", "éclair", "x-ray", "don't"]
    lines = []
    for _ in range(500):
        words = [rng.choice(vocab) for _ in range(rng.randint(0, 10))]
        words = [w.capitalize() + "," if rng.random() < 0.1 else w for w in words]
        lines.append(" ".join(words))
    path = tmp_path_factory.mktemp("word_count") / "text.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def word_key(line: str) -> str:
    return line[0] if "a" <= line[0] <= "z" else "!"


@pytest.mark.timeout(90)
def test_word_count(entry_point: EntryPoint, word_text: Path) -> None:
    got = entry_point(WORD_COUNT, "--input", str(word_text))["--output"].splitlines()

    seen: Counter = Counter()
    expected = []
    for line in word_text.read_text(encoding="utf-8").splitlines():
        for token in line.lower().split():
            word = token.strip(WORD_STRIP)
            if word:
                seen[word] += 1
                expected.append(f"{word} {seen[word]}")
    assert len(expected) > 2000
    assert sorted(got) == sorted(expected)
    got_by_key = by_key(got, word_key)
    assert "!" in got_by_key  # über, 42nd, éclair
    assert got_by_key == by_key(expected, word_key)  # per key: source order
    reference = entry_point.reference(WORD_COUNT, "--input", str(word_text))["--output"]
    assert got_by_key == by_key(reference.splitlines(), word_key)


# ---------------------------------------------------------------------------
# stateful_total: to_stateful (one key), the app's own serialize/deserialize
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ints_file(tmp_path_factory) -> tuple:
    rng = random.Random(13)
    values = [rng.randint(-10**6, 10**6) for _ in range(2000)] + [10**30, -(10**30), 0]
    path = tmp_path_factory.mktemp("stateful_total") / "ints.txt"
    path.write_text("".join(f"{v}\n" for v in values))
    return path, values


@pytest.mark.timeout(90)
def test_stateful_total(entry_point: EntryPoint, ints_file: tuple) -> None:
    path, values = ints_file
    got = entry_point(STATEFUL_TOTAL, "--input", str(path))["--output"]
    # One state, one key: the whole output is that key's sequence.
    expected = "".join(f"{i} {t}\n" for i, t in enumerate(accumulate(values), start=1))
    assert got == expected
    assert got == entry_point.reference(STATEFUL_TOTAL, "--input", str(path))["--output"]


def read_calls(calls_dir: Path) -> dict:
    """``{pid: [(kind, value), ...]}`` from cluster_total's call logs."""
    calls = {}
    for log in sorted(calls_dir.glob("*.log")):
        calls[log.stem] = [
            (line[0], json.loads(line[2:])) for line in log.read_text().splitlines()
        ]
    return calls


@pytest.mark.timeout(60)
def test_app_serializers_carry_records_across_workers(run_app, tmp_path: Path,
                                                      ints_file: tuple) -> None:
    """stateful_total's own serialize/deserialize (instrumented by
    cluster_total.py) carry the records decoded on a worker that does not own
    the state: called in one process, undone in another, value for value; and
    never on one worker."""
    path, values = ints_file
    for workers in (1, 2):
        calls_dir = tmp_path / f"calls{workers}"
        calls_dir.mkdir()
        out = tmp_path / f"totals{workers}.txt"
        run_app(
            CLUSTER_TOTAL, "--input", str(path), "--output", str(out),
            "--calls-dir", str(calls_dir), *BATCH, "--workers", str(workers),
        ).check()
        expected = "".join(f"{i} {t}\n" for i, t in enumerate(accumulate(values), start=1))
        assert out.read_text() == expected
        calls = read_calls(calls_dir)
        if workers == 1:
            assert calls == {}, "records were serialized on a single worker"
            continue
        serialized = Counter()
        deserialized = Counter()
        for pid_calls in calls.values():
            kinds = {kind for kind, _ in pid_calls}
            # The owner of the state only deserializes, the other only serializes.
            assert len(kinds) == 1, kinds
            for kind, value in pid_calls:
                (serialized if kind == "S" else deserialized)[value] += 1
        assert sorted(kind for c in calls.values() for kind, _ in c[:1]) == ["D", "S"]
        assert sum(serialized.values()) >= len(values) // 10, "hardly any record crossed"
        assert serialized == deserialized
        assert not serialized - Counter(values)  # input records, nothing else


def complex_values(tmp_path: Path) -> Path:
    """1000 integers, with ``NNj`` (a complex number) at every line 25 modulo 50:
    never the first record of a batch of 50."""
    src = tmp_path / "values.txt"
    src.write_text("".join(f"{i}j\n" if i % 50 == 25 else f"{i}\n" for i in range(1, 1001)))
    return src


@pytest.fixture(scope="module")
def unserializable_runs(tmp_path_factory) -> dict:
    """cluster_total with complex values on 1 worker and on 2 processes."""
    tmp_path = tmp_path_factory.mktemp("unserializable")
    src = complex_values(tmp_path)
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}.txt"
        done = subprocess.run(
            [sys.executable, "-m", "wallaroo", str(CLUSTER_TOTAL), "--input", str(src),
             "--output", str(out), "--calls-dir", str(calls_dir), "--complex", *BATCH,
             "--workers", str(workers)],
            stdin=subprocess.DEVNULL, capture_output=True, env=plain_env(), timeout=60,
        )
        runs[workers] = (done.returncode, done.stderr.decode(errors="replace"), out)
    return runs


@pytest.mark.timeout(60)
def test_record_the_app_serializer_cannot_encode_fails_clearly(unserializable_runs) -> None:
    """A ``complex`` value: fine on one worker (nothing is serialized), but
    stateful_total's JSON ``serialize`` cannot encode it, so in a cluster the
    record that crosses workers stops the run with the serializer's error and
    the step; pickle, which could, must not be used instead."""
    code, stderr, out = unserializable_runs[1]
    assert code == 0, stderr
    total: complex = 0
    for i in range(1, 1001):
        total += complex(f"{i}j") if i % 50 == 25 else i
    lines = out.read_text().splitlines()
    assert len(lines) == 1000
    assert lines[-1] == f"1000 {total}"

    code, stderr, _ = unserializable_runs[2]
    assert code != 0, stderr
    assert "TypeError: Object of type complex is not JSON serializable" in stderr, stderr
    assert re.search(r'step "serialize[^"]*"', stderr), stderr
    assert "panicked" not in stderr, stderr


@pytest.mark.timeout(60)

def test_serializer_failure_names_the_offending_record(unserializable_runs) -> None:
    code, stderr, _ = unserializable_runs[2]
    assert code != 0, stderr
    found = re.search(r"failed on record (\S+) \(from file \S+ line (\d+)\b", stderr)
    assert found, stderr
    record, line = found.groups()
    assert record == f"{line}j", found[0]


@pytest.mark.timeout(60)

def test_step_error_on_one_worker_fails_every_worker(tmp_path: Path, app_env, free_port) -> None:
    """The initializer serializes the records it decodes for the state on
    worker2, and fails on a complex value; worker2 must not report success."""
    src = complex_values(tmp_path)
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    control = f"{HOST}:{free_port()}"
    common = ("--input", str(src), "--output", str(tmp_path / "out.txt"),
              "--calls-dir", str(calls_dir), "--complex", *BATCH)
    with processes(tmp_path, app_env) as start:
        initializer = start("initializer", CLUSTER_TOTAL, *common, "-t", "-w", "2",
                            "-c", control, "-d", f"{HOST}:{free_port()}")
        initializer.wait_for("waiting for 1 more worker", timeout=15)
        worker = start("worker2", CLUSTER_TOTAL, *common, "-w", "2", "-c", control,
                       "-n", "worker2")
        initializer_code = initializer.wait(30)
        worker_code = worker.wait(30)
    assert initializer_code != 0 and "is not JSON serializable" in initializer.stderr
    assert worker_code != 0, worker.stderr


# ---------------------------------------------------------------------------
# shared_quotes: two pipelines sharing one partitioned state
# ---------------------------------------------------------------------------

SYMBOLS = ["AAPL", "MSFT", "GOOG", "AMZN", "TSLA", "IBM", "ORCL", "INTC"]


@pytest.fixture(scope="module")
def quotes_files(tmp_path_factory) -> tuple:
    rng = random.Random(17)
    nbbo_lines, order_lines = [], []
    for _ in range(800):
        sym = rng.choice(SYMBOLS)
        bid = round(rng.uniform(90, 110), 2)
        nbbo_lines.append((sym, bid, round(bid + rng.uniform(0.01, 2.0), 2)))
    for _ in range(800):
        sym = rng.choice(SYMBOLS + ["NOQUOTE"])
        order_lines.append((sym, rng.randint(1, 500), round(rng.uniform(88, 114), 2)))
    base = tmp_path_factory.mktemp("shared_quotes")
    nbbo, orders = base / "nbbo.txt", base / "orders.txt"
    nbbo.write_text("".join(f"{s},{b},{a}\n" for s, b, a in nbbo_lines))
    orders.write_text("".join(f"{s},{q},{p}\n" for s, q, p in order_lines))
    return nbbo, orders, nbbo_lines, order_lines


NBBO_RE = re.compile(r"nbbo (\S+) (\S+) (\S+) touches=(\d+) orders_seen=(\d+)")
ORDER_RE = re.compile(
    r"order (\S+) (\d+) (\S+) (ok|rejected|no-quote) touches=(\d+) nbbo_seen=(\d+)"
)


@pytest.mark.timeout(90)
def test_shared_quotes(entry_point: EntryPoint, quotes_files: tuple) -> None:
    """Both pipelines reach the one state object of each symbol, on whatever
    worker owns it. How the two sources interleave at a symbol is not fixed
    (not even on one worker), so per symbol: each pipeline's outputs follow
    its input order (the same sequences as on 1 worker), and replaying the
    ``touches`` order, every output saw exactly the other pipeline's records
    before it (see test_e2e_apps.test_two_pipelines_share_one_state)."""
    nbbo, orders, nbbo_lines, order_lines = quotes_files
    args = ("--nbbo", str(nbbo), "--orders", str(orders))
    outputs = ("--nbbo-output", "--orders-output")
    texts = entry_point(SHARED_QUOTES, *args, outputs=outputs)
    reference = entry_point.reference(SHARED_QUOTES, *args, outputs=outputs)

    def parse(texts: dict) -> tuple:
        quotes: dict = defaultdict(list)
        checks: dict = defaultdict(list)
        for line in texts["--nbbo-output"].splitlines():
            m = NBBO_RE.fullmatch(line)
            assert m, line
            quotes[m[1]].append((float(m[2]), float(m[3]), int(m[4]), int(m[5])))
        for line in texts["--orders-output"].splitlines():
            m = ORDER_RE.fullmatch(line)
            assert m, line
            checks[m[1]].append((int(m[2]), float(m[3]), m[4], int(m[5]), int(m[6])))
        return quotes, checks

    got_nbbo, got_orders = parse(texts)
    ref_nbbo, ref_orders = parse(reference)
    assert sum(map(len, got_nbbo.values())) == len(nbbo_lines)
    assert sum(map(len, got_orders.values())) == len(order_lines)
    for sym in SYMBOLS + ["NOQUOTE"]:
        quotes = [(b, a) for s, b, a in nbbo_lines if s == sym]
        sym_orders = [(q, p) for s, q, p in order_lines if s == sym]
        assert [(b, a) for b, a, _, _ in got_nbbo[sym]] == quotes, sym
        assert [(b, a) for b, a, _, _ in ref_nbbo[sym]] == quotes, sym
        assert [(q, p) for q, p, _, _, _ in got_orders[sym]] == sym_orders, sym
        assert [(q, p) for q, p, _, _, _ in ref_orders[sym]] == sym_orders, sym
        events = [("nbbo", t, seen, None) for _, _, t, seen in got_nbbo[sym]]
        events += [("order", t, seen, (p, v)) for _, p, v, t, seen in got_orders[sym]]
        events.sort(key=lambda e: e[1])
        assert [e[1] for e in events] == list(range(1, len(events) + 1)), (sym, "touches")
        n_quotes = n_orders = 0
        for kind, _touches, seen, order in events:
            if kind == "nbbo":
                assert seen == n_orders, (sym, "orders seen by an nbbo update")
                n_quotes += 1
                continue
            assert seen == n_quotes, (sym, "quotes seen by an order")
            price, verdict = order
            if n_quotes == 0:
                assert verdict == "no-quote", sym
            else:
                bid, ask = quotes[n_quotes - 1]
                assert verdict == ("ok" if bid <= price <= ask else "rejected"), (sym, price)
            n_orders += 1
    assert got_orders["NOQUOTE"] and all(v == "no-quote" for _, _, v, _, _ in
                                         got_orders["NOQUOTE"])


# ---------------------------------------------------------------------------
# dynamic_keys: undeclared str and tuple keys, u64 keys
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dynamic_records(tmp_path_factory) -> tuple:
    rng = random.Random(29)
    names = [f"user{i}" for i in range(25)] + ["ünï", "名前", "a b", ""]
    groups = ["g0", "g1", "g2"]
    special = [0, 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
    pool = special + rng.sample(range(2, 2**62), 60)
    # n is drawn independently of (name, group): every key sees varied records,
    # so a record applied out of source order changes the counts it reports.
    records = [(rng.choice(names), rng.choice(groups), rng.choice(pool)) for _ in range(3000)]
    path = tmp_path_factory.mktemp("dynamic_keys") / "records.txt"
    path.write_text("".join(f"{n},{g},{k}\n" for n, g, k in records), encoding="utf-8")
    return path, records


def n_key(line: str) -> int:
    return int(line.split(" ")[-4])


@pytest.mark.timeout(90)
def test_dynamic_keys(entry_point: EntryPoint, dynamic_records: tuple) -> None:
    path, records = dynamic_records
    got = entry_point(DYNAMIC_KEYS, "--input", str(path))["--output"].splitlines()

    by_name: Counter = Counter()
    by_pair: Counter = Counter()
    by_n: Counter = Counter()
    expected = []
    for name, group, n in records:
        by_name[name] += 1
        by_pair[(name, group)] += 1
        by_n[n] += 1
        expected.append(f"{name} {group} {n} {by_name[name]} {by_pair[(name, group)]} {by_n[n]}")
    # Each record carries the counts of its str, tuple and u64 key at the time
    # the state saw it: the same multiset means every key saw its records in
    # source order (records of a key differ in the other fields).
    assert len(got) == len(records), "records were lost or duplicated"
    assert sorted(got) == sorted(expected)
    # The u64 step is the last one before the sink: per n, the file order is
    # the source order, as on 1 worker.
    assert by_key(got, n_key) == by_key(expected, n_key)
    reference = entry_point.reference(DYNAMIC_KEYS, "--input", str(path))["--output"]
    assert by_key(got, n_key) == by_key(reference.splitlines(), n_key)
    assert sorted(got) == sorted(reference.splitlines())


# ---------------------------------------------------------------------------
# The star leaders example on a file
# ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_star_leaders_per_partition_same_as_one_worker(run_app, tmp_path: Path) -> None:
    """The bundled example (Python 2 style repo_metadata.py, through the
    runner's py2 compatibility layer) on generated GitHub Archive events: each
    partition publishes the same sequence of leaderboards on 2 processes as on
    1 worker."""
    events = tmp_path / "events.json"
    code = (
        "import json, sys\n"
        "from wallaroo.demo.generator import generate_events\n"
        "with open(sys.argv[1], 'w') as f:\n"
        "    for e in generate_events(seed=3, count=3000, repos=150):\n"
        "        f.write(json.dumps(e) + '\\n')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR))
    subprocess.run([sys.executable, "-c", code, str(events)], check=True, env=env, timeout=60)
    work = tmp_path / "cwd"  # the bundled example, not a star_leaders directory here
    work.mkdir()

    boards = {}
    for workers in (1, 2):
        out = tmp_path / f"leaders{workers}.txt"
        result = run_app(
            "star_leaders", "--input", str(events), "--output", str(out), *BATCH,
            "--workers", str(workers), cwd=work, timeout=60,
        )
        result.check()
        per_partition: dict = defaultdict(list)
        for line in out.read_text().splitlines():
            board = json.loads(line)
            per_partition[board["partition"]].append(board["leaders"])
        boards[workers] = dict(per_partition)
    assert len(boards[1]) >= 5, "too few partitions had leaderboards"
    assert sum(map(len, boards[1].values())) >= 100
    assert boards[2] == boards[1]


# ---------------------------------------------------------------------------
# Clusters started by hand, with the 0.4.2 flags
# ---------------------------------------------------------------------------


class Proc:
    """A runner process of a hand-made cluster; stdout and stderr go to files."""

    def __init__(self, tmp_path: Path, label: str, app: Path, args: tuple, env: dict):
        self.label = label
        self._err_path = tmp_path / f"{label}.stderr"
        self._err = self._err_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wallaroo", str(app), *args],
            stdin=subprocess.DEVNULL,
            stdout=self._err,
            stderr=self._err,
            env=env,
        )
        self.started = time.monotonic()

    @property
    def stderr(self) -> str:
        return self._err_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float) -> int:
        """The exit code; fails the test if the process is still running after ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.label} did not exit within {timeout} s\n{self.stderr}")

    def wait_for(self, text: str, timeout: float, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.stderr.count(text) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{self.label}: no {text!r} (exit {self.proc.poll()})\n{self.stderr}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._err.close()


@contextlib.contextmanager
def processes(tmp_path: Path, app_env) -> Iterator:
    """``start(label, app, *args, env=None)`` -> :class:`Proc`; all killed on exit."""
    started: list = []

    def start(label: str, app: Path, *args: str, env: dict | None = None) -> Proc:
        proc = Proc(tmp_path, label, app, args, env if env is not None else app_env())
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.kill()


def word_count_expected(text_path: Path) -> list:
    seen: Counter = Counter()
    out = []
    for token in text_path.read_text(encoding="utf-8").lower().split():
        word = token.strip(WORD_STRIP)
        if word:
            seen[word] += 1
            out.append(f"{word} {seen[word]}")
    return out


def check_word_counts(out: Path, text: Path) -> None:
    got = out.read_text(encoding="utf-8").splitlines()
    expected = word_count_expected(text)
    assert by_key(got, word_key) == by_key(expected, word_key)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("connect", ["-c", "-j"])
def test_manual_cluster_flags(tmp_path: Path, app_env, free_port, word_text: Path,
                              connect: str) -> None:
    """As the original scripts: the same --input/--output and -m for both, the
    initializer on -c/-d, the second worker given the initializer's control
    address, its own name and external address, no secret, Pony flags."""
    control, data, metrics = (f"{HOST}:{free_port()}" for _ in range(3))
    out = tmp_path / "counts.txt"
    common = ("--input", str(word_text), "--output", str(out), "-m", metrics,
              "--ponythreads=1", "--ponynoblock", *BATCH)
    with processes(tmp_path, app_env) as start:
        initializer = start("initializer", WORD_COUNT, *common,
                            "-t", "-w", "2", "-c", control, "-d", data,
                            "-e", f"{HOST}:{free_port()}")
        initializer.wait_for("waiting for 1 more worker", timeout=15)
        worker = start("worker2", WORD_COUNT, *common,
                       "-w", "2", connect, control, "-n", "worker2",
                       "-e", f"{HOST}:{free_port()}")
        assert worker.wait(30) == 0, worker.stderr
        assert initializer.wait(30) == 0, initializer.stderr
    assert "'worker2' joined" in initializer.stderr
    check_word_counts(out, word_text)


# ---------------------------------------------------------------------------
# The cluster secret
# ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_wrong_secret_is_refused_and_the_initializer_keeps_waiting(
    tmp_path: Path, app_env, free_port, word_text: Path
) -> None:
    control = f"{HOST}:{free_port()}"
    out = tmp_path / "counts.txt"
    common = ("--input", str(word_text), "--output", str(out), *BATCH)
    env = app_env()
    env.pop("WALLAROO_CLUSTER_SECRET", None)
    with processes(tmp_path, app_env) as start:
        initializer = start("initializer", WORD_COUNT, *common, "-t", "-w", "2", "-c", control,
                            "-d", f"{HOST}:{free_port()}", "--cluster-secret", "s3cret",
                            env=env)
        initializer.wait_for("waiting for 1 more worker", timeout=15)
        for label, secret in (("no-secret", ()), ("wrong", ("--cluster-secret", "guess"))):
            intruder = start(label, WORD_COUNT, *common, "-w", "2", "-c", control,
                             "-n", label, *secret, env=env)
            assert intruder.wait(15) != 0, intruder.stderr
            assert "refused" in intruder.stderr, intruder.stderr
            assert "wrong cluster secret" in intruder.stderr, intruder.stderr
            initializer.wait_for("refused a worker", timeout=5,
                                 count=1 if label == "no-secret" else 2)
            assert initializer.proc.poll() is None, initializer.stderr
        # The secret from the environment.
        worker = start("good", WORD_COUNT, *common, "-w", "2", "-j", control, "-n", "good",
                       env=dict(env, WALLAROO_CLUSTER_SECRET="s3cret"))
        assert worker.wait(30) == 0, worker.stderr
        assert initializer.wait(30) == 0, initializer.stderr
    check_word_counts(out, word_text)


@pytest.mark.timeout(30)
def test_non_loopback_control_needs_a_secret(run_app, app_env, free_port, tmp_path: Path,
                                             word_text: Path) -> None:
    env = app_env()
    env.pop("WALLAROO_CLUSTER_SECRET", None)
    control = f"0.0.0.0:{free_port()}"
    result = run_app(WORD_COUNT, "--input", str(word_text), "--output", str(tmp_path / "o.txt"),
                     "-t", "-w", "2", "-c", control, "--cluster-timeout", "5",
                     env=env, timeout=20)
    assert result.returncode != 0
    assert control in result.stderr, result.stderr
    assert "secret" in result.stderr and "other hosts" in result.stderr, result.stderr
    assert "waiting for" not in result.stderr  # refused before listening


# ---------------------------------------------------------------------------
# A lost worker: the others stop, non-zero, naming it; no hang
# ---------------------------------------------------------------------------

LOST_EXIT_WITHIN = 15.0


@pytest.fixture(scope="module")
def slow_input(tmp_path_factory) -> Path:
    # 6000 records x 10 ms: about 30 s on each of 2 workers, so a loaded
    # machine still kills the victim mid-run (the kill waits for the first
    # output; the survivor's exit follows the kill, not the input's end).
    path = tmp_path_factory.mktemp("slow") / "lines.txt"
    path.write_text("".join(f"k{i % 17}\n" for i in range(6000)))
    return path


def wait_output(path: Path, timeout: float = 60) -> None:
    """Wait until the run wrote its first output line."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and b"\n" in path.read_bytes()):
        assert time.monotonic() < deadline, f"no output in {path} after {timeout} s"
        time.sleep(0.05)


@pytest.fixture(scope="module", params=["member", "initializer"])
def killed_run(request, tmp_path_factory, slow_input: Path) -> dict:
    """A 2-process cluster started by hand; one process (``victim``) is
    killed with SIGKILL a second into the run. How the survivor ended."""
    victim = request.param
    tmp_path = tmp_path_factory.mktemp(f"killed-{victim}")
    control = f"{HOST}:{_free_port()}"
    common = ("--input", str(slow_input), "--output", str(tmp_path / "out.txt"), *BATCH)
    with processes(tmp_path, plain_env) as start:
        initializer = start("initializer", CLUSTER_SLOW, *common, "-t", "-w", "2",
                            "-c", control, "-d", f"{HOST}:{_free_port()}")
        member = start("worker2", CLUSTER_SLOW, *common, "-w", "2", "-c", control,
                       "-n", "worker2")
        for proc in (initializer, member):
            proc.wait_for("running application", timeout=20)
        wait_output(tmp_path / "out.txt")  # killed while records go through
        dead, survivor = (member, initializer) if victim == "member" else (initializer, member)
        assert survivor.proc.poll() is None, survivor.stderr
        dead.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        try:
            code = survivor.proc.wait(LOST_EXIT_WITHIN + 15)
        except subprocess.TimeoutExpired:
            code = None
        elapsed = time.monotonic() - killed
        return {
            "victim": victim,
            "lost_name": "worker2" if victim == "member" else "initializer",
            "code": code,
            "elapsed": elapsed,
            "stderr": survivor.stderr,
        }


@pytest.mark.timeout(60)
def test_lost_worker_stops_the_other_without_hanging(killed_run: dict) -> None:
    assert killed_run["code"] is not None, f"hangs\n{killed_run['stderr']}"
    assert killed_run["code"] != 0, killed_run["stderr"]
    assert killed_run["elapsed"] < LOST_EXIT_WITHIN, killed_run
    assert "error" in killed_run["stderr"]


@pytest.mark.timeout(60)

def test_lost_worker_is_named_in_a_clean_error(killed_run: dict) -> None:
    stderr = killed_run["stderr"]
    assert killed_run["code"] == 1, stderr  # the runner's run-failed code, not a signal
    assert re.search(rf"lost worker\W+{killed_run['lost_name']}\b", stderr), stderr
    assert "panicked" not in stderr, stderr


def children_of(pid: int) -> dict:
    """``{child pid: command line}`` of a process's children (from /proc)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                out[int(stat.parent.name)] = cmdline.decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
    return out


#: wait4 on x86_64 (the first field of /proc/PID/syscall).
WAIT4_X86_64 = "61"


@pytest.mark.timeout(60)
@pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers of x86_64")
def test_supervisor_waits_for_its_workers_without_polling(
    tmp_path: Path, app_env, slow_input: Path
) -> None:
    """While the workers run, the supervisor sleeps in wait4 until one ends,
    instead of waking up every few milliseconds to poll them (CPU taken from
    the workers; its polling loop slept in clock_nanosleep)."""
    with processes(tmp_path, app_env) as start:
        supervisor = start("supervisor", CLUSTER_SLOW, "--input", str(slow_input),
                           "--output", str(tmp_path / "out.txt"), *BATCH, "--workers", "2")
        supervisor.wait_for("running application", timeout=20, count=2)
        wait_output(tmp_path / "out.txt")
        syscall = Path(f"/proc/{supervisor.proc.pid}/syscall")
        samples = []
        for _ in range(5):
            samples.append(syscall.read_text().split()[0])
            time.sleep(0.05)
        assert samples == [WAIT4_X86_64] * 5, samples


@pytest.mark.timeout(60)
def test_supervisor_exits_non_zero_when_a_worker_is_killed(
    tmp_path: Path, app_env, slow_input: Path
) -> None:
    with processes(tmp_path, app_env) as start:
        supervisor = start("supervisor", CLUSTER_SLOW, "--input", str(slow_input),
                           "--output", str(tmp_path / "out.txt"), *BATCH, "--workers", "2")
        supervisor.wait_for("running application", timeout=20, count=2)
        wait_output(tmp_path / "out.txt")  # killed while records go through
        children = children_of(supervisor.proc.pid)
        assert len(children) == 2, children
        (victim,) = [pid for pid, cmd in children.items() if "worker-1" in cmd]
        (other,) = [pid for pid in children if pid != victim]
        os.kill(victim, signal.SIGKILL)
        code = supervisor.wait(LOST_EXIT_WITHIN)
        assert code != 0, supervisor.stderr
        # It names the lost worker (not just "joined the cluster as worker 1 of 2").
        assert re.search(r"worker 1 exited|lost worker\W+worker-1\b", supervisor.stderr), \
            supervisor.stderr
        # The supervisor does not leave the other worker behind.
        deadline = time.monotonic() + 5
        while Path(f"/proc/{other}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_alive(other), f"worker-0 (pid {other}) still running"


@pytest.mark.timeout(120)
def test_ctrl_c_in_a_terminal_stops_every_worker_once(tmp_path: Path, app_env) -> None:
    """A terminal's Ctrl-C goes to its whole foreground job. Before, that was
    the supervisor and its workers, which then got it again from the
    supervisor (a second Ctrl-C: stop at once, exit 130), and a worker took
    it as "leave the cluster", racing the initializer's own stop ("lost the
    initializer before it gave the verdict" on a loaded machine). Now the
    workers have a session of their own: the supervisor passes the signal
    on once, every worker drains and stops, exit 0, every record out."""
    from wallaroo.sender import send_messages

    out, log_path = tmp_path / "counts.txt", tmp_path / "run.log"
    command = [sys.executable, "-m", "wallaroo", str(APPS_DIR / "resilient_count.py"),
               "--in", f"{HOST}:0", "--output", str(out), "--workers", "2"]  # fmt: skip
    with open(log_path, "wb") as log:
        # As a shell starts a job: a process group of its own.
        proc = subprocess.Popen(command, env=app_env(), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"listening for TCP input on [\d.]+:(\d+)",
                                      log_path.read_text(errors="replace"))):  # fmt: skip
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        keys = [f"k{i % 7}".encode() for i in range(500)]
        assert send_messages(HOST, int(found.group(1)), keys) == len(keys)
        while len(out.read_bytes().splitlines() if out.exists() else []) < len(keys):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log_path.read_text(errors="replace")
    assert code == 0, text
    assert "leaving the cluster" not in text, text
    assert "stopped at once" not in text and "interrupted" not in text, text
    # Each worker got the signal once and stopped (none left the cluster).
    assert text.count("SIGINT: stopping after what was read") == 2, text
    counts = Counter(line.split()[0] for line in out.read_text().splitlines())
    assert counts == Counter(k.decode() for k in keys)


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_supervisor_killed_by_sigkill_leaves_no_worker_behind(tmp_path: Path, app_env) -> None:
    """The workers run in a session of their own (Ctrl-C reaches them once,
    through the supervisor), so nothing else would stop them if the
    supervisor died without passing a signal on: they get SIGTERM then (a
    TCP source with no input: nothing to finish, they stop at once)."""
    with processes(tmp_path, app_env) as start:
        supervisor = start("supervisor", APPS_DIR / "resilient_count.py", "--in", f"{HOST}:0",
                           "--output", str(tmp_path / "out.txt"), "--workers", "2")  # fmt: skip
        supervisor.wait_for("running application", timeout=20, count=2)
        workers = children_of(supervisor.proc.pid)
        assert len(workers) == 2, workers
        supervisor.proc.kill()
        supervisor.proc.wait()
        deadline = time.monotonic() + 30
        while any(process_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if process_alive(pid)], supervisor.stderr
        assert "SIGTERM: stopping after what was read" in supervisor.stderr


# ---------------------------------------------------------------------------
# A cluster that never forms
# ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_cluster_that_never_forms_fails_clearly(tmp_path: Path, app_env, free_port,
                                                word_text: Path) -> None:
    control = f"{HOST}:{free_port()}"
    common = ("--input", str(word_text), "--output", str(tmp_path / "out.txt"))
    with processes(tmp_path, app_env) as start:
        initializer = start("initializer", WORD_COUNT, *common, "-t", "-w", "3", "-c", control,
                            "-d", f"{HOST}:{free_port()}", "--cluster-timeout", "3")
        initializer.wait_for("waiting for 2 more worker", timeout=15)
        member = start("worker2", WORD_COUNT, *common, "-w", "3", "-c", control,
                       "-n", "worker2")
        # It gives up after its --cluster-timeout (the wait bounds that), with
        # the count of workers that made it in time (the member may be too
        # slow to start on a busy machine).
        assert initializer.wait(30) != 0, initializer.stderr
        assert re.search(r"only [12] of 3 workers joined within 3 s", initializer.stderr), \
            initializer.stderr
        # The member does not wait for its own (default 60 s) timeout.
        assert member.wait(10) != 0, member.stderr
        assert "initializer" in member.stderr and "error" in member.stderr, member.stderr


@pytest.mark.timeout(30)
def test_member_without_an_initializer_fails_clearly(run_app, free_port, tmp_path: Path,
                                                     word_text: Path) -> None:
    control = f"{HOST}:{free_port()}"  # nobody listens
    started = time.monotonic()
    result = run_app(WORD_COUNT, "--input", str(word_text), "--output", str(tmp_path / "o.txt"),
                     "-w", "2", "-c", control, "-n", "worker2", "--cluster-timeout", "2",
                     timeout=20)
    assert result.returncode != 0
    assert time.monotonic() - started < 15
    assert f"cannot reach the initializer at {control}" in result.stderr, result.stderr


# ---------------------------------------------------------------------------
# record_types: the record codec keeps every type
# ---------------------------------------------------------------------------

RECORD_TYPES = APPS_DIR / "record_types.py"


@pytest.mark.timeout(90)
def test_records_crossing_workers_keep_their_types(entry_point: EntryPoint, tmp_path) -> None:
    """Plain data (marshal) and everything else (pickle: bytearray, dict
    subclasses, sets, objects, cycles, deep nesting, shared references) reach
    the state step as on one worker, where nothing is serialized."""
    src = tmp_path / "numbers.txt"
    src.write_text("".join(f"{n}\n" for n in range(1200)))
    got = entry_point(RECORD_TYPES, "--input", str(src))["--output"].splitlines()
    reference = entry_point.reference(RECORD_TYPES, "--input", str(src))["--output"]
    assert len(got) == 1200
    assert sorted(got) == sorted(reference.splitlines())
    # The reference itself shows the types survived, so the comparison means something.
    text = reference
    for expected in ("bytearray(bytearray(b'abc'))", "OrderedDict{", "Tagged{", "frozenset[",
                     "<same as #", "Point(800, -800)", "int(1267650600228229401496703205"):
        assert expected in text, expected
