"""The committed Kubernetes manifests, validated offline as the API server and operators would.

No cluster runs here. Core objects are validated with kubernetes-validate in strict mode
(unknown fields rejected) against the pinned Kubernetes version; PodMonitor and
InferenceService against the datreeio JSON schemas of their CRDs (unknown fields rejected);
the GPU overlay's patch is applied as kustomize would (RFC 6902) and its result validated.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import jsonpatch
import kubernetes_validate
import yaml
from jsonschema import Draft7Validator

from obs.generate import config, kubernetes, writers
from obs.signals import DEFAULT_PORTS
from tests.support.paths import REPO, SCHEMAS

KUBERNETES_VERSION = "1.32.0"
"""The version the README names; kubernetes-validate 1.37.0 ships its schemas."""
K8S = REPO / "kubernetes"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitor_v1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): (
        "serving.kserve.io_inferenceservice_v1beta1.json"
    ),
}
LAST_APPLIED_LIMIT = 262144
"""Bytes an annotation may hold: ``kubectl apply`` (client side) stores the object there."""


def _documents() -> Iterator[Tuple[Path, Dict[str, Any]]]:
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.name.endswith(".patch.yaml"):
            continue
        yield path, yaml.safe_load(path.read_text())


def _by_kind(kind: str, directory: str) -> Dict[str, Any]:
    (doc,) = [d for p, d in _documents() if d["kind"] == kind and p.parent.name == directory]
    return doc


def _crd_validator(doc: Dict[str, Any]) -> Draft7Validator:
    name = CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]
    return Draft7Validator(json.loads((SCHEMAS / f"datreeio-crds-catalog-{name}").read_text()))


def _strict_errors(doc: Dict[str, Any]) -> List[str]:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [err.message]
    return []


def test_every_manifest_validates() -> None:
    kinds = set()
    for path, doc in _documents():
        kinds.add(doc["kind"])
        if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:
            errors = [e.message for e in _crd_validator(doc).iter_errors(doc)]
        elif doc["kind"] == "PrometheusRule":
            continue  # tests/test_generate.py validates it against the operator's CRD
        else:
            errors = _strict_errors(doc)
        assert errors == [], f"{path.relative_to(REPO)}: {errors}"
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "PodMonitor"} <= kinds
    assert {"InferenceService", "DaemonSet", "Job", "ConfigMap", "PrometheusRule"} <= kinds


def test_validators_reject_what_the_server_would() -> None:
    """The checks above are strict: a misspelt field fails each of them."""
    deployment = copy.deepcopy(_by_kind("Deployment", "torchserve"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    assert _strict_errors(deployment)
    for kind, directory in (("PodMonitor", "torchserve"), ("InferenceService", "kserve")):
        doc = copy.deepcopy(_by_kind(kind, directory))
        doc["spec"]["selectr"] = {}
        assert list(_crd_validator(doc).iter_errors(doc)), kind


def test_gpu_overlay_patches_into_a_valid_gpu_deployment() -> None:
    base = _by_kind("Deployment", "torchserve")
    overlay = yaml.safe_load((K8S / "torchserve-gpu" / "kustomization.yaml").read_text())
    (patch_ref,) = overlay["patches"]
    assert patch_ref["target"]["kind"] == "Deployment"
    assert patch_ref["target"]["name"] == base["metadata"]["name"]
    patch = yaml.safe_load((K8S / "torchserve-gpu" / patch_ref["path"]).read_text())
    gpu = jsonpatch.apply_patch(base, patch)
    assert _strict_errors(gpu) == []
    torchserve, exporter = gpu["spec"]["template"]["spec"]["containers"]
    assert torchserve["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert torchserve["image"] == exporter["image"] == kubernetes.GPU_IMAGE


def test_kustomizations_list_every_manifest_and_resolve() -> None:
    """What ``kubectl apply -k`` reads exists, and no manifest is left out of it."""
    for kustomization in sorted(K8S.glob("*/kustomization.yaml")):
        directory = kustomization.parent
        spec = yaml.safe_load(kustomization.read_text())
        listed = set()
        for ref in spec["resources"]:
            target = (directory / ref).resolve()
            if target.is_dir():
                assert (target / "kustomization.yaml").exists(), f"{directory.name}: {ref}"
            else:
                assert target.exists() and target.parent == directory, f"{directory.name}: {ref}"
                listed.add(target.name)
        for generator in spec.get("configMapGenerator", []):
            for name in generator["files"]:
                assert (directory / name).exists(), f"{directory.name}: {name}"
        for patch in spec.get("patches", []):
            assert (directory / patch["path"]).exists()
        manifests = {
            p.name
            for p in directory.glob("*.yaml")
            if p.name != "kustomization.yaml" and not p.name.endswith(".patch.yaml")
        }
        assert manifests == listed, directory.name
    setup = yaml.safe_load((REPO / "compose/elasticsearch/kustomization.yaml").read_text())
    (generator,) = setup["configMapGenerator"]
    job = _by_kind("Job", "logging")
    assert job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == generator["name"]
    compose_files = {p.name for p in (REPO / "compose/elasticsearch").iterdir()}
    assert set(generator["files"]) == compose_files - {"kustomization.yaml"}


def _named_ports(pod_spec: Dict[str, Any]) -> Dict[str, int]:
    return {
        port["name"]: port["containerPort"]
        for container in pod_spec["containers"]
        for port in container.get("ports", [])
    }


def test_pod_ports_probes_and_shared_metrics_dir() -> None:
    pod = _by_kind("Deployment", "torchserve")["spec"]["template"]["spec"]
    ports = _named_ports(pod)
    assert sorted(ports.values()) == sorted(
        DEFAULT_PORTS[k] for k in ("inference", "management", "torchserve_metrics", "exporter")
    )
    torchserve, exporter = pod["containers"]
    for container in pod["containers"]:
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] in ports
        assert container["resources"]["requests"] and container["resources"]["limits"]
    assert torchserve["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert exporter["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    # Both containers see the workers' files: TorchServe writes, the exporter reads.
    env = {e["name"]: e.get("value") for e in torchserve["env"]}
    mounts = {
        c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]} for c in pod["containers"]
    }
    assert mounts[torchserve["name"]]["tsobs-metrics"] == env["PROMETHEUS_MULTIPROC_DIR"]
    assert (
        exporter["args"][exporter["args"].index("--metrics-dir") + 1]
        == env["PROMETHEUS_MULTIPROC_DIR"]
    )
    assert {"name": "tsobs-metrics", "emptyDir": {"sizeLimit": "256Mi"}} in pod["volumes"]
    # The exporter listens on the pod IP (Prometheus reaches it there), not everywhere.
    assert exporter["args"][exporter["args"].index("--host") + 1] == "$(POD_IP)"
    properties = _by_kind("ConfigMap", "torchserve")["data"]["config.properties"]
    assert "metrics_mode=prometheus" in properties.splitlines()


def test_network_policy_keeps_management_and_metrics_to_who_needs_them() -> None:
    pod = _by_kind("Deployment", "torchserve")["spec"]["template"]["spec"]
    ports = _named_ports(pod)
    policy = _by_kind("NetworkPolicy", "torchserve")["spec"]
    assert (
        policy["podSelector"]["matchLabels"].items()
        <= _by_kind("Deployment", "torchserve")["spec"]["template"]["metadata"]["labels"].items()
    )
    allowed: Dict[int, Any] = {}
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            allowed[ports[port["port"]]] = rule.get("from")
    assert allowed[DEFAULT_PORTS["inference"]] is None  # any client in the cluster
    (prometheus,) = allowed[DEFAULT_PORTS["exporter"]]
    assert allowed[DEFAULT_PORTS["torchserve_metrics"]] == [prometheus]
    assert prometheus["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": config.DEFAULTS["kubernetes"]["namespace"]
    }
    (client,) = allowed[DEFAULT_PORTS["management"]]
    assert client == {"podSelector": {"matchLabels": {kubernetes.MANAGEMENT_CLIENT_LABEL: "true"}}}
    service = _by_kind("Service", "torchserve")["spec"]
    assert [p["port"] for p in service["ports"]] == [DEFAULT_PORTS["inference"]]


def _relabelled_jobs(monitor: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(port, job) of each endpoint; every endpoint also sets ``instance`` to the pod name."""
    jobs = []
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        (job,) = [r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
        (instance,) = [r for r in endpoint["relabelings"] if r["targetLabel"] == "instance"]
        assert instance["sourceLabels"] == ["__meta_kubernetes_pod_name"]
        jobs.append((endpoint["port"], job))
    return jobs


def test_pod_monitor_gives_the_jobs_the_rules_select() -> None:
    monitor = _by_kind("PodMonitor", "torchserve")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pod_labels = _by_kind("Deployment", "torchserve")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert _relabelled_jobs(monitor) == [
        ("ts-metrics", "torchserve"),
        ("tsobs-metrics", "torchserve-obs"),
    ]
    # A config with other selectors changes the relabelling with them.
    cfg = config.resolve(
        {
            "torchserve_selector": 'job="ts", env="prod"',
            "exporter_selector": 'job="ts-obs"',
            "kubernetes": {"monitor_labels": {"prometheus": "main"}},
        }
    )
    files = writers.build(cfg)
    custom = yaml.safe_load(files["kubernetes/torchserve/podmonitor.yaml"])
    assert _relabelled_jobs(custom) == [("ts-metrics", "ts"), ("tsobs-metrics", "ts-obs")]
    assert custom["metadata"]["labels"]["prometheus"] == "main"


def test_kserve_scrapes_the_exporter_port_that_carries_both() -> None:
    isvc = _by_kind("InferenceService", "kserve")
    annotations = isvc["metadata"]["annotations"]
    predictor = isvc["spec"]["predictor"]
    (exporter,) = predictor["containers"]
    assert annotations["prometheus.kserve.io/port"] == str(DEFAULT_PORTS["exporter"])
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert predictor["model"]["modelFormat"]["name"] == "pytorch"
    args = exporter["args"]
    upstream = args[args.index("--torchserve-metrics") + 1]
    assert upstream == f"http://127.0.0.1:{DEFAULT_PORTS['torchserve_metrics']}/metrics"
    env = {e["name"]: e["value"] for e in predictor["model"]["env"]}
    assert args[args.index("--metrics-dir") + 1] == env["PROMETHEUS_MULTIPROC_DIR"]
    monitor = _by_kind("PodMonitor", "kserve")
    port = exporter["ports"][0]["name"]
    # The one port is scraped as each job, each keeping its own series, as if two ports.
    assert _relabelled_jobs(monitor) == [(port, "torchserve"), (port, "torchserve-obs")]
    as_torchserve, as_exporter = monitor["spec"]["podMetricsEndpoints"]
    for endpoint, action in ((as_torchserve, "drop"), (as_exporter, "keep")):
        (rule,) = endpoint["metricRelabelings"]
        assert rule["action"] == action and rule["sourceLabels"] == ["__name__"]
        assert re.fullmatch(rule["regex"], "tsobs_requests_total")
        assert not re.fullmatch(rule["regex"], "ts_inference_requests_total")


def test_dashboards_configmap_fits_client_side_apply() -> None:
    """``kubectl apply`` keeps the whole object in an annotation limited to 256 KiB."""
    configmap = yaml.safe_load((REPO / writers.CONFIGMAP_FILE).read_text())
    assert len(json.dumps(configmap)) < LAST_APPLIED_LIMIT


def test_log_collector_reads_the_workload_namespace_and_no_api() -> None:
    daemonset = _by_kind("DaemonSet", "logging")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert {"name": "varlog", "mountPath": "/var/log", "readOnly": True} in container[
        "volumeMounts"
    ]
    conf = (K8S / "logging" / "fluent.conf").read_text()
    namespace = config.DEFAULTS["kubernetes"]["workload_namespace"]
    assert f"/*_{namespace}_*.log" in conf
    assert kubernetes.fluentd_conf("prod") != conf and "/*_prod_*.log" in kubernetes.fluentd_conf(
        "prod"
    )
