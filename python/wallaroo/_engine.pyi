"""Type stub of the Rust extension ``wallaroo._engine`` (private: use the
``wallaroo`` package and ``python -m wallaroo``)."""

from __future__ import annotations

from typing import NoReturn

from wallaroo.contract import Plan, RunOptions

__version__: str

class EngineError(Exception):
    """Base class of errors raised by the wallaroo engine."""

class ConfigError(EngineError):
    """A source, sink or option cannot be set up (bad address, missing file, ...)."""

class StepError(EngineError):
    """User code raised or returned something the engine cannot use; the run stopped."""

class ClusterError(EngineError):
    """The cluster could not form or lost a worker."""

class EmbeddedKafka:
    """A Kafka-protocol broker inside this process (librdkafka's mock cluster)."""

    def __init__(self) -> None: ...
    @property
    def bootstrap_servers(self) -> str:
        """The ``host:port`` clients connect to."""
    def create_topic(self, topic: str, partitions: int = 1) -> None:
        """Create ``topic`` (no-op if it exists)."""

def run(plan: Plan, options: RunOptions) -> dict:
    """Run a plan from ``wallaroo.plan.compile_plan`` with the options of
    ``wallaroo.contract.run_options``; a summary of the run."""

def abort(reason: str) -> None:
    """Stop the running worker with an error naming ``reason``."""

def request_stop(at_once: bool = False) -> None:
    """Ask the running worker to finish what its sources have read and end
    (``at_once``: without finishing; the run is reported as interrupted)."""

def reconfigure(index: int | None, addresses: list[str], names: list[str]) -> None:
    """Announce the cluster's next membership (``index`` None: this worker leaves)."""

def generation() -> int:
    """How many generations (timely instances) this process started in the run."""

def connected_generation() -> int:
    """The last generation whose workers all connected to each other."""

def restart(reason: str) -> NoReturn:
    """Replace this process by a fresh start of its own command line (crash
    recovery: a worker that lost a peer starts again and recovers)."""

def metrics_configure(enabled: bool, name: str, app: str) -> None:
    """Turn metrics on or off and name this worker and the application."""

def metrics_set_cluster(workers: list[tuple[str, str]]) -> None:
    """The cluster's workers as ``(name, data address)`` by index."""

def metrics_serve(
    address: str,
    static_dir: str | None = None,
    everyone: bool = True,
    allowed_hosts: list[str] | None = None,
    previews: bool = False,
) -> str:
    """Serve the metrics on ``address``; the bound ``host:port``. Requests
    whose Host is not an IP literal, localhost or one of ``allowed_hosts``
    are refused; ``previews`` shows recent bad input's payloads on /status."""

def metrics_stop() -> None:
    """Stop every metrics server of this process."""

def metrics_snapshot() -> str:
    """This worker's metrics now, as JSON."""

def metrics_report(name: str, snapshot: str) -> None:
    """Store worker ``name``'s report (JSON from its ``metrics_snapshot``)."""

def metrics_peer_lost(name: str, lost: bool = True) -> None:
    """Worker ``name``'s control connection closed (``lost``) or it finished."""

def metrics_totals() -> dict:
    """Totals over every known worker, for the progress line."""

def metrics_windows(
    stage: str,
    pipeline: str,
    step: str,
    kind: str,
    open: int,
    fired: int,
    late: int,
    watermark: float | None,
    partitions: list[tuple[str, int, int, float, bool]],
) -> None:
    """A window stage's counts, handed over at its timer tick (times in ns)."""
