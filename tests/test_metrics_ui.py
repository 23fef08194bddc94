"""The metrics web page in a real headless Chromium (``tests/browser.py``,
installed by ``make browser``) while an application runs: within seconds the
charts show non-zero throughput and latency, the steps table and the workers
table fill in, and the dead-letter counts show the bad input. The page writes
what it shows to ``data-*`` attributes, which is what the assertions read. A
screenshot goes to ``artifacts/<test name>/metrics.png``.

Without Chromium these tests fail, unless ``WALLAROO_SKIP_BROWSER=1``.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from browser import require_chromium
from test_metrics import APP, HOST, metrics_url, numbers, running
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
            # Without --bad-input-previews the page says why payloads are not shown.
            hidden = browser.evaluate(
                "[...document.querySelectorAll('#bad-recent tbody tr')]"
                ".map(r => r.lastElementChild.textContent)"
            )
            assert hidden == ["hidden (--bad-input-previews shows it)"] * 2, hidden
            facts = browser.evaluate("document.querySelector('#steps tr.pipeline').textContent")
            assert "0 not delivered" in facts, facts
            tiles = browser.evaluate("document.getElementById('tile-rate').textContent")
            assert tiles not in ("", "–", "0")
            browser.screenshot(artifacts / "metrics.png")
            (artifacts / "metrics.html").write_text(browser.dom())
    png = (artifacts / "metrics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1280, 900)
    assert len(png) > 20_000  # charts and tables, not a blank page
