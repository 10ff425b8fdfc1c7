"""The Prometheus rules and Grafana dashboards of deploy/, checked without a running system.

promtool validates the rules and runs their unit tests; the dashboards are checked for shape
(ids, datasource, queries, units); and every metric they name must be one the services define.
Those names come from the services' metric definitions (importing each service's app fills
prometheus_client's registry), not from a scrape: a typo fails here in a second, and
tests/integration/test_dashboards.py proves against live services that every query has data.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "metering-rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "metering-rules.test.yml"
INSTALL_SCRIPT = PROMETHEUS_DIR / "ensure-prometheus.sh"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "metering-prometheus.yaml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "metering.yaml"
SERVICE_APPS = ("ingest.app", "ledger.app", "quota.app", "console.app")

GRAFANA_INTERVALS = ("$__rate_interval", "$__range", "$__interval")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan"}
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_VALUES = re.compile(r"label_values\((.+),\s*(\w+)\)")
_NAME = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\{#\d+\})?")


def tool(name: str) -> str:
    """The path of `prometheus` or `promtool`; a missing one fails the test, never skips it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run {INSTALL_SCRIPT.relative_to(ROOT)} (as root)")
    return path


def load_rules() -> list[dict[str, Any]]:
    """Every recording and alerting rule of the rules file, in order."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def load_dashboard(path: Path) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def provisioned_datasource_uid() -> str:
    [datasource] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    uid: str = datasource["uid"]
    return uid


def panel_queries(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of the dashboard."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def variable_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(name, PromQL) of every query variable: `label_values(selector, label)` becomes
    `count by (label) (selector)`, which has data exactly when the variable has values."""
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found = _LABEL_VALUES.fullmatch(variable["query"])
            assert found, f"{dashboard['title']}: variable {variable['name']} is not label_values"
            selector, label = found.groups()
            yield variable["name"], f"count by ({label}) ({selector})"


def selectors(expr: str) -> list[str]:
    """The instant-vector selectors of a PromQL expression (`name{matchers}`), in order.

    A small tokenizer, enough for our rules and panels: label matchers are set aside, then
    strings, grouping label lists and range durations are dropped, and what remains that is a
    name and not a function, keyword or number is a metric.
    """
    matchers: list[str] = []

    def keep(match: re.Match[str]) -> str:
        matchers.append(match.group(0))
        return f"{{#{len(matchers) - 1}}}"

    text = _MATCHERS.sub(keep, expr)
    text = _STRING.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    found = []
    for match in _NAME.finditer(text):
        name, placeholder = match.groups()
        called = not placeholder and text[match.end() :].lstrip().startswith("(")
        if name in _KEYWORDS or called:
            continue
        found.append(name + (matchers[int(placeholder[2:-1])] if placeholder else ""))
    return found


def metric_name(selector: str) -> str:
    return selector.split("{", 1)[0]


def defined_metric_names() -> set[str]:
    """Every series name the services can expose, from their metric definitions."""
    for module in SERVICE_APPS:
        importlib.import_module(module)
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


# -- the rules -----------------------------------------------------------------------------


def test_promtool_accepts_the_rules() -> None:
    checked = subprocess.run(
        [tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_rule_unit_tests_pass() -> None:
    tested = subprocess.run(
        [tool("promtool"), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_tested_firing_and_staying_quiet() -> None:
    cases = [
        case
        for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in group.get("alert_rule_test", [])
    ]
    for alert in {rule["alert"] for rule in load_rules() if "alert" in rule}:
        mine = [case for case in cases if case["alertname"] == alert]
        assert any(case.get("exp_alerts") for case in mine), f"no test where {alert} fires"
        assert any(not case.get("exp_alerts") for case in mine), f"no test where {alert} is quiet"


def test_every_alert_says_what_it_means_and_what_to_do() -> None:
    for rule in (r for r in load_rules() if "alert" in r):
        annotations = rule.get("annotations", {})
        for field in ("summary", "description", "runbook"):
            assert annotations.get(field, "").strip(), f"{rule['alert']} has no {field}"
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]


RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_ALERTS = (
    "MeteringFactsRejectedByGuard",
    "MeteringPartitionStuck",
    "MeteringOffsetsPastEnd",
    "MeteringConsoleAbsent",
    "MeteringConsoleUpstreamErrors",
)


def runbook_anchors() -> set[str]:
    """The anchors of docs/runbooks.md's headings, as GitHub renders them."""
    text = re.sub(r"^```.*?^```", "", RUNBOOKS.read_text(), flags=re.MULTILINE | re.DOTALL)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)
    return {re.sub(r"[^\w-]", "", h.strip().lower().replace(" ", "-")) for h in headings}


def test_every_runbook_url_points_at_a_runbook_entry() -> None:
    anchors = runbook_anchors()
    rules = [r for r in load_rules() if "alert" in r]
    for alert in RUNBOOK_ALERTS:
        assert any(r["alert"] == alert for r in rules), f"no alert {alert}"
    for rule in rules:
        url = rule["annotations"].get("runbook_url")
        if rule["alert"] in RUNBOOK_ALERTS:
            assert url, f"{rule['alert']} has no runbook_url"
        if url:
            path, _, anchor = url.partition("#")
            assert path == "docs/runbooks.md", f"{rule['alert']}: {url}"
            assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in {path}"


# -- the dashboards ------------------------------------------------------------------------


def test_grafana_provisioning_points_at_the_dashboards_and_one_prometheus() -> None:
    [datasource] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    [provider] = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]
    assert DASHBOARDS, "no dashboard JSON in deploy/grafana/dashboards"


def test_dashboards_are_well_formed() -> None:
    uid = provisioned_datasource_uid()
    uids = [load_dashboard(path)["uid"] for path in DASHBOARDS]
    assert len(set(uids)) == len(uids), uids
    for path in DASHBOARDS:
        dashboard = load_dashboard(path)
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["current"]["value"] == uid, path.name

        def resolves(datasource: dict[str, Any], where: str) -> None:
            assert datasource["type"] == "prometheus", where
            assert datasource["uid"] in (uid, "${datasource}"), where

        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(set(ids)) == len(ids), f"{path.name}: panel ids repeat: {ids}"
        for panel in dashboard["panels"]:
            where = f"{path.name}, panel {panel['title']!r}"
            resolves(panel["datasource"], where)
            assert panel.get("description"), f"{where}: no description"
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
            assert panel.get("targets"), f"{where}: no query"
            for target in panel["targets"]:
                resolves(target["datasource"], where)
                expr = target.get("expr", "").strip()
                assert expr, f"{where}: empty expr"
                used = set(re.findall(r"\$\{?(\w+)", expr)) - {v[1:] for v in GRAFANA_INTERVALS}
                assert used <= set(variables), f"{where}: undefined variables {used} in {expr}"
                assert selectors(expr), f"{where}: no metric in {expr}"


def test_every_metric_used_is_one_the_services_define() -> None:
    rules = load_rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    defined = defined_metric_names() | recorded
    used = [(f"rule {rule.get('record') or rule.get('alert')}", rule["expr"]) for rule in rules]
    for path in DASHBOARDS:
        dashboard = load_dashboard(path)
        for panel, target in panel_queries(dashboard):
            used.append(
                (f"{path.name}, panel {panel['title']!r}, {target['refId']}", target["expr"])
            )
        used.extend((f"{path.name}, variable {v}", q) for v, q in variable_queries(dashboard))
    unknown = {
        f"{where}: {name}"
        for where, expr in used
        for name in map(metric_name, selectors(expr))
        if name not in defined
    }
    assert not unknown, "metrics no service defines:\n" + "\n".join(sorted(unknown))


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'sum by (le) (rate(a_bucket{x="1", y=~"a|b"}[$__rate_interval])) / 1e6',
            ['a_bucket{x="1", y=~"a|b"}'],
        ),
        ("absent(b) or c offset 15m and on (job) d > 0", ["b", "c", "d"]),
        (
            'count(max by (s) (e{s=~"$subscription"}) >= 0.9) or vector(0)',
            ['e{s=~"$subscription"}'],
        ),
        ('label_replace(f, "dst", "$1", "src", "(.*)")', ["f"]),
    ],
)
def test_selectors_are_read_from_promql(expr: str, expected: list[str]) -> None:
    assert selectors(expr) == expected
