"""Metrics of a run: where they are served, who reports to whom, the progress line.

The engine keeps the counters and serves them (``src/metrics/``); this
module decides where:

* ``-m/--metrics HOST:PORT`` is the application's one metrics address. The
  initializer (or a single process) serves ``/metrics`` (Prometheus text),
  ``/status`` (JSON) and ``/`` (the live web page) there. Scripts of 0.4.2
  give every worker the same ``-m``: only the initializer binds it, the other
  workers send their metrics to the initializer over the cluster's control
  channel once a second, so the one endpoint shows every worker.
* A host that is not an address of this machine (0.4.2 workers connected
  *out* to a metrics UI, e.g. ``wallaroo_metrics_ui:5001``) is served on that
  port on 127.0.0.1, and the log says so. A busy port falls back to a free
  one. ``-m`` never stops a start.
* Without ``-m`` the initializer (or single process) serves on a free loopback
  port and logs the URL; ``--worker-metrics HOST:PORT`` makes any worker also
  serve its own metrics; ``--no-metrics`` turns serving and the per-step
  measurements off.
* On a terminal the serving process shows a progress line
  (:mod:`wallaroo.progress`); ``--quiet`` turns it off.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wallaroo.progress import Progress

log = logging.getLogger("wallaroo.metrics")

#: The web page's files (packaged with the wheel; no build step, no CDN).
STATIC_DIR = os.path.join(os.path.dirname(os.path.realpath(__file__)), "ui_static")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The runner's metrics and progress flags (``-m`` is a 0.4.2 flag, in the runner)."""
    group = parser.add_argument_group("metrics and progress")
    group.add_argument(
        "--worker-metrics",
        metavar="HOST:PORT",
        help="this worker also serves its own metrics (/metrics, /status, /) there",
    )
    group.add_argument(
        "--no-metrics",
        action="store_true",
        help="serve no metrics and skip the per-step measurements (plain counters stay)",
    )
    group.add_argument(
        "--bad-input-previews",
        action="store_true",
        help="show the first 200 characters of recent bad input on /status and the web page "
        "(off: only where it came from, its kind and the error; anyone who can reach the "
        "metrics address can read /status)",
    )
    group.add_argument(
        "--quiet",
        action="store_true",
        help="no progress line on the terminal",
    )


def split_address(address: str) -> tuple:
    """``host:port`` -> ``(host, port)``; ValueError when it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port, got {address!r}")
    host = host.strip("[]")
    return host, int(port)


def is_local(host: str) -> bool:
    """Whether ``host`` names an address this machine can listen on."""
    if host in ("", "0.0.0.0", "::"):
        return True
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    for family, _type, _proto, _name, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.bind((sockaddr[0], 0))
            return True
        except OSError:
            continue
    return False


def bind_address(spec: str | None, flag: str = "-m/--metrics") -> str:
    """Where to listen for ``spec``: itself when local, else its port on 127.0.0.1."""
    if not spec:
        return "127.0.0.1:0"
    try:
        host, port = split_address(spec)
    except ValueError as err:
        log.warning("%s: %s; serving metrics on a free loopback port", flag, err)
        return "127.0.0.1:0"
    if is_local(host):
        return f"[{host}]:{port}" if ":" in host else f"{host or '0.0.0.0'}:{port}"
    log.info(
        "%s %s: %s is not an address of this host; serving metrics on 127.0.0.1:%d instead",
        flag,
        spec,
        host,
        port,
    )
    return f"127.0.0.1:{port}"


def listening_on(bound: str) -> str:
    """Where a bound ``host:port`` really accepts connections, for the log."""
    host, port = split_address(bound)
    if host in ("0.0.0.0", "::"):
        return f"every interface of this host, port {port}"
    return bound


def is_loopback(bound: str) -> bool:
    """Whether the ``host:port`` a server listens on is reachable from this
    machine only."""
    host = split_address(bound)[0]
    return host == "localhost" or host.startswith("127.") or host == "::1"


def allowed_hosts(spec: str | None, address: str = "") -> list:
    """Host names the server listening on ``address`` answers to besides IP
    literals and localhost (a browser's page on another name -- DNS
    rebinding -- is refused): the host ``-m`` names and this machine's names.
    Its fully qualified name only when ``address`` is not loopback (the
    default): a browser could reach the server by that name only then, and
    finding it out can take a DNS round trip at every start."""
    names = {socket.gethostname()}
    if not address or not is_loopback(address):
        names.add(socket.getfqdn())
    if spec:
        with contextlib.suppress(ValueError):
            names.add(split_address(spec)[0])
    return sorted(name for name in names if name)


def url_of(bound: str) -> str:
    """The URL of a bound ``host:port`` (any-address binds shown as 127.0.0.1)."""
    host, port = split_address(bound)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


class Observer:
    """Metrics of one run of the runner: configure, serve, report, show progress."""

    def __init__(self, opts: argparse.Namespace, app_name: str) -> None:
        self.opts = opts
        self.app_name = app_name
        self.urls: list = []
        self.progress: Progress | None = None
        self.started = False

    @property
    def enabled(self) -> bool:
        return not getattr(self.opts, "no_metrics", False)

    def start(self, members: Any = None) -> None:
        """Before the engine runs (after the cluster formed, when there is one)."""
        from wallaroo import _engine

        membership = getattr(members, "membership", None)
        if membership is not None:
            name = membership.names[membership.index]
        else:
            name = self.opts.name or "initializer"
        _engine.metrics_configure(self.enabled, name, self.app_name)
        self.started = True
        if membership is not None:
            _engine.metrics_set_cluster(list(zip(membership.names, membership.addresses)))
        if not self.enabled:
            if self.opts.metrics or self.opts.worker_metrics:
                log.warning("--no-metrics: metrics are not served (-m / --worker-metrics ignored)")
            return
        serves = membership is None or membership.index == 0
        if serves:
            self._serve(self.opts.metrics, everyone=True, flag="-m/--metrics")
        elif self.opts.metrics:
            log.debug("metrics at %s are served by the initializer", self.opts.metrics)
        if self.opts.worker_metrics:
            self._serve(self.opts.worker_metrics, everyone=False, flag="--worker-metrics")
        if members is not None and not serves:
            members.report(self.report_message)
        if serves and not self.opts.quiet and _is_tty(sys.stderr):
            from wallaroo.progress import Progress

            self.progress = Progress(_engine.metrics_totals)
            self.progress.start()

    def _serve(self, spec: str | None, everyone: bool, flag: str) -> None:
        from wallaroo import _engine

        address = bind_address(spec, flag)
        hosts = allowed_hosts(spec, address)
        previews = bool(getattr(self.opts, "bad_input_previews", False))
        try:
            bound = _engine.metrics_serve(address, STATIC_DIR, everyone, hosts, previews)
        except OSError as err:
            fallback = "127.0.0.1:0"
            log.warning("%s; serving on a free loopback port instead", err)
            try:
                bound = _engine.metrics_serve(fallback, STATIC_DIR, everyone,
                                              allowed_hosts(spec, fallback), previews)
            except OSError as err2:
                log.warning("metrics are not served: %s", err2)
                return
        url = url_of(bound)
        self.urls.append(url)
        what = "metrics" if everyone else "this worker's metrics"
        log.info("%s: %s (Prometheus %smetrics, JSON %sstatus); listening on %s", what, url,
                 url, url, listening_on(bound))

    def report_message(self) -> dict:
        """What a worker sends the initializer every second."""
        from wallaroo import _engine

        return {"type": "metrics", "snapshot": _engine.metrics_snapshot()}

    def on_peer_message(self, name: str, message: dict) -> None:
        """A control-channel message from worker ``name`` (at the initializer)."""
        if not self.started:
            return
        from wallaroo import _engine

        kind = message.get("type")
        if kind == "metrics" and isinstance(message.get("snapshot"), str):
            try:
                _engine.metrics_report(name, message["snapshot"])
            except ValueError as err:
                log.debug("worker %r: %s", name, err)
        elif kind == "lost":
            _engine.metrics_peer_lost(name, True)

    def stop(self) -> None:
        """After the run: clear the progress line, stop serving."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.urls:
            from wallaroo import _engine

            _engine.metrics_stop()
            self.urls = []


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
