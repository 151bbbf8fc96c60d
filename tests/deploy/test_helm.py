"""deploy/helm/sluice, rendered and checked without a cluster.

The chart is rendered by Helm's own engine (Helm 4's Go SDK, which the
PyPI package helm-python-sdk ships as a shared library, so no helm binary
is needed): with the default values and with the optional parts on (metrics
Service and ServiceMonitor, each kind of disk-tier volume). Every manifest
is checked against the Kubernetes API's JSON schemas in their strict form
(unknown fields are errors) from the PyPI package kubernetes-validate; the
ServiceMonitor, a custom resource those schemas do not cover, is checked
field by field against the Service it selects. Then what a wrong template
would break: the rendered sluiced.toml is accepted by the built daemon's
`check-config`, the memory limit is budget + overhead, the socket directory
is mounted where server.socket points, the probes hit the HTTP listener.
"""

import os
import pathlib
import re
import subprocess
import tomllib

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import REPO

CHART = REPO / "deploy" / "helm" / "sluice"
EXAMPLES = REPO / "deploy" / "kubernetes"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and
# the newest the schemas know.
KUBE_VERSIONS = ["1.25.0", kubernetes_validate.latest_version()]

OPTIONAL_ON = {
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "diskTier": {"enabled": True},
}

VALUE_SETS = {
    "defaults": {},
    "optional-on": OPTIONAL_ON,
    "disk-emptydir": {"diskTier": {"enabled": True, "volume": "emptyDir"}},
    "disk-ephemeral": {
        "diskTier": {
            "enabled": True,
            "volume": "ephemeral",
            "ephemeral": {"storageClassName": "local-nvme", "size": "500Gi"},
        }
    },
    "sized": {
        "memory": {"budget": "64Gi", "overhead": "1536Mi"},
        "gracePeriodSeconds": 60,
        "http": {"bindAddress": "[::]", "port": 9100},
        "socket": {"hostPath": "/var/run/sluice-a"},
        "config": {"engine": {"max_concurrency": 128}, "storage": {"file": {"roots": ["/"]}}},
    },
}


def render(values: dict) -> list[dict]:
    """The chart's manifests (NOTES.txt and empty documents left out)."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        files = chart.render(values, name="sluice", namespace="sluice", is_install=True)
    docs = []
    for name, text in sorted(files.items()):
        if name.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def one(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def daemon_container(docs: list[dict]) -> dict:
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "sluiced"]
    return container


def config_of(docs: list[dict]) -> str:
    return one(docs, "ConfigMap")["data"]["sluiced.toml"]


MEBI = {"Mi": 1 << 20, "Gi": 1 << 30}


def k8s_bytes(quantity: str) -> int:
    return int(quantity[:-2]) * MEBI[quantity[-2:]]


def toml_bytes(size: str) -> int:
    for suffix, factor in (("MiB", 1 << 20), ("GiB", 1 << 30)):
        if size.endswith(suffix):
            return int(size[: -len(suffix)]) * factor
    raise AssertionError(f"unexpected byte size {size}")


def seconds(duration: str) -> int:
    assert duration.endswith("s"), duration
    return int(duration[:-1])


def validate(doc: dict) -> None:
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {e}")


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_manifests_match_the_kubernetes_schemas(values: dict) -> None:
    docs = render(values)
    kinds = sorted(d["kind"] for d in docs)
    expected = ["ConfigMap", "DaemonSet", "ServiceAccount"]
    if values.get("metrics"):
        expected += ["Service", "ServiceMonitor"]
    assert kinds == sorted(expected)
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            check_service_monitor(doc, one(docs, "Service"))
        else:
            validate(doc)


def check_service_monitor(monitor: dict, service: dict) -> None:
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) == {"selector", "namespaceSelector", "endpoints"}
    wanted = spec["selector"]["matchLabels"]
    assert wanted.items() <= service["metadata"]["labels"].items()
    assert spec["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"


def test_service_selects_the_daemon_pods_on_the_metrics_port() -> None:
    docs = render(OPTIONAL_ON)
    service = one(docs, "Service")
    template = one(docs, "DaemonSet")["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in daemon_container(docs)["ports"]}
    assert port["targetPort"] in container_ports
    assert port["port"] == container_ports[port["targetPort"]]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_daemon_accepts_the_rendered_config(
    values: dict, sluiced: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    text = config_of(render(values))
    tomllib.loads(text)
    path = tmp_path / "sluiced.toml"
    path.write_text(text)
    r = check_config(sluiced, path)
    assert r.returncode == 0, f"{r.stderr}\n--- sluiced.toml:\n{text}"
    # What the daemon reads is what the chart meant (no key lost on the way).
    effective = tomllib.loads(r.stdout)
    assert effective["server"]["socket"] == tomllib.loads(text)["server"]["socket"]
    if values.get("config", {}).get("engine"):
        assert effective["engine"]["max_concurrency"] == 128


def check_config(sluiced: pathlib.Path, path: pathlib.Path) -> subprocess.CompletedProcess:
    # The daemon refuses SLUICE_* variables that are not config keys.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    return subprocess.run(
        [sluiced, "--config", path, "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_memory_limit_is_budget_plus_overhead(values: dict) -> None:
    docs = render(values)
    memory = {"budget": "8Gi", "overhead": "1Gi"} | values.get("memory", {})
    budget = toml_bytes(tomllib.loads(config_of(docs))["cache"]["memory_budget"])
    assert budget == k8s_bytes(memory["budget"])
    resources = daemon_container(docs)["resources"]
    limit = k8s_bytes(resources["limits"]["memory"])
    assert limit == budget + k8s_bytes(memory["overhead"])
    assert resources["requests"]["memory"] == resources["limits"]["memory"]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_socket_directory_is_mounted_where_the_config_points(values: dict) -> None:
    docs = render(values)
    socket = pathlib.PurePosixPath(tomllib.loads(config_of(docs))["server"]["socket"])
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in daemon_container(docs)["volumeMounts"]}
    volume = volumes[mounts[str(socket.parent)]]
    # The host directory itself, at the same path: the trainers mount it too.
    assert volume["hostPath"]["path"] == str(socket.parent)
    expected = values.get("socket", {}).get("hostPath", "/run/sluice")
    assert str(socket.parent) == expected
    init = pod["initContainers"][0]
    assert f"chown 10001:10001 {socket.parent}" in init["command"][-1]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_probes_shutdown_and_security(values: dict) -> None:
    docs = render(values)
    config = tomllib.loads(config_of(docs))
    container = daemon_container(docs)
    http_port = int(config["server"]["http"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in (container["livenessProbe"], container["readinessProbe"]):
        assert ports[probe["httpGet"]["port"]] == http_port
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    grace = seconds(config["server"]["grace_period"])
    assert pod["terminationGracePeriodSeconds"] > grace + 5
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]


@pytest.mark.parametrize("kind", ["hostPath", "emptyDir", "ephemeral"])
def test_disk_tier_volume_is_the_configured_directory(kind: str) -> None:
    docs = render({"diskTier": {"enabled": True, "volume": kind}})
    config = tomllib.loads(config_of(docs))
    (tier,) = config["cache"]["disk"]["dirs"]
    assert config["cache"]["disk"]["max_bytes"] == "100GiB"
    mounts = {m["mountPath"]: m["name"] for m in daemon_container(docs)["volumeMounts"]}
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    volume = {v["name"]: v for v in pod["volumes"]}[mounts[tier]]
    assert kind in volume
    # Handed to the daemon's user, who sets it to 0700 at start.
    assert f"chown 10001:10001 {tier}" in pod["initContainers"][0]["command"][-1]


def test_disk_tier_off_by_default() -> None:
    docs = render({})
    assert "disk" not in tomllib.loads(config_of(docs))["cache"]
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert "disk-tier" not in {v["name"] for v in pod["volumes"]}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"terminationGracePeriodSeconds": 25}, "must exceed gracePeriodSeconds + 5"),
        ({"config": {"cache": {"memory_budget": "1GiB"}}}, "config.cache.memory_budget"),
        ({"config": {"server": {"socket": "/tmp/s.sock"}}}, "config.server.socket"),
    ],
)
def test_values_that_would_contradict_themselves_fail(values: dict, message: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError, match=re.escape(message)):
        chart.render(values, name="sluice", namespace="sluice")


def test_schema_rejects_misspelt_values() -> None:
    with helm.Chart.load(CHART) as chart:
        for bad in ({"diskTeir": {"enabled": True}}, {"memory": {"budget": "8GiB"}}):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(bad)


def test_lint_is_clean() -> None:
    for values in VALUE_SETS.values():
        report = helm.lint(CHART, values, strict=True)
        # Severity 2 and up: warnings and errors (1 is advice, e.g. an icon).
        serious = [m for m in report["messages"] if m["severity"] >= 2]
        assert not serious and not report["errors"], report


def test_plain_manifests_match_the_schemas(sluiced: pathlib.Path, tmp_path: pathlib.Path) -> None:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        validate(doc)
    # The example ConfigMap's sluiced.toml is one the daemon accepts.
    path = tmp_path / "sluiced.toml"
    path.write_text(one(docs, "ConfigMap")["data"]["sluiced.toml"])
    r = check_config(sluiced, path)
    assert r.returncode == 0, r.stderr


def test_trainer_pod_reaches_the_charts_daemon() -> None:
    docs = render({})
    socket = tomllib.loads(config_of(docs))["server"]["socket"]
    daemon_pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    trainer = yaml.safe_load((EXAMPLES / "trainer-pod.yaml").read_text())["spec"]
    (container,) = trainer["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SLUICE_ADDRESS"] == f"unix://{socket}"
    (volume,) = trainer["volumes"]
    socket_dir = str(pathlib.PurePosixPath(socket).parent)
    assert volume["hostPath"]["path"] == socket_dir
    assert {"name": volume["name"], "mountPath": socket_dir} in container["volumeMounts"]
    groups = trainer["securityContext"]["supplementalGroups"]
    assert daemon_pod["securityContext"]["runAsGroup"] in groups
