"""End-to-end tests: applications in ``tests/apps`` run through the runner.

Each test runs ``python -m wallaroo APP ...`` in a subprocess (fixtures in
``conftest.py``) and compares what the application wrote with the expected
output computed here in plain Python, independently of the application code.
"""

from __future__ import annotations

import math
import random
import re
import string
import struct
import threading
import time
from collections import Counter, defaultdict
from itertools import accumulate
from pathlib import Path

import pytest
from wallaroo.receiver import Receiver
from wallaroo.sender import send_messages

APPS_DIR = Path(__file__).resolve().parent / "apps"
HOST = "127.0.0.1"

# ---------------------------------------------------------------------------
# celsius: two stateless steps, binary framing, TCP in and out
# ---------------------------------------------------------------------------

CELSIUS = APPS_DIR / "celsius.py"


def fahrenheit32(celsius: float) -> float:
    """The expected output: Fahrenheit rounded to float32, as the wire carries it."""
    return struct.unpack(">f", struct.pack(">f", celsius * 9.0 / 5.0 + 32.0))[0]


def decode_float32_frames(messages: list) -> list:
    assert all(len(m) == 4 for m in messages), {len(m) for m in messages}
    return [struct.unpack(">f", m)[0] for m in messages]


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-3)


@pytest.mark.timeout(60)
def test_celsius_one_connection(tcp_app, free_port) -> None:
    rng = random.Random(1)
    values = [rng.uniform(-273.15, 1000.0) for _ in range(1000)]
    in_port = free_port()
    with Receiver(length_fmt=">I") as rx:
        with tcp_app(CELSIUS, "--in", f"{HOST}:{in_port}", "--out", f"{HOST}:{rx.port}") as app:
            assert [address[1:] for address in app.listening()] == [(HOST, in_port)]
            sent = send_messages(HOST, in_port, [struct.pack(">d", v) for v in values])
            assert sent == 1000
            assert rx.wait_for(1000, timeout=20), f"{rx.message_count} outputs\n{app.stderr}"
        # Stopped with exit 0 (checked by tcp_app); nothing more came.
        assert rx.wait_idle(0.2, timeout=5)
        got = decode_float32_frames(rx.messages())
    assert rx.incomplete == 0
    expected = [fahrenheit32(v) for v in values]
    assert len(got) == len(expected)
    bad = [(i, g, e) for i, (g, e) in enumerate(zip(got, expected)) if not close(g, e)]
    assert bad == [], bad[:5]


@pytest.mark.timeout(60)
def test_celsius_three_concurrent_connections(tcp_app) -> None:
    # Connection i sends -40 + 600*i + 0.5*j Celsius: every output maps back to
    # one (connection, index), so per-connection order can be checked.
    counts = [334, 333, 333]
    sent_values = [[-40.0 + 600.0 * i + 0.5 * j for j in range(n)] for i, n in enumerate(counts)]
    with Receiver(length_fmt=">I") as rx:
        with tcp_app(CELSIUS, "--in", f"{HOST}:0", "--out", f"{HOST}:{rx.port}") as app:
            ((_, _, in_port),) = app.listening()
            results: list = []

            def send(i: int) -> None:
                payloads = [struct.pack(">d", v) for v in sent_values[i]]
                results.append(send_messages(HOST, in_port, payloads))

            threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            assert sorted(results) == sorted(counts)
            assert rx.wait_for(1000, timeout=20), f"{rx.message_count} outputs\n{app.stderr}"
        assert rx.wait_idle(0.2, timeout=5)
        got = decode_float32_frames(rx.messages())
    assert len(got) == 1000
    per_connection: dict = defaultdict(list)
    for f in got:
        celsius = round((f - 32.0) * 5.0 / 9.0 * 2.0) / 2.0  # nearest half degree
        conn = int((celsius + 40.0) // 600.0)
        assert close(f, fahrenheit32(celsius)), (f, celsius)
        per_connection[conn].append(celsius)
    assert sorted(per_connection) == [0, 1, 2]
    for i in range(3):
        assert per_connection[i] == sent_values[i], f"connection {i} out of order or lost"


# ---------------------------------------------------------------------------
# word_count: computation_multi fan-out, state partitioned by first letter
# ---------------------------------------------------------------------------

WORD_PUNCT = ",.;:!?()\"'-"


def make_text(rng: random.Random, n_words: int) -> str:
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 7)))
             for _ in range(600)]
    vocab += ["don't", "o'clock", "42nd", "3d", "über", "éclair", "naïve", "x-ray"]
    lines, words = [], 0
    while words < n_words:
        k = rng.randint(0, 14)
        tokens = []
        for _ in range(k):
            word = rng.choice(vocab)
            r = rng.random()
            if r < 0.15:
                word = word.capitalize()
            elif r < 0.2:
                word = word.upper()
            if rng.random() < 0.2:
                word = word + rng.choice(WORD_PUNCT) * rng.randint(1, 2)
            if rng.random() < 0.1:
                word = rng.choice("(\"'") + word
            tokens.append(word)
            words += 1
        if rng.random() < 0.05:
            tokens.append(rng.choice(["--", "...", "!?"]))  # no word in it
        lines.append((" " * rng.randint(1, 2)).join(tokens) if tokens else "")
    return "\n".join(lines) + "\n"


def expected_words(text: str) -> list:
    out = []
    for line in text.splitlines():
        for token in re.split(r"\s+", line.lower()):
            word = token.strip(WORD_PUNCT)
            if word:
                out.append(word)
    return out


def letter_key(word: str) -> str:
    return word[0] if word[0] in string.ascii_lowercase else "!"


@pytest.mark.timeout(60)
def test_word_count(run_app, tmp_path: Path) -> None:
    text = make_text(random.Random(7), 20000)
    src = tmp_path / "text.txt"
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "counts.txt"
    run_app(APPS_DIR / "word_count.py", "--input", str(src), "--output", str(out)).check()

    words = expected_words(text)
    assert len(words) >= 19000
    seen: Counter = Counter()
    expected = []
    for word in words:
        seen[word] += 1
        expected.append((word, seen[word]))

    got = []
    for line in out.read_text(encoding="utf-8").splitlines():
        word, count = line.rsplit(" ", 1)
        got.append((word, int(count)))
    assert len(got) == len(expected)
    # Final count of each word: its last output.
    final = {}
    for word, count in got:
        final[word] = count
    assert final == dict(seen)
    # Per partition key (first letter), outputs come in input order.
    by_key_got: dict = defaultdict(list)
    by_key_expected: dict = defaultdict(list)
    for item in got:
        by_key_got[letter_key(item[0])].append(item)
    for item in expected:
        by_key_expected[letter_key(item[0])].append(item)
    assert set(by_key_got) == set(by_key_expected)
    assert "!" in by_key_got  # 42nd, 3d, über, éclair
    for key in by_key_expected:
        assert by_key_got[key] == by_key_expected[key], f"partition {key!r}"


# ---------------------------------------------------------------------------
# stateful_total: to_stateful and application-defined serialize/deserialize
# ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_stateful_total_with_app_serializers(run_app, tmp_path: Path) -> None:
    rng = random.Random(3)
    values = [rng.randint(-10**6, 10**6) for _ in range(5000)] + [10**30, -(10**30), 0]
    src = tmp_path / "ints.txt"
    src.write_text("".join(f"{v}\n" for v in values))
    out = tmp_path / "totals.txt"
    run_app(APPS_DIR / "stateful_total.py", "--input", str(src), "--output", str(out)).check()
    got = [tuple(int(x) for x in line.split()) for line in out.read_text().splitlines()]
    expected = list(enumerate(accumulate(values), start=1))
    assert got == expected


# ---------------------------------------------------------------------------
# shared_quotes: two pipelines, one partitioned state by name
# ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_two_pipelines_share_one_state(run_app, tmp_path: Path) -> None:
    """Both pipelines must reach the same state object of each symbol.

    The two file sources run concurrently, so how nbbo updates and orders of
    a symbol interleave is not fixed. The check is independent of it: each
    output line carries the symbol's shared ``touches`` counter and how many
    records of the other pipeline the state had seen. Per symbol:

    * the ``touches`` of both outputs together are exactly 1..(nbbo + orders):
      with one state per pipeline each would count from 1 and collide;
    * sorting both outputs by ``touches`` gives the order in which the state
      was reached; replaying it, each nbbo line must report the orders seen so
      far and each order the quotes seen so far, and the order's verdict must
      follow from the quote of the last nbbo line before it (``no-quote`` when
      none), computed here from the input files;
    * within a pipeline, outputs follow the input order (same key, same source).

    Orders for a symbol that never gets a quote are always ``no-quote``.
    """
    rng = random.Random(11)
    symbols = ["AAPL", "MSFT", "GOOG", "AMZN", "TSLA", "IBM", "ORCL", "INTC", "AMD", "NFLX"]
    nbbo_lines, order_lines = [], []
    for _ in range(2000):
        sym = rng.choice(symbols)
        bid = round(rng.uniform(90, 110), 2)
        nbbo_lines.append((sym, bid, round(bid + rng.uniform(0.01, 2.0), 2)))
    for _ in range(2000):
        sym = rng.choice(symbols + ["NOQUOTE"])
        order_lines.append((sym, rng.randint(1, 500), round(rng.uniform(88, 114), 2)))
    nbbo = tmp_path / "nbbo.txt"
    nbbo.write_text("".join(f"{s},{b},{a}\n" for s, b, a in nbbo_lines))
    orders = tmp_path / "orders.txt"
    orders.write_text("".join(f"{s},{q},{p}\n" for s, q, p in order_lines))
    nbbo_out, orders_out = tmp_path / "nbbo_out.txt", tmp_path / "orders_out.txt"
    run_app(
        APPS_DIR / "shared_quotes.py",
        "--nbbo", str(nbbo), "--orders", str(orders),
        "--nbbo-output", str(nbbo_out), "--orders-output", str(orders_out),
        "--batch-size", "50",  # small batches: the two pipelines interleave finely
    ).check()

    nbbo_re = re.compile(r"nbbo (\S+) (\S+) (\S+) touches=(\d+) orders_seen=(\d+)")
    order_re = re.compile(
        r"order (\S+) (\d+) (\S+) (ok|rejected|no-quote) touches=(\d+) nbbo_seen=(\d+)"
    )
    got_nbbo: dict = defaultdict(list)
    got_orders: dict = defaultdict(list)
    for line in nbbo_out.read_text().splitlines():
        m = nbbo_re.fullmatch(line)
        assert m, line
        got_nbbo[m[1]].append((float(m[2]), float(m[3]), int(m[4]), int(m[5])))
    for line in orders_out.read_text().splitlines():
        m = order_re.fullmatch(line)
        assert m, line
        got_orders[m[1]].append((int(m[2]), float(m[3]), m[4], int(m[5]), int(m[6])))
    assert sum(map(len, got_nbbo.values())) == len(nbbo_lines)
    assert sum(map(len, got_orders.values())) == len(order_lines)

    for sym in symbols + ["NOQUOTE"]:
        quotes = [(b, a) for s, b, a in nbbo_lines if s == sym]
        sym_orders = [(q, p) for s, q, p in order_lines if s == sym]
        assert [(b, a) for b, a, _, _ in got_nbbo[sym]] == quotes, sym
        assert [(q, p) for q, p, _, _, _ in got_orders[sym]] == sym_orders, sym
        events = [("nbbo", t, seen, None) for _, _, t, seen in got_nbbo[sym]]
        events += [("order", t, seen, (p, v)) for _, p, v, t, seen in got_orders[sym]]
        events.sort(key=lambda e: e[1])
        assert [e[1] for e in events] == list(range(1, len(quotes) + len(sym_orders) + 1)), sym
        n_quotes = n_orders = 0
        for kind, _touches, seen, order in events:
            if kind == "nbbo":
                assert seen == n_orders, (sym, "orders seen by an nbbo update")
                n_quotes += 1
            else:
                assert seen == n_quotes, (sym, "quotes seen by an order")
                price, verdict = order
                if n_quotes == 0:
                    expected = "no-quote"
                else:
                    bid, ask = quotes[n_quotes - 1]
                    expected = "ok" if bid <= price <= ask else "rejected"
                assert verdict == expected, (sym, price, quotes[n_quotes - 1 : n_quotes])
                n_orders += 1
        if not quotes:
            assert all(v == "no-quote" for _, _, v, _, _ in got_orders[sym])
    assert got_orders["NOQUOTE"], "the generator should have made orders without quotes"


# ---------------------------------------------------------------------------
# dynamic_keys: undeclared str, tuple and u64 partition keys
# ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_dynamic_partition_keys(run_app, tmp_path: Path) -> None:
    rng = random.Random(5)
    names = [f"user{i}" for i in range(40)] + ["ünï", "名前", "a b", ""]
    groups = ["g0", "g1", "g2", "g3"]
    pairs = [(n, g) for n in names for g in groups]
    special = [0, 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
    pool = special + rng.sample(range(2, 2**62), len(pairs) - len(special))
    n_of_pair = dict(zip(pairs, pool))  # one u64 key per pair, 0 is the declared one
    records = []
    for _ in range(6000):
        name, group = rng.choice(pairs)
        records.append((name, group, n_of_pair[(name, group)]))
    src = tmp_path / "records.txt"
    src.write_text("".join(f"{n},{g},{k}\n" for n, g, k in records), encoding="utf-8")
    out = tmp_path / "out.txt"
    run_app(APPS_DIR / "dynamic_keys.py", "--input", str(src), "--output", str(out)).check()

    by_name: Counter = Counter()
    by_pair: Counter = Counter()
    by_n: Counter = Counter()
    expected = []
    for name, group, n in records:
        by_name[name] += 1
        by_pair[(name, group)] += 1
        by_n[n] += 1
        expected.append(f"{name} {group} {n} {by_name[name]} {by_pair[(name, group)]} {by_n[n]}")
    got = out.read_text(encoding="utf-8").splitlines()
    assert len(got) == len(records), "records of undeclared keys were dropped"
    assert sorted(got) == sorted(expected)
    assert {int(line.split(" ")[-4]) for line in got} == set(by_n)


# ---------------------------------------------------------------------------
# stdout sink
# ---------------------------------------------------------------------------

STDOUT_INPUT = "hello world\n# a comment, dropped\nsnow ☃ man\r\n\n  spaced  \nno newline at end"
STDOUT_EXPECTED = "HELLO WORLD\nSNOW ☃ MAN\n\n  SPACED  \nNO NEWLINE AT END\n".encode()


@pytest.mark.timeout(30)
def test_stdout_sink_exact(run_app, tmp_path: Path) -> None:
    src = tmp_path / "lines.txt"
    src.write_bytes(STDOUT_INPUT.encode("utf-8"))
    result = run_app(APPS_DIR / "stdout_upper.py", "--input", str(src)).check()
    assert result.stdout == STDOUT_EXPECTED
    assert "HELLO" not in result.stderr  # logs go to stderr, output only to stdout


@pytest.mark.timeout(30)
def test_stdout_sink_many_lines(run_app, tmp_path: Path) -> None:
    lines = [f"line {i} {'x' * (i % 50)}" for i in range(20000)]
    src = tmp_path / "lines.txt"
    src.write_text("\n".join(lines) + "\n")
    result = run_app(APPS_DIR / "stdout_upper.py", "--input", str(src)).check()
    assert result.stdout == "".join(f"{line.upper()}\n" for line in lines).encode()


# ---------------------------------------------------------------------------
# Runner forms
# ---------------------------------------------------------------------------

DIR_APP_EXPECTED = "".join(
    f"rev:{line[::-1]}\n" for line in ["hello world", "# a comment, dropped", "snow ☃ man", "",
                                       "  spaced  ", "no newline at end"]
).encode()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "form",
    ["py-file", "directory", "module-on-pythonpath", "application-module", "pony-flags"],
)
def test_runner_forms(run_app, app_env, tmp_path: Path, form: str) -> None:
    src = tmp_path / "lines.txt"
    src.write_bytes(STDOUT_INPUT.encode("utf-8"))
    work = tmp_path / "cwd"  # nothing importable here
    work.mkdir()
    no_apps = app_env(apps_on_path=False)
    expected = STDOUT_EXPECTED
    if form == "py-file":
        result = run_app(APPS_DIR / "stdout_upper.py", "--input", str(src), cwd=work, env=no_apps)
    elif form == "directory":
        result = run_app(APPS_DIR / "dir_app", "--input", str(src), cwd=work, env=no_apps)
        expected = DIR_APP_EXPECTED
    elif form == "module-on-pythonpath":
        result = run_app("stdout_upper", "--input", str(src), cwd=work)
    elif form == "application-module":
        result = run_app(
            None,
            "--input", str(src),
            cwd=work,
            argv_prefix=["--application-module", "stdout_upper"],
        )
    else:
        result = run_app(
            None,
            "--ponythreads=1", "--ponynoblock", "--input", str(src), "--ponythreads", "2",
            cwd=work,
            argv_prefix=["--application-module", "stdout_upper"],
        )
    result.check()
    assert result.stdout == expected


def test_runner_help(run_app) -> None:
    result = run_app("--help", timeout=20)
    assert result.returncode == 0
    assert b"--dead-letter" in result.stdout
    assert b"--application-module" in result.stdout


def test_runner_unknown_app_exits_2(run_app, tmp_path: Path) -> None:
    result = run_app("no_such_app_module_xyz", cwd=tmp_path, timeout=20)
    assert result.returncode == 2
    assert "no_such_app_module_xyz" in result.stderr


# ---------------------------------------------------------------------------
# SIGTERM while application code runs
# ---------------------------------------------------------------------------



@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["step", "decoder"])
def test_sigterm_while_busy_exits_0_after_draining(tcp_app, where: str) -> None:
    # Documented: a run with TCP sources ends on SIGTERM, exit 0, after what the
    # connections already sent has gone through. 1000 records take ~2 s here.
    payloads = [f"record {i}".encode() for i in range(1000)]
    app_ctx = tcp_app(
        APPS_DIR / "slow_echo.py", "--in", f"{HOST}:0", f"--slow-{where}", "0.002",
        stop_timeout=10,
    )
    with app_ctx as app:
        ((_, _, in_port),) = app.listening()
        assert send_messages(HOST, in_port, payloads) == 1000
        time.sleep(0.5)  # the application is busy in slow_{where}
    assert app.stdout == b"".join(p + b"\n" for p in payloads)
    assert "bad input" not in app.stderr


@pytest.mark.timeout(90)
def test_second_ctrl_c_during_a_slow_step_is_an_interrupted_stop() -> None:
    """Ctrl-C drains; a second one while a 5 s step runs stops at once: the
    run is reported as interrupted (exit 130, what was read and delivered),
    not as a failure of the step with a KeyboardInterrupt traceback."""
    import signal
    import subprocess
    import sys

    from conftest import RunningApp, app_env

    running = RunningApp(
        [sys.executable, "-m", "wallaroo", str(APPS_DIR / "slow_echo.py"), "--in",
         f"{HOST}:0", "--slow-step", "5"],
        app_env(), None,
    )  # fmt: skip
    try:
        ((_, _, in_port),) = running.wait_listening(1, 30)
        assert send_messages(HOST, in_port, [b"one", b"two", b"three"]) == 3
        deadline = time.monotonic() + 30
        while "accepted from" not in running.stderr and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the first record is in the 5 s step
        running.proc.send_signal(signal.SIGINT)
        while "stopping after what was read" not in running.stderr:
            assert time.monotonic() < deadline, running.stderr
            time.sleep(0.05)
        running.proc.send_signal(signal.SIGINT)
        code = running.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not stop at the second Ctrl-C\n{running.stderr}")
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()
    err = running.stderr
    assert code == 130, err
    assert "the application failed" not in err and "Traceback" not in err, err
    # Named where it struck: in the step (nearly always: it sleeps 5 s) or between records.
    assert re.search(r"stopped at once by a second signal while|stopping at once", err), err
    assert re.search(r"error: interrupted: .*3 records read, 0 outputs delivered", err), err
