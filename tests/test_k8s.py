"""The Kubernetes manifests in ``k8s/``: valid against Kubernetes' own schemas
(``kubernetes-validate`` from PyPI, strict: no unknown fields), wired together
(Service, StatefulSet, Secret), and the pods' commands, with the environment
Kubernetes would give them, form a cluster when run as local processes."""

from __future__ import annotations

import copy
import json
import re
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"


def documents() -> list:
    return [
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def kind(name: str) -> dict:
    (doc,) = [d for _, d in documents() if d["kind"] == name]
    return doc


STATEFULSET = kind("StatefulSet")
SERVICE = kind("Service")
SECRET = kind("Secret")
POD = STATEFULSET["spec"]["template"]
(CONTAINER,) = POD["spec"]["containers"]


@pytest.mark.parametrize(("name", "doc"), documents(), ids=[n for n, _ in documents()])
def test_manifest_is_valid_for_kubernetes(name: str, doc: dict) -> None:
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_schema_check_catches_a_wrong_manifest() -> None:
    broken = copy.deepcopy(STATEFULSET)
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)
    broken = copy.deepcopy(SERVICE)
    broken["spec"]["clusterIp"] = "None"  # a misspelt field: strict rejects it
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_statefulset_service_and_secret_fit_together() -> None:
    spec = STATEFULSET["spec"]
    # Stable names wallaroo-N.wallaroo come from a headless Service of that name.
    assert spec["serviceName"] == SERVICE["metadata"]["name"] == "wallaroo"
    assert SERVICE["spec"]["clusterIP"] == "None"
    assert SERVICE["spec"]["publishNotReadyAddresses"] is True
    labels = POD["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert SERVICE["spec"]["selector"].items() <= labels.items()
    assert spec["podManagementPolicy"] == "Parallel"
    named = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}
    assert {p["targetPort"] for p in SERVICE["spec"]["ports"]} <= set(named)
    env = {e["name"]: e for e in CONTAINER["env"]}
    ref = env["WALLAROO_CLUSTER_SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == SECRET["metadata"]["name"] and ref["key"] in SECRET["stringData"]
    assert env["WALLAROO_INITIALIZER"]["value"] == f"{spec['serviceName']}-0.wallaroo:12500"


def test_readiness_and_prometheus_scrape_use_the_metrics_port() -> None:
    ports = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}
    probe = CONTAINER["readinessProbe"]["httpGet"]
    assert probe["path"] == "/status" and probe["port"] == "metrics"
    annotations = POD["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"
    env = {e["name"]: e.get("value") for e in CONTAINER["env"]}
    assert env["WALLAROO_METRICS"] == f"0.0.0.0:{ports['metrics']}"


def pod_environment(pod: str) -> dict:
    """The container's environment as Kubernetes builds it for pod ``pod``:
    the pod's name, the Secret's value (from the example Secret), and
    ``$(VAR)`` references to earlier variables expanded."""
    env: dict = {}
    for item in CONTAINER["env"]:
        if "value" in item:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)),
                           str(item["value"]))  # fmt: skip
        elif "fieldRef" in item["valueFrom"]:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            value = pod
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == SECRET["metadata"]["name"]
            value = SECRET["stringData"][ref["key"]]
        env[item["name"]] = value
    return env


def status(address: str) -> dict:
    with urllib.request.urlopen(f"http://{address}/status", timeout=10) as answer:
        assert answer.status == 200
        return json.loads(answer.read())


@pytest.mark.timeout(300)
def test_pods_form_a_cluster_as_local_processes(tmp_path: Path) -> None:
    """Two pods' commands (the StatefulSet's shell script, run by /bin/sh) with
    their environment; the stable names and Kafka become loopback addresses.
    Pod 1 joins pod 0 by its stable name, both answer the readiness probe, and
    the cluster publishes leaderboards."""
    from kafka_broker import TansuBroker, free_port
    from local_deploy import Addresses, Worker, stop_all

    name, replicas = STATEFULSET["metadata"]["name"], STATEFULSET["spec"]["replicas"]
    pods = [f"{name}-{i}" for i in range(replicas)]
    service = STATEFULSET["spec"]["serviceName"]
    workers: list = []
    with TansuBroker() as broker:
        for topic in ("gharchive", "leaderboard"):
            broker.create_topic(topic, partitions=1)
        kafka = pod_environment(pods[0])["KAFKA_BROKERS"]
        hosts = {f"{pod}.{service}" for pod in pods} | {kafka.rsplit(":", 1)[0]}
        addresses = Addresses(hosts, fixed={kafka: broker.bootstrap})
        metrics = {}
        try:
            for pod in pods:
                env = {k: addresses.rewrite(v) for k, v in pod_environment(pod).items()}
                metrics[pod] = env["WALLAROO_METRICS"] = f"127.0.0.1:{free_port()}"
                workers.append(Worker(pod, CONTAINER["command"], env, tmp_path))
            first, second = workers
            first.wait_log(rf"cluster grew to 2 workers: {pods[0]}, {pods[1]}")
            second.wait_log(r"running application")
            for pod in pods:  # the readiness probe's request
                assert status(metrics[pod])
            feed = ["python", "-m", "wallaroo.demo.streamer", "--brokers", broker.bootstrap,
                    "--topic", "gharchive"]  # fmt: skip
            streamer = Worker("streamer", feed, {}, tmp_path)
            workers.append(streamer)
            boards = broker.consume("leaderboard", 3, timeout=120)
            assert len(boards) == 3, first.log()[-3000:]
        finally:
            stop_all(workers)
