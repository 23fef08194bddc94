"""Static checks of ``docker-compose.yaml`` and ``Dockerfile`` (no Docker engine here).

The compose file runs the star leaders example as the original did: Kafka, an archive
streamer, a primary worker (cluster initializer), a secondary worker that joins it,
and a dashboard. These tests check that everything it names exists in the repository
and that the worker commands are ones the runner and the app's argument helpers read
as intended.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import wallaroo
import yaml
from wallaroo import runner

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yaml"
PACKAGE = ROOT / "python" / "wallaroo"

#: Modules the compose file runs that are still being written. Each is an
#: xfail(strict=True): once the module lands, remove it from here.
MODULES_NOT_YET_WRITTEN: set = set()
#: Applications (``python -m wallaroo APP``) not in the package yet, same rule.
APPS_NOT_YET_WRITTEN: set = set()

#: The star leaders app's own flags (read by its argument helpers, not the runner).
APP_FLAGS = {
    "--kafka_source_topic",
    "--kafka_source_brokers",
    "--kafka_source_log_level",
    "--kafka_sink_topic",
    "--kafka_sink_brokers",
    "--kafka_sink_log_level",
    "--kafka_sink_max_produce_buffer_ms",
    "--kafka_sink_max_message_size",
}


def _load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


COMPOSE_DATA = _load()
SERVICES: dict = COMPOSE_DATA["services"]


def command_of(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]


def python_module(cmd: list[str]) -> str | None:
    """``X`` of a ``python -m X ...`` command, else None."""
    if len(cmd) >= 3 and re.fullmatch(r"python3?(\.\d+)?", cmd[0]) and cmd[1] == "-m":
        return cmd[2]
    return None


def module_file(module: str) -> Path | None:
    """The file of ``wallaroo.X`` (or of ``wallaroo`` run as ``-m``) in python/wallaroo."""
    parts = module.split(".")
    assert parts[0] == "wallaroo", module
    if len(parts) == 1:
        candidates = [PACKAGE / "__main__.py"]
    else:
        base = PACKAGE.joinpath(*parts[1:])
        candidates = [base.with_suffix(".py"), base / "__main__.py", base / "__init__.py"]
    return next((p for p in candidates if p.is_file()), None)


def app_file(app: str) -> Path | None:
    """Where ``python -m wallaroo APP`` finds APP inside the image, which holds the
    installed wheel only: an example bundled in the package (``examples/APP/APP.py``,
    see ``wallaroo.loader``)."""
    path = PACKAGE / "examples" / app / f"{app}.py"
    return path if path.is_file() else None


def _wallaroo_commands() -> list[tuple[str, str]]:
    found = []
    for name, service in SERVICES.items():
        module = python_module(command_of(service))
        if module is not None and module.split(".")[0] == "wallaroo":
            found.append((name, module))
    return found


def _xfail_if(cond: bool, reason: str) -> list:
    return [pytest.mark.xfail(strict=True, reason=reason)] if cond else []


WALLAROO_COMMANDS = _wallaroo_commands()
APPS = sorted(
    {command_of(SERVICES[name])[3] for name, mod in WALLAROO_COMMANDS if mod == "wallaroo"}
)


def runner_args(service: str) -> list[str]:
    """The command line after ``python -m wallaroo``."""
    cmd = command_of(SERVICES[service])
    assert python_module(cmd) == "wallaroo", cmd
    return cmd[3:]


def runner_options(service: str):
    """The runner's reading of a worker command; fails on any flag it does not know."""
    args = runner_args(service)
    rest, i = [], 1  # args[0] is the application
    while i < len(args):
        if args[i] in APP_FLAGS:
            i += 2
            continue
        rest.append(args[i])
        i += 1
    return runner._parser().parse_args(runner._strip_ignored(rest))


# -- the file and its services ---------------------------------------------------


def test_compose_has_the_services_of_the_original_deployment():
    assert {"kafka", "streamer", "primary", "secondary", "dashboard"} <= set(SERVICES)
    assert "zookeeper" not in SERVICES


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_has_an_image_or_an_existing_build(name):
    service = SERVICES[name]
    assert "image" in service or "build" in service, f"{name}: no image and no build"
    build = service.get("build")
    if build is None:
        return
    if isinstance(build, str):
        build = {"context": build}
    context = (ROOT / build.get("context", ".")).resolve()
    assert context.is_dir(), f"{name}: build context {context} does not exist"
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_files_and_volumes_named_by_a_service_exist(name):
    service = SERVICES[name]
    env_files = service.get("env_file", [])
    for env_file in [env_files] if isinstance(env_files, str) else env_files:
        path = env_file if isinstance(env_file, str) else env_file["path"]
        assert (ROOT / path).is_file(), f"{name}: env_file {path} does not exist"
    declared = set(COMPOSE_DATA.get("volumes") or {})
    for volume in service.get("volumes", []):
        source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
        if source.startswith((".", "/", "~")):
            assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist"
        else:
            assert source in declared, f"{name}: volume {source} is not declared"
    for dep in service.get("depends_on", []):
        assert dep in SERVICES, f"{name}: depends on unknown service {dep}"


def test_published_host_ports_are_distinct():
    published = [
        port.rsplit(":", 2)[-2] if port.count(":") >= 1 else port
        for service in SERVICES.values()
        for port in map(str, service.get("ports", []))
    ]
    assert len(published) == len(set(published)), published


def test_at_least_the_workers_streamer_and_dashboard_run_wallaroo_modules():
    by_service = dict(WALLAROO_COMMANDS)
    assert by_service.get("primary") == "wallaroo"
    assert by_service.get("secondary") == "wallaroo"
    assert by_service.get("streamer") == "wallaroo.demo.streamer"
    assert by_service.get("dashboard") == "wallaroo.demo.dashboard"


@pytest.mark.parametrize(
    "service,module",
    [
        pytest.param(
            service,
            module,
            id=f"{service}:{module}",
            marks=_xfail_if(
                module in MODULES_NOT_YET_WRITTEN, f"{module} is still being written"
            ),
        )
        for service, module in WALLAROO_COMMANDS
    ],
)
def test_python_m_module_exists_in_the_package(service, module):
    assert module_file(module) is not None, (
        f"{service} runs `python -m {module}`, which has no file in {PACKAGE}"
    )


@pytest.mark.parametrize(
    "service,module",
    [
        pytest.param(
            service,
            module,
            id=f"{service}:{module}",
            marks=_xfail_if(
                module in MODULES_NOT_YET_WRITTEN, f"{module} is still being written"
            ),
        )
        for service, module in WALLAROO_COMMANDS
        if module != "wallaroo"  # the runner's flags are checked below, by its parser
    ],
)
def test_flags_of_a_tool_command_are_defined_by_its_module(service, module):
    path = module_file(module)
    assert path is not None, f"{module} has no file"
    source = path.read_text()
    for flag in command_of(SERVICES[service]):
        if flag.startswith("--"):
            assert f'"{flag}"' in source, f"{service}: {module} defines no {flag}"


@pytest.mark.parametrize(
    "app",
    [
        pytest.param(
            app,
            marks=_xfail_if(app in APPS_NOT_YET_WRITTEN, f"the {app} app is still being written"),
        )
        for app in APPS
    ],
)
def test_application_of_the_workers_exists(app):
    assert app_file(app) is not None, f"`python -m wallaroo {app}` finds no application"


def test_not_yet_written_lists_only_name_what_the_compose_file_runs():
    """The xfail lists above may not outlive their reason silently."""
    assert MODULES_NOT_YET_WRITTEN <= {module for _, module in WALLAROO_COMMANDS}
    assert APPS_NOT_YET_WRITTEN <= set(APPS)


# -- Kafka ------------------------------------------------------------------------


def test_kafka_is_apache_kafka_in_kraft_mode():
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert not kafka["image"].endswith(":latest")
    env = kafka["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env
    # The containers reach it as kafka:9092, which it must advertise.
    assert "//kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1  # one broker
    log_dirs = env["KAFKA_LOG_DIRS"]
    assert any(v.split(":")[1] == log_dirs for v in kafka.get("volumes", []))


def test_topics_are_created_before_the_clients_start():
    init = command_of(SERVICES["kafka-init"])
    script = " ".join(init)
    assert "--topic gharchive" in script and "--topic leaderboard" in script
    for name in ("streamer", "primary", "dashboard"):
        dep = SERVICES[name]["depends_on"]["kafka-init"]
        assert dep["condition"] == "service_completed_successfully", name


def test_dashboard_listens_beyond_the_container_loopback():
    cmd = command_of(SERVICES["dashboard"])
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    port = cmd[cmd.index("--port") + 1]
    assert any(str(p).endswith(f":{port}") for p in SERVICES["dashboard"]["ports"])


@pytest.mark.parametrize("name", ["streamer", "dashboard"])
def test_streamer_and_dashboard_use_the_right_topics(name):
    cmd = command_of(SERVICES[name])
    topic = {"streamer": "gharchive", "dashboard": "leaderboard"}[name]
    assert cmd[cmd.index("--brokers") + 1] == "kafka:9092"
    assert cmd[cmd.index("--topic") + 1] == topic


# -- the workers --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["primary", "secondary"])
def test_worker_app_flags_read_by_the_argument_helpers(name):
    args = ["machida", *runner_args(name)]
    assert wallaroo.kafka_parse_source_options(args)[:2] == ("gharchive", [("kafka", "9092")])
    topic, brokers, _level, _buffer_ms, max_size = wallaroo.kafka_parse_sink_options(args)
    assert (topic, brokers) == ("leaderboard", [("kafka", "9092")])
    assert max_size >= 100000


@pytest.mark.parametrize("name", ["primary", "secondary"])
def test_workers_leave_streamer_and_dashboard_to_their_services(name):
    assert runner_options(name).no_demo


def test_primary_is_the_cluster_initializer_with_control_data_external():
    opts = runner_options("primary")
    assert opts.cluster_initializer
    assert opts.control == "primary:12500"
    assert opts.data == "primary:12501"
    assert opts.external == "primary:5050"
    assert opts.join is None
    assert SERVICES["primary"]["hostname"] == "primary"


def test_secondary_joins_the_primary_by_name():
    opts = runner_options("secondary")
    assert not opts.cluster_initializer
    assert opts.join == "primary:12500"
    assert opts.name == "secondary_worker_1"
    # Its own addresses must be reachable from the primary's container.
    host = SERVICES["secondary"]["hostname"]
    assert opts.my_control.split(":")[0] == host
    assert opts.my_data.split(":")[0] == host
    assert "primary" in SERVICES["secondary"]["depends_on"]


def test_workers_share_the_image_the_dockerfile_builds():
    builds = {
        name: SERVICES[name].get("build")
        for name in ("primary", "secondary", "streamer", "dashboard")
    }
    assert all(b == builds["primary"] for b in builds.values()), builds


# -- Dockerfile -----------------------------------------------------------------------


def test_dockerfile_builds_the_wheel_and_installs_it():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    named = {s for s in stages if s}
    for used in re.findall(r"--from=(\S+)", text):
        assert used in named, f"COPY --from={used}: no such stage"
    assert "maturin build" in text
    assert re.search(r"pip install [^\n]*\.whl", text)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"target", ".venv", ".git"} <= set(ignored), "keep build products out of the context"


# -- the workers as local processes ---------------------------------------------------


def test_workers_get_the_cluster_secret_from_the_environment():
    """The primary's control address is reachable from the other containers:
    without a secret it refuses to start. Compose takes it from .env, which
    the user makes from .env.example (and never commits)."""
    from local_deploy import read_env_file, secret_env_name

    name = secret_env_name()
    for service in ("primary", "secondary"):
        env = SERVICES[service]["environment"]
        assert env[name].startswith(f"${{{name}:?"), env  # required: compose stops without
    example = read_env_file(ROOT / ".env.example")
    assert example[name]
    assert ".env" in (ROOT / ".gitignore").read_text().split()


@pytest.mark.timeout(300)
def test_compose_workers_form_a_cluster_and_publish_leaderboards(tmp_path: Path) -> None:
    """The streamer, primary and secondary commands, with their environment
    (the secret from .env.example, as a user who copied it), run as local
    processes against a tansu broker: the secondary joins the primary, the
    cluster publishes leaderboards, and a worker with another secret is refused."""
    from kafka_broker import TansuBroker, free_port
    from local_deploy import (
        Addresses,
        Worker,
        interpolate,
        read_env_file,
        secret_env_name,
        stop_all,
    )

    dotenv = read_env_file(ROOT / ".env.example")
    hosts = {name for name in SERVICES} | {s.get("hostname") for s in SERVICES.values()}
    hosts.discard(None)
    workers: list = []
    with TansuBroker() as broker:
        init = " ".join(command_of(SERVICES["kafka-init"]))
        for topic in ("gharchive", "leaderboard"):
            found = re.search(rf"--topic {topic} --partitions (\S+)", init)
            assert found, init
            broker.create_topic(topic, partitions=int(interpolate(found.group(1), dotenv)))
        addresses = Addresses(hosts, fixed={"kafka:9092": broker.bootstrap})

        def start(service: str, name: str | None = None, **env_override: str) -> Worker:
            argv = [addresses.rewrite(a) for a in command_of(SERVICES[service])]
            env = {k: interpolate(str(v), dotenv)
                   for k, v in (SERVICES[service].get("environment") or {}).items()}  # fmt: skip
            env.update(env_override)
            worker = Worker(name or service, argv, env, tmp_path)
            workers.append(worker)
            return worker

        try:
            primary = start("primary")
            primary.wait_log(r"initializer: waiting for")
            secondary = start("secondary")
            streamer = start("streamer")
            primary.wait_log(r"the cluster now has 2 workers")
            secondary.wait_log(r"running application")
            assert streamer.proc.poll() is None, streamer.log()
            boards = broker.consume("leaderboard", 3, timeout=120)
            assert len(boards) == 3, primary.log()[-3000:]
            assert all(b'"leaders"' in b.value for b in boards), boards[0]
            # Another worker with the wrong secret is turned away.
            argv = [addresses.rewrite(a) for a in command_of(SERVICES["secondary"])]
            own = {"--name": "stranger", "-x": f"127.0.0.1:{free_port()}",
                   "-y": f"127.0.0.1:{free_port()}"}  # fmt: skip
            argv = [own.get(argv[i - 1], a) if i else a for i, a in enumerate(argv)]
            stranger = Worker("stranger", argv, {secret_env_name(): "not-the-secret"}, tmp_path)
            workers.append(stranger)
            assert stranger.proc.wait(120) != 0, stranger.log()
            assert "wrong cluster secret" in primary.log(), primary.log()[-3000:]
        finally:
            stop_all(workers)
