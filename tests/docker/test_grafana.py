"""docker/grafana/: the dashboard and alert rules parse, are provisioned by Compose, and read only metrics
that a live server exports.

promtool and Grafana are not at hand, so every PromQL expression goes through promql.py's parser, and the
metric names it reads are checked against the /metrics of the serving image's own command (one worker, so
that every declared metric family is listed even before it has a value).
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from dockerimage import DOCKER_DIR, Dockerfile, ServingInstall
from prometheus_client.parser import text_string_to_metric_families
from promql import PromQLError, Selector, parse, selectors
from test_image_contract import digit_png, loopback, run_image

from cnnserve.protos import inference_pb2, inference_pb2_grpc

GRAFANA = DOCKER_DIR / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "cnnserve.json"
ALERTS = GRAFANA / "alerts.yml"
# Series that Prometheus makes itself for every target, not read from /metrics.
SCRAPE_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
# Labels that Prometheus or the multi-worker exposition add to every series.
ADDED_LABELS = frozenset({"instance", "job", "service", "pid"})
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [p for p in found if p["type"] != "row"]


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: its panels' targets and its query variables' selectors."""
    expressions = [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = LABEL_VALUES.match(variable["definition"])
        assert match, f"variable {variable['name']}: {variable['definition']!r} is not label_values(...)"
        assert variable["query"]["query"] == variable["definition"]
        if match["selector"]:
            expressions.append(match["selector"])
    return expressions


def rule_expressions(rules: list[dict[str, Any]]) -> list[str]:
    return [rule["expr"] for rule in rules]


# --- offline ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        'sum by (model) (rate(cnnserve_images_total{model=~"$model"}[$__rate_interval]))',
        "histogram_quantile(0.99, sum by (le) (rate(cnnserve_request_latency_seconds_bucket[5m]))) > 0.2",
        "changes(max by (instance) (cnnserve_process_start_time_seconds)[15m:1m]) > 0",
        "a / on (x) group_left (y) b > bool 1 and on () c",
        "-x ^ 2 offset 5m",
        "topk(3, sum(x) by (a))",
    ],
)
def test_parser_accepts_promql(expression: str) -> None:
    parse(expression)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("rate(cnnserve_requests_total)", "range vector"),
        ("sum(rate(x[5m])", "expected \\)"),
        ("histogram_quantil(0.9, x)", "unknown function"),
        ("sum(x[5m])", "instant vector"),
        ("(x)[5m]", "bare selector"),
        ("x{code=OK}", "expected string"),
        ("x and 1", "vectors on both sides"),
        ("{}", "metric name"),
        ("x[5z]", "duration"),
    ],
)
def test_parser_rejects_what_prometheus_rejects(expression: str, reason: str) -> None:
    with pytest.raises(PromQLError, match=reason):
        parse(expression)


def test_dashboard_has_the_operators_panels(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] == "cnnserve"
    titles = " | ".join(p["title"].lower() for p in panels(dashboard))
    for wanted in (
        "throughput",
        "latency percentiles",
        "queue time vs compute time",
        "batch size distribution",
        "errors by code",
        "resident memory",
        "in-flight",
        "gpu",
    ):
        assert wanted in titles, f"no panel about {wanted!r}: {titles}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    # Panels tile the grid (24 columns) without overlapping.
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        for x in range(box["x"], box["x"] + box["w"]):
            for y in range(box["y"], box["y"] + box["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))


def test_dashboard_queries_parse_and_use_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            try:
                parse(target["expr"])
            except PromQLError as error:
                pytest.fail(f"panel {panel['title']!r}: {error}")
            for name in re.findall(r"\$(\w+)", target["expr"]):
                assert name.startswith("__") or name in variables, f"{panel['title']}: unknown ${name}"


def test_alert_rules_parse_and_cover_what_an_operator_pages_on(rules: list[dict[str, Any]]) -> None:
    names = {rule["alert"] for rule in rules}
    for wanted in (
        "CnnserveHighErrorRate",
        "CnnserveHighLatencyP99",
        "CnnserveQueueFull",
        "CnnserveWorkerRestarted",
    ):
        assert wanted in names
    for rule in rules:
        try:
            expression = parse(rule["expr"])
        except PromQLError as error:
            pytest.fail(f"alert {rule['alert']}: {error}")
        assert expression.kind == "vector", f"alert {rule['alert']} must be a vector expression"
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


def test_compose_observe_profile_provisions_prometheus_grafana_and_jaeger(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("prometheus", "grafana", "jaeger"):
        assert services[name]["profiles"] == ["observe"], name
    assert "profiles" not in services["server"]  # the server runs with or without the profile

    def mounts(service: str) -> dict[str, Path]:
        found = {}
        for entry in services[service]["volumes"]:
            source, target, *_ = entry.split(":")
            found[target] = (DOCKER_DIR / source).resolve()
        return found

    prometheus = mounts("prometheus")
    config = yaml.safe_load(prometheus["/etc/prometheus/prometheus.yml"].read_text(encoding="utf-8"))
    (pattern,) = config["rule_files"]
    rule_targets = [target for target in prometheus if Path(target).match(pattern)]
    assert [prometheus[t] for t in rule_targets] == [ALERTS.resolve()]

    grafana = mounts("grafana")
    datasources = yaml.safe_load(
        (grafana["/etc/grafana/provisioning/datasources"] / "datasources.yaml").read_text(encoding="utf-8")
    )
    by_type = {d["type"]: d for d in datasources["datasources"]}
    assert by_type["prometheus"]["uid"] == "prometheus"
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    assert by_type["jaeger"]["url"].startswith("http://jaeger:")
    provider = yaml.safe_load(
        (grafana["/etc/grafana/provisioning/dashboards"] / "cnnserve.yaml").read_text(encoding="utf-8")
    )
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert grafana[dashboards_path] == DASHBOARD.parent.resolve()

    server = services["server"]["environment"]
    assert server["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    assert "4317:4317" in services["jaeger"]["ports"]


# --- against a live server ----------------------------------------------------------------------------


def exported_series(text: str) -> dict[str, set[str]]:
    """Every series name a /metrics page can hold, with the labels its samples carry (a family without a
    value yet is listed with the names its type gives it)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, ("",)):
            series.setdefault(family.name + suffix, set())
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def unknown_reads(expressions: list[str], series: dict[str, set[str]]) -> list[str]:
    problems = []
    for expression in expressions:
        for selector in selectors(expression):
            problems += _check(selector, series, expression)
    return problems


def _check(selector: Selector, series: dict[str, set[str]], expression: str) -> list[str]:
    if selector.name in SCRAPE_SERIES:
        return []
    if selector.name not in series:
        return [f"{selector.name} (in {expression!r}) is not exported"]
    labels = series[selector.name]
    if not labels:  # no sample yet to learn its labels from
        return []
    return [
        f"{selector.name} has no label {label!r} (in {expression!r}); it has {sorted(labels)}"
        for label, _, _ in selector.matchers
        if label not in labels | ADDED_LABELS | {"__name__"}
    ]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_metric_in_the_dashboard_and_alerts_is_exported_by_a_live_server(
    dashboard: dict[str, Any],
    rules: list[dict[str, Any]],
    serving_install: ServingInstall,
    cpu_dockerfile: Dockerfile,
    model_repository: Path,
    tmp_path: Path,
) -> None:
    overrides = loopback(model_repository, CNNSERVE_WORKERS="1")
    with run_image(cpu_dockerfile.final, serving_install, tmp_path, overrides) as server:
        server.wait_healthy()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            image = inference_pb2.Image(encoded=digit_png(7))
            stub.Classify(inference_pb2.ClassifyRequest(model="mnist_cnn", images=[image]), timeout=30)
            for request in (
                inference_pb2.ClassifyRequest(model="no_such_model", images=[image]),
                inference_pb2.ClassifyRequest(model="mnist_cnn", images=[inference_pb2.Image(encoded=b"x")]),
            ):
                with pytest.raises(grpc.RpcError):
                    stub.Classify(request, timeout=30)
        url = f"http://127.0.0.1:{overrides['CNNSERVE_METRICS_PORT']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        assert server.terminate() == 0, server.log()
    series = exported_series(text)
    problems = unknown_reads(dashboard_expressions(dashboard) + rule_expressions(rules), series)
    assert not problems, "\n".join(problems)
    # The check has teeth: a misspelt metric or label is reported.
    assert unknown_reads(["rate(cnnserve_request_total[5m])"], series)
    assert unknown_reads(['cnnserve_request_failures_total{status="NOT_FOUND"}'], series)
