"""The console's Kubernetes component (deploy/k8s/components/console), rendered with the base
by kustomize offline: valid objects, the console script, probes on its HTTP port, the three
services' in-namespace URLs, only its session secret and the metrics token from the operator's
Secret, the same hardening as the services' pods, and both overlays including it (where
tests/deploy/test_manifests.py checks it with everything else)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from console.settings import ConsoleSettings
from tests.deploy.test_manifests import (
    CONSOLE_SCRIPTS,
    IMAGE_TAGS,
    K8S,
    KUBECTL,
    KUBERNETES_VERSION,
    OPERATOR_SECRET,
    Render,
    documented_secret_keys,
)

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL} is missing: run deploy/k8s/ensure-kustomize.sh (make test does)")
    root = tmp_path_factory.mktemp("console-overlay")
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "metering-test",
                "resources": [os.path.relpath(K8S / "base", root)],
                "components": [os.path.relpath(K8S / "components" / "console", root)],
            }
        )
    )
    result = subprocess.run(
        [KUBECTL, "kustomize", root], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def test_the_console_objects_are_valid(objects: list[Obj]) -> None:
    for obj in objects:
        if obj["metadata"]["name"] == "metering-console":
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_console_runs_its_script_with_probes_and_a_service(objects: list[Obj]) -> None:
    deployment = one(objects, "Deployment", "metering-console")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["metering-console"]
    assert "metering-console" in CONSOLE_SCRIPTS
    assert container["ports"] == [{"name": "http", "containerPort": 8000}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = one(objects, "Service", "metering-console")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_the_console_reads_the_services_with_its_session_secret_and_the_metrics_token(
    objects: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    [container] = one(objects, "Deployment", "metering-console")["spec"]["template"]["spec"][
        "containers"
    ]
    env = {e["name"]: e for e in container["env"]}
    secret = {name: e["valueFrom"]["secretKeyRef"] for name, e in env.items() if "valueFrom" in e}
    assert {name: (ref["name"], ref["key"]) for name, ref in secret.items()} == {
        "CONSOLE_SESSION_SECRET": (OPERATOR_SECRET, "console-session-secret"),
        "METRICS_TOKEN": (OPERATOR_SECRET, "metrics-token"),
    }, "no database, token or key: every page reads the APIs with the person's credential"
    assert not any(ref.get("optional") for ref in secret.values())
    assert {ref["key"] for ref in secret.values()} <= documented_secret_keys()
    for name in ("INGEST_URL", "LEDGER_URL", "QUOTA_URL"):
        service = env[name]["value"].removeprefix("http://")
        assert one(objects, "Service", service)
    for name, entry in env.items():
        monkeypatch.setenv(name, entry.get("value", f"from the Secret: {name}"))
    settings = ConsoleSettings()
    assert settings.http_port == 8000
    assert settings.console_secure_cookie
    assert settings.console_session_secret is not None
    assert settings.metrics_token is not None


@pytest.mark.parametrize("overlay", sorted(IMAGE_TAGS))
def test_both_overlays_run_the_console(overlay: str) -> None:
    rendered = Render(overlay)
    assert rendered.get("Deployment", "metering-console")
    assert rendered.get("NetworkPolicy", "metering-console")


def test_the_console_pod_is_hardened(objects: list[Obj]) -> None:
    pod = one(objects, "Deployment", "metering-console")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_the_component_is_documented() -> None:
    readme = (Path(__file__).resolve().parents[2] / "deploy" / "README.md").read_text()
    assert "components/console" in readme
