"""Headless Chromium for the UI tests (``make browser`` installs it).

Chromium runs with ``--headless=new --no-sandbox --disable-gpu`` and is driven
over the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands on
its fd 3, answers on its fd 4, NUL-separated JSON), with the standard library
only.

Why not ``--virtual-time-budget=MS --dump-dom URL``: virtual time stands still
while a network fetch is pending, and a Server-Sent Events stream is a fetch
that never ends, so on a live page that command never returns. Over the
protocol the page runs in real time; we wait until the page is ready (or a
JavaScript condition holds), then read the DOM and take the screenshot in the
same session.

* :func:`find_chromium` -- the binary, or None;
* :func:`render` -- load a URL, wait, save a PNG screenshot, return the DOM;
* :class:`Browser` -- a session for tests that interact with a live page.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

#: Names the Chromium binary goes by (Debian's package installs ``chromium``).
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Window size of the screenshots.
WINDOW_SIZE = (1280, 900)
#: Seconds one protocol command may take.
COMMAND_TIMEOUT = 15.0


class BrowserError(RuntimeError):
    """Chromium failed to start, answered with an error, or timed out."""


def find_chromium() -> str | None:
    """The Chromium binary: ``$CHROMIUM`` if set, else the first of
    :data:`CHROMIUM_NAMES` on ``PATH``; None if there is none."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return shutil.which(explicit)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _high_fd(fd: int) -> int:
    """A close-on-exec duplicate of ``fd`` numbered 10 or more (``fd`` is closed),
    so that placing the pipes on fds 3 and 4 in the child cannot clobber them."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Browser:
    """One headless Chromium with one page, driven over the DevTools pipe.

    Use as a context manager::

        with Browser() as browser:
            browser.open(url)
            browser.wait_for("document.querySelectorAll('tr').length > 3")
            html = browser.dom()
            browser.screenshot(path)
    """

    def __init__(
        self, binary: str | None = None, window_size: tuple[int, int] = WINDOW_SIZE
    ) -> None:
        binary = binary or find_chromium()
        if binary is None:
            raise BrowserError("chromium not found on PATH: run `make browser`")
        self._profile = tempfile.TemporaryDirectory(prefix="wallaroo-chromium-")
        self._log = tempfile.TemporaryFile()
        to_child_r, self._to_child = (_high_fd(fd) for fd in os.pipe())
        self._from_child, from_child_w = (_high_fd(fd) for fd in os.pipe())

        def place_pipes() -> None:  # in the child, before exec
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        args = [
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            f"--window-size={window_size[0]},{window_size[1]}",
            f"--user-data-dir={self._profile.name}",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--mute-audio",
            "about:blank",
        ]
        try:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                close_fds=False,  # every other fd of ours is close-on-exec (PEP 446)
                preexec_fn=place_pipes,
            )
        except OSError:
            for fd in (to_child_r, from_child_w, self._to_child, self._from_child):
                os.close(fd)
            raise
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None
        try:
            target = self._command("Target.createTarget", {"url": "about:blank"})["targetId"]
            attached = self._command("Target.attachToTarget", {"targetId": target, "flatten": True})
            self._session = attached["sessionId"]
            self._command("Page.enable")
            self._command("Runtime.enable")
            width, height = window_size
            self._command(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def log(self) -> str:
        """What Chromium printed so far (for failure messages)."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def _read_message(self, deadline: float) -> dict:
        """The next NUL-terminated JSON message from Chromium."""
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError("timed out waiting for Chromium")
            ready, _, _ = select.select([self._from_child], [], [], remaining)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium exited; its log:\n{self.log()[-3000:]}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _command(self, method: str, params: dict | None = None) -> dict:
        """Send one protocol command to the page and return its result."""
        self._next_id += 1
        request: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self._session is not None:
            request["sessionId"] = self._session
        os.write(self._to_child, json.dumps(request).encode() + b"\0")
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while True:
            message = self._read_message(deadline)
            if message.get("id") != self._next_id:
                continue  # an event, or the answer to an abandoned command
            if "error" in message:
                raise BrowserError(f"{method}: {message['error']}")
            return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self._command(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, timeout: float = 15.0) -> None:
        """Navigate to ``url`` and wait until it has loaded."""
        navigated = self._command("Page.navigate", {"url": url})
        if navigated.get("errorText"):
            raise BrowserError(f"cannot open {url}: {navigated['errorText']}")
        self.wait_for("document.readyState === 'complete'", timeout)

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() >= deadline:
                raise BrowserError(f"timed out after {timeout} s waiting for {expression!r}")
            time.sleep(0.05)

    def dom(self) -> str:
        """The page's current DOM, serialized (what ``--dump-dom`` prints)."""
        return self.evaluate("document.documentElement.outerHTML")

    def screenshot(self, path: Path | str) -> Path:
        """Save a PNG of the window; returns the path (parent dirs are created)."""
        data = self._command("Page.captureScreenshot", {"format": "png"})["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Close Chromium and clean up its profile."""
        if self._proc.poll() is None:
            try:
                self._session = None
                self._command("Browser.close")
            except (BrowserError, OSError):
                pass
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
        self._profile.cleanup()


def render(
    url: str,
    screenshot_path: Path | str,
    wait_ms: int = 1000,
    until: str | None = None,
    timeout: float = 15.0,
) -> str:
    """Load ``url`` in headless Chromium and return its DOM after scripts ran.

    Waits for the load, then ``wait_ms`` milliseconds, then (if given) until
    the JavaScript expression ``until`` is truthy; saves a 1280x900 PNG
    screenshot at ``screenshot_path``.
    """
    with Browser() as browser:
        browser.open(url, timeout)
        time.sleep(wait_ms / 1000)
        if until is not None:
            browser.wait_for(until, timeout)
        html = browser.dom()
        browser.screenshot(screenshot_path)
        return html


def require_chromium() -> str:
    """The headless Chromium binary. Without it the calling test fails (not an
    error in a fixture, not a silent skip), unless WALLAROO_SKIP_BROWSER=1."""
    import pytest

    binary = find_chromium()
    if binary is None:
        if os.environ.get("WALLAROO_SKIP_BROWSER") == "1":
            pytest.skip("no Chromium and WALLAROO_SKIP_BROWSER=1")
        pytest.fail(
            "headless Chromium is not installed: run `make browser` "
            "(or set WALLAROO_SKIP_BROWSER=1 to skip the UI tests)",
            pytrace=False,
        )
    return binary
