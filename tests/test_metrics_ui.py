"""The metrics web page in a real headless Chromium (``tests/browser.py``,
installed by ``make browser``) while an application runs: within seconds the
charts show non-zero throughput and latency, the steps table and the workers
table fill in, and the dead-letter counts show the bad input. The page writes
what it shows to ``data-*`` attributes, which is what the assertions read. A
screenshot goes to ``artifacts/<test name>/metrics.png``.

Without Chromium these tests fail, unless ``WALLAROO_SKIP_BROWSER=1``.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from browser import require_chromium
from test_metrics import APP, HOST, metrics_url, numbers, running
from test_window_metrics import TCP_EVENT_APP, Events
from wallaroo.sender import send_messages

pytestmark = pytest.mark.timeout(120)




@contextmanager
def flowing(port: int, rate: float, seconds: float) -> Iterator[None]:
    """Send numbers (and two bad frames) at ``rate`` a second on a thread."""
    count = int(rate * seconds)

    def payloads() -> Iterator[bytes]:
        yield from numbers(count // 2)
        yield from numbers(0, bad=2)
        yield from (str(i).encode() for i in range(count // 2, count))

    sender = threading.Thread(
        target=lambda: send_messages(HOST, port, payloads(), rate=rate), daemon=True
    )
    sender.start()
    try:
        yield
    finally:
        sender.join(seconds + 30)


def number(browser: object, expression: str) -> float:
    value = browser.evaluate(expression)  # type: ignore[attr-defined]
    return float(value or 0)


@pytest.mark.parametrize("workers", [1, 2])
def test_page_shows_live_charts_while_an_app_runs(
    tmp_path: Path, artifacts: Path, workers: int
) -> None:
    chromium = require_chromium()
    from browser import Browser

    cluster = ["--workers", str(workers)] if workers > 1 else []
    out = tmp_path / "out.txt"
    with running(APP, "--in", f"{HOST}:0", "--output", str(out), *cluster) as app:
        url = metrics_url(app)
        ((_, _, in_port),) = app.listening()
        with flowing(in_port, rate=3000, seconds=12), Browser(chromium) as browser:
            browser.open(url)
            browser.evaluate("window.notReloaded = true")
            ready = (
                "(m => Number(m.dataset.recordsPerSecond) > 0"
                " && Number(m.dataset.badInput) === 2"
                f" && Number(m.dataset.workers) === {workers}"
                " && Number(document.getElementById('chart-throughput').dataset.max) > 0"
                " && Number(document.getElementById('chart-latency').dataset.max) > 0"
                " && Number(document.getElementById('chart-workers').dataset.points) > 0"
                " && Number(document.getElementById('chart-steps').dataset.max) > 0"
                ")(document.getElementById('app'))"
            )
            browser.wait_for(ready, timeout=20)
            # Still the same page: it updated without a reload.
            assert browser.evaluate("window.notReloaded") is True
            rate = number(browser, "document.getElementById('app').dataset.recordsPerSecond")
            assert 300 < rate < 30000, rate
            p99 = number(browser, "document.getElementById('app').dataset.latencyP99")
            assert 0 < p99 < 5, p99
            steps = browser.evaluate(
                "[...document.querySelectorAll('#steps tr.step')]"
                ".map(r => [r.dataset.step, Number(r.dataset.recordsIn)])"
            )
            assert [name for name, _ in steps] == ["decoder", "keep even", "count", "encoder"]
            assert all(count > 0 for _, count in steps), steps
            names = browser.evaluate(
                "[...document.querySelectorAll('#workers tbody tr')].map(r => r.dataset.worker)"
            )
            expected = ["initializer"] if workers == 1 else ["worker-0", "worker-1"]
            assert names == expected
            kinds = browser.evaluate(
                "[...document.querySelectorAll('#bad-kinds .chip')]"
                ".map(c => [c.dataset.kind, Number(c.dataset.count)])"
            )
            assert kinds == [["decode_error", 2]]
            assert browser.evaluate("document.querySelectorAll('#bad-recent tbody tr').length") == 2
            # Without --bad-input-previews the page shows each payload's
            # length and says the preview is off (b"not a number 0": 14 bytes).
            hidden = browser.evaluate(
                "[...document.querySelectorAll('#bad-recent tbody tr')]"
                ".map(r => r.lastElementChild.textContent)"
            )
            assert hidden == ["14 bytes · preview off (--bad-input-previews)"] * 2, hidden
            facts = browser.evaluate("document.querySelector('#steps tr.pipeline').textContent")
            assert "0 skipped after errors" in facts and "0 not delivered" in facts, facts
            assert "sink errors" not in browser.evaluate("document.body.textContent")
            # The two kinds of failed records have a tile each, labelled by what they count.
            tiles = browser.evaluate(
                "['tile-errors', 'tile-undelivered'].map(id => {"
                " const v = document.getElementById(id);"
                " return [v.previousElementSibling.textContent, v.textContent]; })"
            )
            assert tiles == [["skipped after errors", "0"], ["not delivered", "0"]], tiles
            # No window stage: no Windows panel.
            assert browser.evaluate("document.getElementById('windows-panel').hidden") is True
            tiles = browser.evaluate("document.getElementById('tile-rate').textContent")
            assert tiles not in ("", "–", "0")
            browser.screenshot(artifacts / "metrics.png")
            (artifacts / "metrics.html").write_text(browser.dom())
    png = (artifacts / "metrics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1280, 900)
    assert len(png) > 20_000  # charts and tables, not a blank page


@pytest.mark.parametrize("workers", [1, 2])
def test_the_windows_panel_shows_open_and_fired_windows_and_the_watermark(
    tmp_path: Path, artifacts: Path, workers: int
) -> None:
    """An event-time app (``tcp_event_windows_06.py``): the panel shows what
    the events sent make of the stage (see ``test_window_metrics.Events``): on
    one worker the windows the watermark made due fired and the rest are open;
    on two, the last events make every worker fire all but their own windows,
    and the panel shows the sums, then each worker."""
    chromium = require_chromium()
    from browser import Browser

    events = Events(2000, 20, seed=29)
    if workers == 1:
        payloads, watermark_ms = events.payloads, events.watermark_ms
        fired = len(events.due(watermark_ms))
        expected = [len(events.windows) - fired, fired, len(events.late)]
    else:
        payloads, watermark_ms = events.payloads + events.flush, events.flush_ms
        expected = [2 * len(events.flush), len(events.windows), len(events.late)]
    cluster = ["--workers", str(workers)] if workers > 1 else []
    out = tmp_path / "windows.txt"
    with running(str(TCP_EVENT_APP), "--in", f"{HOST}:0", "--output", str(out), *cluster) as app:
        url = metrics_url(app)
        ((_, _, in_port),) = app.listening()
        assert send_messages(HOST, in_port, payloads) == len(payloads)
        with Browser(chromium) as browser:
            browser.open(url)
            row = "document.querySelector('#windows tr.window-stage')"
            counts = "[r.dataset.open, r.dataset.fired, r.dataset.late].map(Number)"
            shown = f"JSON.stringify((r => r ? {counts} : [])({row}))"
            want = json.dumps(json.dumps(expected, separators=(",", ":")))
            browser.wait_for(f"{shown} === {want}", timeout=60)
            assert browser.evaluate("document.getElementById('windows-panel').hidden") is False
            cells = browser.evaluate(f"[...{row}.cells].map(c => c.textContent)")
            total = "initializer" if workers == 1 else "all workers"
            assert cells[:2] == ["Events / Ids event time", total], cells
            assert [int(c.replace(",", "")) for c in cells[2:5]] == expected, cells
            watermark = number(browser, f"{row}.dataset.watermark")
            assert watermark == pytest.approx(watermark_ms / 1000, abs=1e-3)
            # The event times started a minute before the run: the watermark lags the clock.
            lag = number(browser, f"{row}.dataset.watermarkLag")
            assert lag > 40, lag
            per_worker = browser.evaluate(
                "[...document.querySelectorAll('#windows tr.window')]"
                ".map(r => [r.dataset.worker, Number(r.dataset.fired)])"
            )
            if workers == 1:
                assert per_worker == []
                assert cells[7] == "0" and cells[8].startswith("Events 0/"), cells
            else:
                assert [name for name, _ in per_worker] == ["worker-0", "worker-1"]
                assert sum(fired for _, fired in per_worker) == expected[1]
            browser.evaluate("document.getElementById('windows-panel').scrollIntoView()")
            browser.screenshot(artifacts / "windows.png")
            (artifacts / "windows.html").write_text(browser.dom())
