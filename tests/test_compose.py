"""Static checks of the compose stack and its configuration files.

Docker is not needed: compose files are checked against the Compose Specification schema,
Prometheus and Alertmanager configs against their SchemaStore schemas and with promtool /
amtool, and the Elasticsearch and Kibana files against the signal definitions they serve.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import yaml
from jsonschema import Draft7Validator

from obs.signals import DEFAULT_PORTS, ECS_FIELDS, Field
from obs.torchserve import LOG4J_CONFIG
from tests.support.paths import REPO as ROOT
from tests.support.paths import SCHEMAS

COMPOSE = ROOT / "compose"
COMPOSE_FILES = sorted(COMPOSE.glob("compose*.yaml"))
ALERTMANAGER_FILES = [COMPOSE / "alertmanager" / "alertmanager.yml"] + sorted(
    (COMPOSE / "alertmanager" / "examples").glob("*.yml")
)
ONE_SHOT_JOBS = {"elasticsearch-setup", "kibana-setup"}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _schema(name: str) -> Draft7Validator:
    path = SCHEMAS / name
    if not path.exists():
        pytest.fail(f"schema {path} is missing (see tests/schemas/SOURCES.md)")
    return Draft7Validator(json.loads(path.read_text()))


def _errors(validator: Draft7Validator, document: Any) -> List[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def _services() -> Dict[str, Dict[str, Any]]:
    return _load(COMPOSE / "compose.yaml")["services"]


def test_compose_files_exist() -> None:
    assert [p.name for p in COMPOSE_FILES] == ["compose.gpu.yaml", "compose.yaml"]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_matches_the_compose_spec(path: Path) -> None:
    assert _errors(_schema("compose-spec.json"), _load(path)) == []


def test_the_stack_has_every_component() -> None:
    assert set(_services()) == {
        "torchserve",
        "exporter",
        "prometheus",
        "alertmanager",
        "grafana",
        "fluentd",
        "elasticsearch",
        "elasticsearch-setup",
        "kibana",
        "kibana-setup",
    }


def _published_ports() -> Iterator[Tuple[str, str]]:
    for path in COMPOSE_FILES:
        for name, service in (_load(path).get("services") or {}).items():
            for port in service.get("ports", []):
                yield name, port


def test_every_published_port_is_on_loopback() -> None:
    ports = list(_published_ports())
    assert len(ports) >= 9
    for name, port in ports:
        assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)


def test_published_ports_are_the_usual_ones() -> None:
    host_ports = {int(port.split(":")[1]) for _, port in _published_ports()}
    assert host_ports == set(DEFAULT_PORTS.values())


def _images() -> Iterator[Tuple[str, str]]:
    for path in COMPOSE_FILES:
        for name, service in (_load(path).get("services") or {}).items():
            if "image" in service:
                yield name, service["image"]
    for dockerfile in COMPOSE.glob("*/Dockerfile"):
        for match in re.finditer(r"^(?:ARG BASE_IMAGE=|FROM )(\S+)", dockerfile.read_text(), re.M):
            if not match.group(1).startswith("$"):
                yield str(dockerfile.relative_to(ROOT)), match.group(1)
        assert re.search(r"^FROM ", dockerfile.read_text(), re.M), dockerfile


def test_every_image_is_pinned_to_a_version() -> None:
    images = list(_images())
    assert len(images) >= 10
    for owner, image in images:
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), (owner, image)


def test_gpu_override_uses_the_official_gpu_image_and_reserves_gpus() -> None:
    torchserve = _load(COMPOSE / "compose.gpu.yaml")["services"]["torchserve"]
    assert torchserve["build"]["args"]["BASE_IMAGE"] == "pytorch/torchserve:0.12.0-gpu"
    devices = torchserve["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_long_running_services_have_healthchecks_and_ordered_starts() -> None:
    services = _services()
    for name, service in services.items():
        if name not in ONE_SHOT_JOBS:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, (name, dependency)
            wanted = condition["condition"]
            if dependency in ONE_SHOT_JOBS:
                assert wanted == "service_completed_successfully", (name, dependency)
            elif name != "exporter":
                assert wanted == "service_healthy", (name, dependency, wanted)
    assert services["fluentd"]["depends_on"] == {
        "elasticsearch-setup": {"condition": "service_completed_successfully"}
    }


def test_no_secret_is_committed() -> None:
    grafana = _services()["grafana"]["environment"]
    # Required from the user's .env, with a message that says how to provide it.
    assert re.fullmatch(
        r"\$\{GRAFANA_ADMIN_PASSWORD:\?.*\.env.*\}", grafana["GF_SECURITY_ADMIN_PASSWORD"]
    )
    example = (COMPOSE / ".env.example").read_text()
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=$", example, re.M)
    assert (COMPOSE / ".gitignore").read_text().split() == [".env"]
    for path in COMPOSE.rglob("*"):
        if path.is_file() and path.name != ".env.example":
            text = path.read_text(errors="replace")
            assert not re.search(
                r"(?i)(password|api_key|routing_key|api_url)\s*[:=](?![?-])\s*(?!\$\{)\S{4,}", text
            ), path


def test_torchserve_serves_prometheus_metrics_and_keeps_token_auth() -> None:
    props = (COMPOSE / "torchserve" / "config.properties").read_text()
    assert re.search(r"^metrics_mode=prometheus$", props, re.M)
    assert "disable_token_authorization" not in props
    entrypoint = (COMPOSE / "torchserve" / "entrypoint.sh").read_text()
    assert "--foreground" in entrypoint and "--disable-token-auth" not in entrypoint
    assert "--log-config" in entrypoint


def test_torchserve_healthcheck_is_python39_compatible_and_uses_the_token() -> None:
    source = (COMPOSE / "torchserve" / "healthcheck.py").read_text()
    compile(source, "healthcheck.py", "exec", flags=0, dont_inherit=True)
    assert "key_file.json" in source and "Bearer" in source
    assert not re.search(r"\bmatch\b .*:|\|\s*None|: dict\[", source)


@pytest.mark.parametrize(
    "mount, folder", [("../alerts:", "alerts"), ("../dashboards:", "dashboards")]
)
def test_generated_files_are_mounted_not_copied(mount: str, folder: str) -> None:
    volumes = [v for s in _services().values() for v in s.get("volumes", [])]
    assert any(v.startswith(mount) and v.endswith(":ro") for v in volumes), volumes
    assert (ROOT / folder).is_dir()


# --- log4j2: JSON lines raw into model_log.jsonl, other lines as log4j text -------------


def _json_line_regex() -> re.Pattern[str]:
    root = ET.parse(LOG4J_CONFIG).getroot()
    filters = {
        a.get("name"): a.find("RegexFilter")
        for a in root.iter("RollingFile")
        if a.find("RegexFilter") is not None
    }
    assert set(filters) == {"model_json", "model_log"}
    assert (
        filters["model_json"].get("onMatch") == "ACCEPT"
        and filters["model_log"].get("onMatch") == "DENY"
    )
    assert filters["model_json"].get("regex") == filters["model_log"].get("regex")
    return re.compile(filters["model_json"].get("regex"))


def test_log4j_routes_json_lines_apart_from_text_lines() -> None:
    regex = _json_line_regex()
    assert regex.fullmatch('{"timestamp":"2026-11-26T02:55:31.677Z","event":"request_completed"}')
    assert not regex.fullmatch("Torch worker started.")
    assert not regex.fullmatch("Traceback (most recent call last):")
    assert not regex.fullmatch(
        "[METRICS]HandlerTime.Milliseconds:1.0|#ModelName:m,Level:Model|#hostname:h"
    )


def test_log4j_collects_each_line_once() -> None:
    loggers = {
        lg.get("name"): lg
        for lg in ET.parse(LOG4J_CONFIG).getroot().iter("Logger")
    }
    for name in ("MODEL_LOG", "org.pytorch.serve"):
        assert loggers[name].get("additivity") == "false", name
    model_log = loggers["MODEL_LOG"]
    assert {r.get("ref") for r in model_log.iter("AppenderRef")} == {
        "model_json",
        "model_log",
        "STDOUT",
    }


# --- Fluentd --------------------------------------------------------------------------


def _fluentd_conf() -> str:
    """fluent.conf with the Elasticsearch output it includes by default."""
    folder = COMPOSE / "fluentd"
    return (folder / "fluent.conf").read_text() + (folder / "output-elasticsearch.conf").read_text()


def test_fluentd_conf_keeps_its_own_logs_out_and_bounds_buffers() -> None:
    conf = _fluentd_conf()
    assert "<label @FLUENT_LOG>" in conf
    assert re.search(r"^<match torchserve torchserve\.\*\*>", conf, re.M), "no catch-all <match **>"
    assert not re.search(r"^\s*<match \*\*>", conf, re.M)
    for setting in (
        "total_limit_size",
        "overflow_action drop_oldest_chunk",
        "retry_type exponential_backoff",
        "retry_max_interval",
        "retry_timeout",
        "verify_es_version_at_startup false",
        "reserve_time true",
        "write_operation create",
    ):
        assert setting in conf, setting
    dockerfile = (COMPOSE / "fluentd" / "Dockerfile").read_text()
    es_image = _services()["elasticsearch"]["image"]
    es_major = es_image.rsplit(":", 1)[1].split(".")[0]
    assert re.search(rf"gem install .*elasticsearch -v {es_major}\.\d+\.\d+", dockerfile)
    assert re.search(r"fluent-plugin-elasticsearch -v \d+\.\d+\.\d+", dockerfile)


def test_fluentd_parses_the_log4j_prefix_torchserve_writes() -> None:
    conf = (COMPOSE / "fluentd" / "fluent.conf").read_text()
    regex = re.search(r"format1 /(.*)/$", conf, re.M).group(1).replace("(?<", "(?P<")
    line = "2026-11-26T02:55:31,677 [INFO ] W-9000-mymodel_1.0-stdout MODEL_LOG - Torch worker started."
    fields = re.match(regex, line).groupdict()
    assert fields == {
        "time": "2026-11-26T02:55:31,677",
        "level": "INFO",
        "thread": "W-9000-mymodel_1.0-stdout",
        "logger": "MODEL_LOG",
        "message": "Torch worker started.",
    }


# --- Elasticsearch and Kibana -----------------------------------------------------------

FIELD_TYPES = {
    Field.TIMESTAMP: "date_nanos",
    Field.REQUEST_ID: "keyword",
    Field.REQUEST_IDS: "keyword",
    Field.CLIENT_REQUEST_ID: "keyword",
    Field.TRACE_ID: "keyword",
    Field.SPAN_ID: "keyword",
    Field.DURATION_MS: "double",
    Field.PREPROCESS_MS: "double",
    Field.INFERENCE_MS: "double",
    Field.POSTPROCESS_MS: "double",
    Field.STATUS: "integer",
    Field.BATCH_SIZE: "integer",
    Field.MODEL: "keyword",
    Field.OUTCOME: "keyword",
    Field.LEVEL: "keyword",
}


def _mapping(template: Dict[str, Any], dotted: str) -> Dict[str, Any]:
    node: Dict[str, Any] = {"properties": template["template"]["mappings"]["properties"]}
    for part in dotted.split("."):
        node = node["properties"][part]
    return node


def _all_fields() -> List[str]:
    return [value for name, value in vars(Field).items() if name.isupper()]


@pytest.mark.parametrize("mode", ["otel", "ecs"])
def test_index_template_maps_every_log_field(mode: str) -> None:
    template = json.loads((COMPOSE / "elasticsearch" / f"index-template-{mode}.json").read_text())
    assert template["index_patterns"] == [f"tsobs-logs-{mode}*"] and "data_stream" in template
    assert template["template"]["settings"]["index.lifecycle.name"] == "tsobs-logs"
    rename = ECS_FIELDS if mode == "ecs" else {}
    for field in _all_fields():
        assert "type" in _mapping(template, rename.get(field, field)), field
    for field, es_type in FIELD_TYPES.items():
        assert _mapping(template, rename.get(field, field))["type"] == es_type, field
    assert _mapping(template, "@timestamp")["type"] == "date_nanos"


def test_ilm_policy_rolls_over_and_deletes() -> None:
    policy = json.loads((COMPOSE / "elasticsearch" / "ilm-policy.json").read_text())["policy"]
    assert "rollover" in policy["phases"]["hot"]["actions"]
    assert "delete" in policy["phases"]["delete"]["actions"]
    setup = (COMPOSE / "elasticsearch" / "setup.sh").read_text()
    for path in (
        "_ilm/policy/tsobs-logs",
        "_index_template/tsobs-logs-otel",
        "_index_template/tsobs-logs-ecs",
    ):
        assert path in setup


def test_data_streams_avoid_the_builtin_logs_templates() -> None:
    # logs-*-* would pick up Elasticsearch's built-in templates (LogsDB) instead of ours.
    conf = _fluentd_conf()
    (stream,) = re.findall(r"^\s*index_name (.*)$", conf, re.M)
    assert stream.startswith('"tsobs-logs-') and not stream.startswith('"logs-')
    assert _services()["fluentd"]["environment"]["TSOBS_LOG_FIELDS"].startswith("${TSOBS_LOG_FIELDS")


def test_kibana_saved_search_finds_lines_by_request_id() -> None:
    objects = [
        json.loads(line)
        for line in (COMPOSE / "kibana" / "saved-objects.ndjson").read_text().splitlines()
    ]
    by_type = {o["type"]: o for o in objects}
    data_view, search = by_type["index-pattern"], by_type["search"]
    assert data_view["attributes"]["title"] == "tsobs-logs-*"
    assert data_view["attributes"]["timeFieldName"] == "@timestamp"
    assert search["references"][0]["id"] == data_view["id"]
    query = json.loads(search["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])["query"][
        "query"
    ]
    for field in (
        Field.REQUEST_ID,
        Field.REQUEST_IDS,
        ECS_FIELDS[Field.REQUEST_ID],
        ECS_FIELDS[Field.CLIENT_REQUEST_ID],
    ):
        assert f"{field} :" in query, field


# --- Prometheus and Alertmanager ----------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: apt-get install prometheus prometheus-alertmanager")
    return path


def test_prometheus_config_matches_its_schema() -> None:
    config = _load(COMPOSE / "prometheus" / "prometheus.yml")
    assert _errors(_schema("schemastore-prometheus.json"), config) == []
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"torchserve", "torchserve-obs"} <= jobs


@pytest.mark.prometheus
def test_promtool_accepts_prometheus_config() -> None:
    result = subprocess.run(
        [_tool("promtool"), "check", "config", str(COMPOSE / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", ALERTMANAGER_FILES, ids=lambda p: p.name)
def test_alertmanager_config_matches_its_schema(path: Path) -> None:
    assert _errors(_schema("schemastore-prometheus-alertmanager.json"), _load(path)) == []


@pytest.mark.prometheus
@pytest.mark.parametrize("path", ALERTMANAGER_FILES, ids=lambda p: p.name)
def test_amtool_accepts_alertmanager_config(path: Path) -> None:
    result = subprocess.run(
        [_tool("amtool"), "check-config", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_examples_cover_the_usual_pagers() -> None:
    kinds = set()
    for path in ALERTMANAGER_FILES:
        for receiver in _load(path)["receivers"]:
            kinds.update(key for key in receiver if key.endswith("_configs"))
            for configs in (v for k, v in receiver.items() if k.endswith("_configs")):
                for config in configs:
                    # Secrets come from files mounted at run time.
                    assert any(k.endswith("_file") for k in config), (path.name, receiver["name"])
    assert {"pagerduty_configs", "opsgenie_configs", "slack_configs"} <= kinds
