"""The Kubernetes manifests and the image recipe keep the contract the services rely on.

Each overlay of deploy/k8s is rendered by kustomize (deploy/k8s/ensure-kustomize.sh installs
it) and checked offline: built-in kinds against the Kubernetes schemas, the CRD kinds
(KafkaTopic, ServiceMonitor) structurally, then the invariants below. The image cannot be built
here, so the Dockerfile is checked structurally.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import kubernetes_validate
import pytest
import yaml

from console.settings import ConsoleSettings, load_console_settings
from metering.runtime import GRACEFUL_TIMEOUT
from metering.settings import Settings, load_settings
from metering.topics import EVENTS, USAGE_REPORTS, contract_topics

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBECTL = ROOT / ".venv" / "bin" / "kustomize-kubectl"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONSOLE_SCRIPTS = set(PYPROJECT["project"]["scripts"])
SETTINGS = {name.upper() for name in Settings.model_fields}
CONSOLE_SETTINGS = {name.upper() for name in ConsoleSettings.model_fields}

#: The image tag each overlay deploys: dev follows main, prod runs the released version.
IMAGE_TAGS = {"dev": "dev", "prod": PYPROJECT["project"]["version"]}
#: Topic replicas and min.insync.replicas per overlay: dev has a single broker.
TOPIC_REPLICATION = {"dev": (1, 1), "prod": (3, 2)}
#: The oldest Kubernetes the manifests are validated for.
KUBERNETES_VERSION = "1.30"
#: Kinds defined by CRDs, absent from kubernetes-validate: checked structurally instead.
CRD_KINDS = {"KafkaTopic": "kafka.strimzi.io/v1beta2", "ServiceMonitor": "monitoring.coreos.com/v1"}
#: The one Secret the manifests read; the operator creates it (deploy/README.md says how).
OPERATOR_SECRET = "metering-secrets"
#: uvicorn's drain on SIGTERM (timeout_graceful_shutdown in metering/service.py).
HTTP_DRAIN_SECONDS = 25


class Service(NamedTuple):
    """One service's workload, entry point, the secrets it needs, and the topic whose
    partitions bound its ready replicas."""

    kind: str
    name: str
    script: str
    required_secrets: frozenset[str]
    bounded_by: str | None


BASE_SECRETS = frozenset({"DATABASE_URL", "METERING_ADMIN_TOKEN"})
KEYED_SECRETS = BASE_SECRETS | {"API_KEY_HASH_SECRET"}
SERVICES = {
    # ingest's consumer of raw reports and ledger's consumer group report not ready without a
    # partition; each quota replica is a group of its own.
    "ingest": Service(
        "Deployment", "metering-ingest", "metering-ingest", KEYED_SECRETS, USAGE_REPORTS
    ),
    "ledger": Service("Deployment", "metering-ledger", "metering-ledger", BASE_SECRETS, EVENTS),
    "quota": Service("StatefulSet", "metering-quota", "metering-quota", KEYED_SECRETS, None),
}
CONSOLE = Service(
    "Deployment",
    "metering-console",
    "metering-console",
    frozenset({"CONSOLE_SESSION_SECRET", "METRICS_TOKEN"}),
    None,
)
"""The console for people (components/console, in both overlays): it reads quota and the
ledger over HTTP, and holds no database, broker or rate card."""
CONSOLE_READS = ("ledger", "quota")
"""The services whose APIs the console calls (services/console/app.py: `Upstream`)."""
WORKLOADS = {**SERVICES, "console": CONSOLE}
"""Everything serving HTTP on the image's port, with probes, a Service and /metrics."""


@cache
def _render(overlay: str) -> list[Obj]:
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL} is missing: run deploy/k8s/ensure-kustomize.sh (make test does)")
    result = subprocess.run(
        [KUBECTL, "kustomize", K8S / "overlays" / overlay],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        pytest.fail(f"kustomize could not render overlays/{overlay}:\n{result.stderr}")
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


class Render:
    """One overlay's objects, with the lookups the checks share."""

    def __init__(self, overlay: str) -> None:
        self.overlay = overlay
        self.objects = _render(overlay)

    def all(self, kind: str) -> list[Obj]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        found = [obj for obj in self.all(kind) if obj["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def workload(self, service: str) -> Obj:
        return self.get(WORKLOADS[service].kind, WORKLOADS[service].name)

    def pod_templates(self) -> list[Obj]:
        kinds = ("Deployment", "StatefulSet", "Job")
        return [obj["spec"]["template"] for kind in kinds for obj in self.all(kind)]

    def images(self) -> set[str]:
        return {c["image"] for pod in self.pod_templates() for c in pod["spec"]["containers"]}

    def plain_env(self, container: Obj) -> dict[str, str]:
        """The variables a container gets as values: its ConfigMaps' data, then its own `value`s."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(self.get("ConfigMap", source["configMapRef"]["name"])["data"])
        env.update(
            {var["name"]: var["value"] for var in container.get("env", []) if "value" in var}
        )
        return env

    def config(self) -> dict[str, str]:
        """The settings every service shares (the config map of ingest's container)."""
        return self.plain_env(container_of(self.workload("ingest")))


@pytest.fixture(scope="module", params=sorted(IMAGE_TAGS))
def rendered(request: pytest.FixtureRequest) -> Render:
    return Render(request.param)


def container_of(workload: Obj) -> Obj:
    containers: list[Obj] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container expected"
    return containers[0]


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels, matchExpressions with In) matches `labels`."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", "selects() knows only the In operator"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def target(port: int | str, container: Obj) -> int | None:
    """The container port a Service targetPort or probe port (number or name) lands on."""
    for declared in container.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            number: int = declared["containerPort"]
            return number
    return None


def test_builtin_kinds_match_the_kubernetes_schemas(rendered: Render) -> None:
    for obj in rendered.objects:
        if obj["kind"] in CRD_KINDS:
            assert obj["apiVersion"] == CRD_KINDS[obj["kind"]]
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(part) for part in error.path)
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {where}: {error.message}")


def test_each_service_runs_its_console_script(rendered: Render) -> None:
    for service, spec in WORKLOADS.items():
        assert container_of(rendered.workload(service))["command"] == [spec.script]
        assert spec.script in CONSOLE_SCRIPTS
    job = rendered.get("Job", "metering-migrate")
    assert container_of(job)["command"] == ["metering", "migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def test_ports_probes_and_services_agree(rendered: Render) -> None:
    http_port = int(rendered.config()["HTTP_PORT"])
    for service in WORKLOADS:
        workload = rendered.workload(service)
        container = container_of(workload)
        assert [port["containerPort"] for port in container["ports"]] == [http_port], service
        for probe, path in (
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/healthz"),
            ("startupProbe", "/healthz"),
        ):
            get = container[probe]["httpGet"]
            assert get["path"] == path, f"{service} {probe}"
            assert target(get["port"], container) == http_port, f"{service} {probe} port"
        fronting = [
            svc
            for svc in rendered.all("Service")
            if selects({"matchLabels": svc["spec"]["selector"]}, pod_labels(workload))
        ]
        assert len(fronting) == 1, f"{service}: one Service expected, found {len(fronting)}"
        for port in fronting[0]["spec"]["ports"]:
            assert target(port["targetPort"], container) == http_port, f"{service} Service port"
    for svc in rendered.all("Service"):
        selected = [
            name
            for name in WORKLOADS
            if selects(
                {"matchLabels": svc["spec"]["selector"]}, pod_labels(rendered.workload(name))
            )
        ]
        assert len(selected) == 1, f"Service {svc['metadata']['name']} selects {selected}"


def test_pods_run_as_non_root_on_a_read_only_root(rendered: Render) -> None:
    for pod in rendered.pod_templates():
        name = pod["metadata"]["labels"]["app.kubernetes.io/name"]
        security = pod["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] > 0, name
        tmp_volumes = {v["name"] for v in pod["spec"].get("volumes", []) if "emptyDir" in v}
        for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in tmp_volumes, f"{name}: /tmp is not a writable emptyDir"


def test_pods_have_time_to_finish_their_batch(rendered: Render) -> None:
    for service in WORKLOADS:
        spec = rendered.workload(service)["spec"]["template"]["spec"]
        pre_stop = container_of(rendered.workload(service))["lifecycle"]["preStop"]["exec"]
        assert pre_stop["command"][0] == "sleep", service
        batch = GRACEFUL_TIMEOUT if service in SERVICES else 0  # the console consumes nothing
        needed = int(pre_stop["command"][1]) + HTTP_DRAIN_SECONDS + batch
        assert spec["terminationGracePeriodSeconds"] > needed, service


def test_environment_is_valid_settings(rendered: Render, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every variable is a setting (POD_NAME aside: quota's group is made of it) and parses:
    the console's are the console's settings."""
    for template in rendered.pod_templates():
        container = template["spec"]["containers"][0]
        console = container["command"] == [CONSOLE.script]
        known, load = (CONSOLE_SETTINGS, load_console_settings) if console else (SETTINGS, None)
        names = {var["name"] for var in container.get("env", [])}
        plain = rendered.plain_env(container)
        unknown = (names | set(plain)) - known - {"POD_NAME"}
        assert not unknown, f"{container['name']}: not settings: {sorted(unknown)}"
        for name in CONSOLE_SETTINGS:
            monkeypatch.delenv(name, raising=False)
        for name, value in plain.items():
            monkeypatch.setenv(name, value)
        (load or load_settings)()


def test_references_name_rendered_or_documented_objects(rendered: Render) -> None:
    config_maps = {obj["metadata"]["name"] for obj in rendered.all("ConfigMap")}
    assert not rendered.all("Secret"), "secrets are the operator's, never in the manifests"
    documented = documented_secret_keys()
    for template in rendered.pod_templates():
        spec = template["spec"]
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                assert set(source) == {"configMapRef"}
                assert source["configMapRef"]["name"] in config_maps
            for var in container.get("env", []):
                ref = var.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["name"] in config_maps
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] == OPERATOR_SECRET, var["name"]
                    assert ref["secretKeyRef"]["key"] in documented, var["name"]


def test_services_get_their_secrets_and_config(rendered: Render) -> None:
    for service, spec in WORKLOADS.items():
        container = container_of(rendered.workload(service))
        from_secret = {
            var["name"]
            for var in container["env"]
            if "secretKeyRef" in var.get("valueFrom", {})
            and not var["valueFrom"]["secretKeyRef"].get("optional", False)
        }
        assert spec.required_secrets <= from_secret, service
        if service in SERVICES:
            assert "KAFKA_BOOTSTRAP_SERVERS" in rendered.plain_env(container), service


def test_the_console_reads_the_services_and_is_published_securely(rendered: Render) -> None:
    """Both overlays run the console, reading quota and the ledger through their Services,
    with Secure cookies (it is published over HTTPS) and nothing of the database's."""
    container = container_of(rendered.workload("console"))
    env = rendered.plain_env(container)
    for service in CONSOLE_READS:
        host = env[f"{service.upper()}_URL"].removeprefix("http://")
        fronting = rendered.get("Service", host)
        assert selects(
            {"matchLabels": fronting["spec"]["selector"]}, pod_labels(rendered.workload(service))
        ), service
    assert env["CONSOLE_SECURE_COOKIE"] == "true"
    secrets = {v["name"] for v in container["env"] if "valueFrom" in v}
    assert secrets == CONSOLE.required_secrets, "the console needs no database, token or key"


def test_services_read_the_shipped_rate_card(rendered: Render) -> None:
    shipped = (ROOT / "metering" / "ratecards" / "default.yaml").read_text()
    for service in SERVICES:
        workload = rendered.workload(service)
        container = container_of(workload)
        card_path = Path(rendered.plain_env(container)["RATE_CARD_PATH"])
        [mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == card_path.parent]
        [volume] = [
            v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
        ]
        data = rendered.get("ConfigMap", volume["configMap"]["name"])["data"]
        assert data.get(card_path.name) == shipped, (
            "the rate card in deploy/k8s differs from the shipped one: "
            "cp metering/ratecards/default.yaml deploy/k8s/base/ratecard/default.yaml"
        )


def test_each_quota_replica_is_its_own_consumer_group(rendered: Render) -> None:
    env = container_of(rendered.workload("quota"))["env"]
    names = [var["name"] for var in env]
    group = env[names.index("QUOTA_CONSUMER_GROUP")]
    pod_name = env[names.index("POD_NAME")]
    assert names.index("POD_NAME") < names.index("QUOTA_CONSUMER_GROUP"), "$(POD_NAME) expands"
    assert group["value"] == "$(POD_NAME)"
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert rendered.workload("quota")["kind"] == "StatefulSet", "stable names resume snapshots"


def test_ready_replicas_fit_the_partitions(rendered: Render) -> None:
    """A consumer without a partition is not ready: the most pods at once stay within them."""
    partitions = {
        topic.name: topic.partitions
        for topic in contract_topics(int(rendered.config()["EVENTS_PARTITIONS"]))
    }
    autoscalers = {
        hpa["spec"]["scaleTargetRef"]["name"]: hpa
        for hpa in rendered.all("HorizontalPodAutoscaler")
    }
    for service, spec in SERVICES.items():
        if spec.bounded_by is None:
            continue
        workload = rendered.workload(service)
        most = (
            autoscalers[spec.name]["spec"]["maxReplicas"]
            if spec.name in autoscalers
            else workload["spec"]["replicas"]
        )
        surge = workload["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        assert most + surge <= partitions[spec.bounded_by], service


def test_autoscalers_and_disruption_budgets(rendered: Render) -> None:
    autoscaled = {
        (hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"]): hpa
        for hpa in rendered.all("HorizontalPodAutoscaler")
    }
    expected = {(SERVICES[s].kind, SERVICES[s].name) for s in ("ingest", "quota")}
    assert set(autoscaled) == expected
    for key, hpa in autoscaled.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert "replicas" not in rendered.get(*key)["spec"], f"{key}: the HPA owns replicas"
    budgets = rendered.all("PodDisruptionBudget")
    for service in WORKLOADS:
        labels = pod_labels(rendered.workload(service))
        assert [pdb for pdb in budgets if selects(pdb["spec"]["selector"], labels)], service


def test_service_monitor_scrapes_every_service(rendered: Render) -> None:
    [monitor] = rendered.all("ServiceMonitor")
    scraped = [
        svc
        for svc in rendered.all("Service")
        if selects(monitor["spec"]["selector"], svc["metadata"]["labels"])
    ]
    assert sorted(svc["metadata"]["name"] for svc in scraped) == sorted(
        spec.name for spec in WORKLOADS.values()
    )
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        for svc in scraped:
            assert endpoint["port"] in [port["name"] for port in svc["spec"]["ports"]]


def test_metrics_are_scraped_with_the_services_metrics_token(rendered: Render) -> None:
    """/metrics is private: Prometheus presents the same secret the services check."""
    [monitor] = rendered.all("ServiceMonitor")
    for service in WORKLOADS:
        container = container_of(rendered.workload(service))
        [token] = [var for var in container["env"] if var["name"] == "METRICS_TOKEN"]
        secret = token["valueFrom"]["secretKeyRef"]
        for endpoint in monitor["spec"]["endpoints"]:
            credentials = endpoint["authorization"]["credentials"]
            assert endpoint["authorization"]["type"] == "Bearer"
            assert (credentials["name"], credentials["key"]) == (secret["name"], secret["key"])
            assert not secret.get("optional", False), service


def test_a_network_policy_admits_only_the_http_port_of_every_service(rendered: Render) -> None:
    spec = rendered.get("NetworkPolicy", "metering-ingress")["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    for service in SERVICES:
        workload = rendered.workload(service)
        assert selects(spec["podSelector"], pod_labels(workload)), service
        http = [p for p in container_of(workload)["ports"] if p["name"] == "http"]
        assert http, service
    for rule in spec["ingress"]:
        assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]
        assert rule["from"], "an ingress rule without sources admits everyone"
        for source in rule["from"]:
            assert "ipBlock" not in source


def test_the_consoles_network_policy_admits_people_and_prometheus_and_lets_it_reach_its_apis(
    rendered: Render,
) -> None:
    """In: the console's HTTP port only, from labelled namespaces (the Ingress controller's,
    monitoring), never an address block. Out: the HTTP port of the services it reads, each
    of which admits pods of the namespace, and DNS; nothing else."""
    policy = rendered.get("NetworkPolicy", "metering-console")["spec"]
    console = rendered.workload("console")
    assert selects(policy["podSelector"], pod_labels(console))
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    assert [p["name"] for p in container_of(console)["ports"]] == ["http"]
    namespaces = set()
    for rule in policy["ingress"]:
        assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]
        assert rule["from"], "an ingress rule without sources admits everyone"
        for source in rule["from"]:
            assert set(source) == {"namespaceSelector"}, source
            namespaces.add(tuple(sorted(source["namespaceSelector"]["matchLabels"].items())))
    assert (("kubernetes.io/metadata.name", "monitoring"),) in namespaces, "Prometheus"
    assert (("metering.example/console-access", "true"),) in namespaces, "people"

    [apis, dns] = policy["egress"]
    assert apis["ports"] == [{"protocol": "TCP", "port": "http"}]
    [destination] = apis["to"]
    reached = [
        name
        for name in WORKLOADS
        if selects(destination["podSelector"], pod_labels(rendered.workload(name)))
    ]
    assert sorted(reached) == sorted(CONSOLE_READS)
    services_policy = rendered.get("NetworkPolicy", "metering-ingress")["spec"]
    admitted = [source for rule in services_policy["ingress"] for source in rule["from"]]
    assert {"podSelector": {}} in admitted, "the services admit the console's namespace"
    for name in CONSOLE_READS:
        assert selects(services_policy["podSelector"], pod_labels(rendered.workload(name)))
    assert sorted((p["protocol"], p["port"]) for p in dns["ports"]) == [("TCP", 53), ("UDP", 53)]
    [resolver] = dns["to"]
    assert resolver["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}


def test_every_contract_topic_is_a_kafka_topic(rendered: Render) -> None:
    config = rendered.config()
    expected = contract_topics(int(config["EVENTS_PARTITIONS"]))
    topics = {topic["spec"]["topicName"]: topic for topic in rendered.all("KafkaTopic")}
    assert sorted(topics) == sorted(spec.name for spec in expected)
    replicas, min_insync = TOPIC_REPLICATION[rendered.overlay]
    clusters = set()
    for spec in expected:
        topic = topics[spec.name]
        settings = {key: str(value) for key, value in topic["spec"]["config"].items()}
        assert topic["spec"]["partitions"] == spec.partitions, spec.name
        assert topic["spec"]["replicas"] == replicas, spec.name
        assert settings.items() >= {**spec.configs, "min.insync.replicas": str(min_insync)}.items()
        clusters.add(topic["metadata"]["labels"]["strimzi.io/cluster"])
    [cluster] = clusters
    hosts = [server.rpartition(":")[0] for server in config["KAFKA_BOOTSTRAP_SERVERS"].split(",")]
    assert hosts == [f"{cluster}-kafka-bootstrap"], "the services use the topics' Kafka cluster"


def test_nothing_creates_topics_but_strimzi(rendered: Render) -> None:
    for template in rendered.pod_templates():
        for container in template["spec"]["containers"]:
            assert container["command"][:2] != ["metering", "topics"]


def test_one_image_tagged_for_the_overlay(rendered: Render) -> None:
    [image] = rendered.images()
    assert image.rpartition(":")[2] == IMAGE_TAGS[rendered.overlay]


def test_overlays_deploy_different_images() -> None:
    assert Render("dev").images().isdisjoint(Render("prod").images())


def test_pods_run_as_the_image_user(rendered: Render) -> None:
    [user] = re.findall(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    for pod in rendered.pod_templates():
        security = pod["spec"]["securityContext"]
        assert (str(security["runAsUser"]), str(security["runAsGroup"])) == user


def documented_secret_keys() -> set[str]:
    """The keys of the operator's Secret as deploy/README.md tells how to create it."""
    readme = (ROOT / "deploy" / "README.md").read_text()
    command = re.search(rf"create secret generic {OPERATOR_SECRET}((?:.*\\\n)+.*)", readme)
    assert command, f"deploy/README.md does not show how to create {OPERATOR_SECRET}"
    return set(re.findall(r"--from-literal=([a-z-]+)=", command.group(1)))


def test_dockerfile_checks_every_console_script() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    [scripts] = re.findall(r"for script in ([\w\- ]+); do", dockerfile)
    assert set(scripts.split()) == CONSOLE_SCRIPTS


def test_dockerignore_lets_every_copy_through() -> None:
    allowed = {
        line[1:]
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources = line.split()[1:-1]
            assert set(sources) <= allowed, f"{line!r}: .dockerignore keeps some out"
            assert all((ROOT / source).exists() for source in sources), line
