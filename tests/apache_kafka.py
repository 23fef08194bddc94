"""Apache Kafka itself for the tests: the broker's jars from Maven Central, one
KRaft single-node broker per test session (per xdist worker).

Why: the brokers that need no JVM (tansu, librdkafka's mock cluster,
``tests/kafka_broker.py``) have no read_committed isolation, lose their data on
restart, report wrong high watermarks and have no TLS/SASL listeners. Tests that
prove those things use this broker.

Jars: ``tests/kafka/pom.xml`` names ``org.apache.kafka:kafka_2.13`` (the broker,
main class ``kafka.Kafka``, storage tool ``kafka.tools.StorageTool``),
``kafka-tools`` (``kafka-consumer-groups``) and a log4j2 binding.
:func:`kafka_jars` copies them with ``mvn dependency:copy-dependencies`` into
``target/apache-kafka/<version>/`` once (Maven keeps its own cache in ``~/.m2``);
later sessions use the copy. Needs ``java`` (17 or later) and ``mvn`` on PATH.

The broker (:class:`ApacheKafka`) listens on free loopback ports:

``PLAINTEXT``
    :attr:`ApacheKafka.bootstrap`, what most tests use;
``SSL``
    :attr:`ApacheKafka.ssl_bootstrap`, a server certificate for 127.0.0.1 signed by
    a CA made at start-up with the ``openssl`` command (:attr:`ApacheKafka.ca_file`);
``SASL_PLAINTEXT``
    :attr:`ApacheKafka.sasl_bootstrap`, SASL/SCRAM-SHA-512; the user
    :data:`SCRAM_USER` / :data:`SCRAM_PASSWORD` is created by the format step
    (``--add-scram``);
``CONTROLLER``
    the KRaft controller (same process: ``process.roles=broker,controller``).

Its log directory survives :meth:`ApacheKafka.kill` + :meth:`ApacheKafka.start`
(a restart keeps the data). The JVM gets ``-Xmx512m``.

xdist: every worker process starts its own broker on first use (lazily, so a worker
that runs no test of this broker starts none). Sharing one broker across workers
would save a JVM (about 300 MB, a start of several seconds) but the broker-restart
test kills the broker, which would break the other worker's tests meanwhile.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from subprocess import CompletedProcess

from kafka_broker import HOST, BrokerClients, _die_with_parent, free_port

TESTS_DIR = Path(__file__).resolve().parent
POM = TESTS_DIR / "kafka" / "pom.xml"
CACHE = TESTS_DIR.parent / "target" / "apache-kafka"
#: A modest heap; C1 only (TieredStopAtLevel=1) halves the start on a loaded machine.
JVM_OPTIONS = ["-Xmx512m", "-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
               "-Djava.awt.headless=true"]  # fmt: skip
SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_USER = "wallaroo"
SCRAM_PASSWORD = "wallaroo-secret"
JAAS = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
#: What the broker logs when it is up (kafka.server.BrokerServer).
STARTED = "Kafka Server started"


def kafka_version() -> str:
    """The Kafka version ``tests/kafka/pom.xml`` names."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    found = ET.parse(POM).getroot().find("m:properties/m:kafka.version", ns)
    assert found is not None and found.text, f"no kafka.version in {POM}"
    return found.text.strip()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def kafka_jars() -> Path:
    """The directory holding the broker's jars, resolved with Maven on first use.

    Raises :class:`RuntimeError` with Maven's output when resolving fails.
    """
    version = kafka_version()
    target = CACHE / version
    done = target / ".complete"
    if done.exists():
        return target
    with _file_lock(CACHE / f".{version}.lock"):  # xdist workers resolve once
        if done.exists():
            return target
        mvn = shutil.which("mvn")
        if mvn is None or shutil.which("java") is None:
            raise RuntimeError("Apache Kafka for the tests needs java (17+) and mvn on PATH")
        staging = CACHE / f".{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
               f"-DoutputDirectory={staging}"]  # fmt: skip
        done_run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if done_run.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            raise RuntimeError(
                f"resolving Apache Kafka {version} failed: {' '.join(cmd)}\n"
                f"{done_run.stdout[-4000:]}\n{done_run.stderr[-4000:]}"
            )
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        done.write_text(version + "\n")
    return target


def java(jars: Path, main: str, *args: str, timeout: float = 180.0, **kw) -> CompletedProcess:
    """Run ``main`` (a class in the Kafka jars) to completion; output captured."""
    return subprocess.run(
        ["java", *JVM_OPTIONS, "-cp", f"{jars}/*", main, *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw,
    )  # fmt: skip


def _kafka_uuid() -> str:
    """A random Kafka UUID (what ``kafka-storage random-uuid`` prints). Like
    Kafka's own ``Uuid.randomUuid``, never one that starts with ``-``: the
    storage tool would take it for an option (1 start in 64 failed so)."""
    while True:
        uuid = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not uuid.startswith("-"):
            return uuid


def make_certificates(directory: Path) -> tuple[Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it, made with
    ``openssl``. Returns ``(ca.pem, server.pem)``; ``server.pem`` holds the server's
    unencrypted PKCS#8 key followed by its certificate and the CA's (what Kafka's
    PEM keystore reads)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=wallaroo test CA", "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext",
            "-out", "server.crt")  # fmt: skip
    openssl("pkcs8", "-topk8", "-nocrypt", "-in", "server.key", "-out", "server.p8")
    server = directory / "server.pem"
    server.write_text(
        "".join((directory / n).read_text() for n in ("server.p8", "server.crt", "ca.pem"))
    )
    return directory / "ca.pem", server


class ApacheKafka(BrokerClients):
    """One Apache Kafka broker (KRaft, broker and controller in one JVM) in its own
    temporary directory; see the module docstring for its listeners."""

    def __init__(self, start_timeout: float = 180.0) -> None:
        self.start_timeout = start_timeout
        self.jars = kafka_jars()
        self.version = kafka_version()
        self.workdir = Path(tempfile.mkdtemp(prefix="apache-kafka-"))
        self.ports = {name: free_port() for name in ("PLAINTEXT", "SSL", "SASL", "CONTROLLER")}
        self.ca_file, self.server_pem = make_certificates(self.workdir)
        self.config_file = self.workdir / "server.properties"
        self.config_file.write_text(self._properties())
        log4j2 = LOG4J2.format(log=self.workdir / "broker.log")
        (self.workdir / "log4j2.properties").write_text(log4j2)
        self.proc: subprocess.Popen | None = None
        self._log_offset = 0
        #: Seconds of the storage format step and of the last start (spawn to a metadata answer).
        self.format_seconds = self._format()
        self.startup_seconds: float | None = None

    # -- addresses and client settings -----------------------------------------

    @property
    def bootstrap(self) -> str:  # type: ignore[override]
        """``host:port`` of the PLAINTEXT listener."""
        return f"{HOST}:{self.ports['PLAINTEXT']}"

    @property
    def ssl_bootstrap(self) -> str:
        return f"{HOST}:{self.ports['SSL']}"

    @property
    def sasl_bootstrap(self) -> str:
        return f"{HOST}:{self.ports['SASL']}"

    def ssl_settings(self) -> dict:
        """librdkafka settings for the TLS listener (besides ``bootstrap.servers``)."""
        return {"security.protocol": "ssl", "ssl.ca.location": str(self.ca_file)}

    def sasl_settings(self, password: str = SCRAM_PASSWORD) -> dict:
        """librdkafka settings for the SASL/SCRAM listener."""
        return {
            "security.protocol": "sasl_plaintext",
            "sasl.mechanism": SCRAM_MECHANISM,
            "sasl.username": SCRAM_USER,
            "sasl.password": password,
        }

    # -- life cycle ------------------------------------------------------------

    def _properties(self) -> str:
        p = self.ports
        return PROPERTIES.format(
            plaintext=p["PLAINTEXT"], ssl=p["SSL"], sasl=p["SASL"], controller=p["CONTROLLER"],
            host=HOST, logs=self.workdir / "data", keystore=self.server_pem,
            mechanism=SCRAM_MECHANISM, jaas=JAAS,
        )  # fmt: skip

    def _format(self) -> float:
        started = time.monotonic()
        scram = f"{SCRAM_MECHANISM}=[name={SCRAM_USER},password={SCRAM_PASSWORD}]"
        done = java(self.jars, "kafka.tools.StorageTool", "format", "-t", _kafka_uuid(),
                    "-c", str(self.config_file), "--add-scram", scram,
                    env=self._env())  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"kafka-storage format failed:\n{done.stdout}\n{done.stderr}")
        return time.monotonic() - started

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "JAVA_TOOL"))}
        env["LOG_DIR"] = str(self.workdir)
        return env

    def log(self) -> str:
        """What the broker logged (all its starts)."""
        path = self.workdir / "broker.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> ApacheKafka:
        """Start the broker on the stored data and wait until it answers."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("broker already running")
        started = time.monotonic()
        log = self.workdir / "broker.log"
        self._log_offset = log.stat().st_size if log.exists() else 0
        with open(self.workdir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                ["java", *JVM_OPTIONS,
                 f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
                 "-cp", f"{self.jars}/*", "kafka.Kafka", str(self.config_file)],
                cwd=self.workdir, env=self._env(), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )  # fmt: skip
        self._wait_ready(started)
        self.startup_seconds = time.monotonic() - started
        return self

    def _wait_ready(self, started: float) -> None:
        from confluent_kafka.admin import AdminClient

        assert self.proc is not None
        deadline = started + self.start_timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if STARTED in self.log()[self._log_offset :]:
                try:
                    if admin.list_topics(timeout=2).brokers:
                        return
                except Exception:
                    pass
            time.sleep(0.1)
        code = self.proc.poll()
        self.kill()
        stdout = (self.workdir / "stdout.log").read_text(errors="replace")
        raise RuntimeError(
            f"Apache Kafka did not start in {self.start_timeout} s (exit code {code}):\n"
            f"{self.log()[-6000:]}\n{stdout[-3000:]}"
        )

    def kill(self) -> None:
        """SIGKILL the broker (its data stays: :meth:`start` goes on from it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Shut the broker down cleanly (SIGTERM) and remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def rss_mb(self) -> float:
        """The broker's resident memory now, in MB."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    def read_all(self, topic: str, config: dict | None = None, timeout: float = 60.0) -> list:
        """Every record of ``topic`` up to its end offsets now (``config`` adds
        consumer settings, e.g. ``isolation.level``), partition by partition in
        offset order. Apache Kafka's end offsets are right (unlike tansu's), so
        this stops at the end instead of after a count or a timeout."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer(
            self.client_config(
                {"group.id": f"read-{uuid.uuid4().hex}", "enable.auto.commit": False,
                 **(config or {})}
            )
        )  # fmt: skip
        try:
            md = consumer.list_topics(topic, timeout=10).topics[topic]
            parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(md.partitions)]
            marks = {p.partition: consumer.get_watermark_offsets(p, timeout=10) for p in parts}
            ends = {p: high for p, (_, high) in marks.items()}
            # An empty partition (or one whose records are all deleted) has no
            # position until a record comes: it is done from the start.
            empty = {p for p, (low, high) in marks.items() if high <= low}
            consumer.assign(parts)
            out: dict = {p: [] for p in ends}
            deadline = time.monotonic() + timeout
            while True:
                for msg in consumer.consume(10000, timeout=0.2):
                    if msg.error() is None:
                        out[msg.partition()].append(msg)
                done = all(
                    tp.partition in empty or tp.offset >= ends[tp.partition]
                    for tp in consumer.position(parts)
                )
                if done:
                    return [m for p in sorted(out) for m in out[p]]
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topic}: not at the end offsets {ends} in {timeout} s")
        finally:
            consumer.close()

    # -- Kafka's own tools -------------------------------------------------------

    def consumer_groups(self, *args: str) -> str:
        """Run ``kafka-consumer-groups --bootstrap-server PLAINTEXT ARGS`` and return its
        output (raises on a non-zero exit)."""
        done = java(self.jars, "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                    "--bootstrap-server", self.bootstrap, *args, env=self._env())  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"kafka-consumer-groups {args}: {done.stdout}\n{done.stderr}")
        return done.stdout


PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller}
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://{host}:{plaintext},SSL://{host}:{ssl},SASL_PLAINTEXT://{host}:{sasl},CONTROLLER://{host}:{controller}
advertised.listeners=PLAINTEXT://{host}:{plaintext},SSL://{host}:{ssl},SASL_PLAINTEXT://{host}:{sasl}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={logs}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
sasl.enabled.mechanisms={mechanism}
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={jaas}
"""

LOG4J2 = """\
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""
