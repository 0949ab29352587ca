"""Kubernetes manifests: TorchServe with the exporter, scraping, KServe, log collection.

Every object is a function of the generator's config, so the scrape jobs the PodMonitors
produce are the ones the rules and dashboards select (``torchserve_selector`` and
``exporter_selector``), and the namespaces and release labels match the PrometheusRule and
dashboard ConfigMap. :func:`manifests` returns documents by path; :mod:`writers` serialises.

Layout (each directory a kustomization, ``kubectl apply -k DIR``):

- ``kubernetes/torchserve``: Deployment (TorchServe + exporter sidecar), Service, PDB,
  NetworkPolicy, PodMonitor, config.properties.
- ``kubernetes/torchserve-gpu``: overlay on the above (GPU image, ``nvidia.com/gpu``).
- ``kubernetes/monitoring``: PrometheusRule and the dashboards ConfigMap.
- ``kubernetes/kserve``: an InferenceService with the exporter serving both metric sets on
  one port, and its PodMonitor.
- ``kubernetes/logging``: a Fluentd DaemonSet reading the pods' CRI log files.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any, Dict, List, Mapping, Tuple

from obs.signals import DEFAULT_PORTS, PREFIX

ROOT = "kubernetes"
KUSTOMIZATION = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}

IMAGE = "torchserve-obs/torchserve:0.1.0-cpu"
"""Built from compose/torchserve/Dockerfile; rename with kustomize ``images:``."""
GPU_IMAGE = "torchserve-obs/torchserve:0.1.0-gpu"
KSERVE_IMAGE = "torchserve-obs/torchserve-kfs:0.1.0"
"""KServe's TorchServe runtime image plus the package: kubernetes/kserve/Dockerfile."""
FLUENTD_IMAGE = "torchserve-obs/fluentd:1.16.5-es8"
"""Built from compose/fluentd/Dockerfile (Fluentd 1.16 with the Elasticsearch output)."""

APP = "torchserve"
TS_CONTAINER = "torchserve"
EXPORTER_CONTAINER = "tsobs-exporter"
HOME = "/home/model-server"
METRICS_DIR = f"{HOME}/metrics"
"""PROMETHEUS_MULTIPROC_DIR in both containers: an emptyDir they share."""

PORTS = {
    "inference": ("http-inference", DEFAULT_PORTS["inference"]),
    "management": ("http-management", DEFAULT_PORTS["management"]),
    "torchserve_metrics": ("ts-metrics", DEFAULT_PORTS["torchserve_metrics"]),
    "exporter": ("tsobs-metrics", DEFAULT_PORTS["exporter"]),
}
"""Container port names, which the PodMonitors and NetworkPolicy refer to."""

MANAGEMENT_CLIENT_LABEL = "torchserve-obs/management-client"
"""Pods in the workload namespace with this label set to "true" may reach port 8081."""
PROMETHEUS_POD_LABELS = {"app.kubernetes.io/name": "prometheus"}
"""What prometheus-operator puts on every Prometheus pod it runs."""


def job_name(selector: str, default: str) -> str:
    """The ``job`` a selector requires, so relabelling produces what the rules select."""
    found = re.search(r'\bjob\s*=\s*"([^"]+)"', selector)
    return found.group(1) if found else default


def manifests(cfg: Mapping[str, Any], monitoring: Mapping[str, Any]) -> Dict[str, Any]:
    """Every Kubernetes document by path; ``monitoring`` holds the rule and dashboard objects."""
    kube = cfg["kubernetes"]
    docs: Dict[str, Any] = {}
    docs.update(_torchserve(cfg))
    docs.update(_gpu_overlay())
    docs.update(_directory("monitoring", dict(monitoring)))
    docs.update(_kserve(cfg))
    docs.update(_logging(kube["namespace"], kube["workload_namespace"]))
    return docs


def _directory(name: str, docs: Dict[str, Any], **kustomization: Any) -> Dict[str, Any]:
    """``docs`` under ``kubernetes/NAME/`` plus a kustomization listing them."""
    out = {f"{ROOT}/{name}/{rel}": doc for rel, doc in docs.items()}
    resources_ = sorted(rel for rel in docs if rel.endswith(".yaml"))
    out[f"{ROOT}/{name}/kustomization.yaml"] = {
        **KUSTOMIZATION,
        **kustomization,
        "resources": [*kustomization.pop("resources", []), *resources_],
    }
    return out


def _meta(name: str, labels: Mapping[str, str], **extra: Any) -> Dict[str, Any]:
    return {"name": name, "labels": dict(labels), **extra}


def _app_labels(component: str) -> Dict[str, str]:
    return {
        "app.kubernetes.io/name": APP,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "torchserve-obs",
    }


def _port(key: str) -> Dict[str, Any]:
    name, number = PORTS[key]
    return {"name": name, "containerPort": number, "protocol": "TCP"}


def _http_probe(port: str, path: str, period: int, failures: int) -> Dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORTS[port][0]},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

POD_IP_ENV = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def _exporter_container(image: str, upstream: bool) -> Dict[str, Any]:
    """The exporter, listening on the pod IP only (Prometheus scrapes it there)."""
    args = ["exporter", "--host", "$(POD_IP)", "--port", str(PORTS["exporter"][1])]
    args += ["--metrics-dir", METRICS_DIR]
    if upstream:
        local = f"http://127.0.0.1:{PORTS['torchserve_metrics'][1]}/metrics"
        args += ["--torchserve-metrics", local, "--torchserve-timeout", "3"]
    return {
        "name": EXPORTER_CONTAINER,
        "image": image,
        "command": ["/home/venv/bin/torchserve-obs"],
        "args": args,
        "env": [POD_IP_ENV],
        "ports": [_port("exporter")],
        "readinessProbe": _http_probe("exporter", "/-/healthy", 10, 3),
        "livenessProbe": _http_probe("exporter", "/-/healthy", 20, 3),
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"cpu": "500m", "memory": "256Mi"},
        },
        "volumeMounts": [{"name": "tsobs-metrics", "mountPath": METRICS_DIR, "readOnly": True}],
        "securityContext": SECURITY_CONTEXT,
    }


CONFIG_PROPERTIES = "\n".join(
    [
        "# TorchServe 0.12 in a pod: every address on 0.0.0.0, the NetworkPolicy decides who",
        "# reaches which port; the Service carries inference only.",
        f"inference_address=http://0.0.0.0:{PORTS['inference'][1]}",
        f"management_address=http://0.0.0.0:{PORTS['management'][1]}",
        f"metrics_address=http://0.0.0.0:{PORTS['torchserve_metrics'][1]}",
        "# The default (log) mode answers /metrics with an empty body.",
        "metrics_mode=prometheus",
        f"model_store={HOME}/model-store",
        "load_models=all",
        "# TorchServe 0.12 makes a new random key per start and cannot take one from a",
        "# Secret: every replica would need its own key behind one Service. Access is",
        "# restricted by the NetworkPolicy instead.",
        "disable_token_authorization=true",
        "",
    ]
)


def _torchserve(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    kube = cfg["kubernetes"]
    namespace = kube["workload_namespace"]
    labels = _app_labels("model-server")
    selector = {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": "model-server"}
    torchserve = {
        "name": TS_CONTAINER,
        "image": IMAGE,
        "env": [{"name": "PROMETHEUS_MULTIPROC_DIR", "value": METRICS_DIR}],
        "ports": [_port("inference"), _port("management"), _port("torchserve_metrics")],
        # Models load before /ping turns healthy: up to 10 minutes.
        "startupProbe": _http_probe("inference", "/ping", 10, 60),
        # /ping fails while a model has no healthy worker: out of the Service, not restarted.
        "readinessProbe": _http_probe("inference", "/ping", 10, 3),
        # The frontend answers the management API whatever the models' state: restart
        # only a frontend that stopped answering.
        "livenessProbe": _http_probe("management", "/models", 20, 3),
        "resources": {
            "requests": {"cpu": "2", "memory": "4Gi"},
            "limits": {"cpu": "4", "memory": "4Gi"},
        },
        "volumeMounts": [
            {"name": "tsobs-metrics", "mountPath": METRICS_DIR},
            {
                "name": "config",
                "mountPath": f"{HOME}/tsobs/config.properties",
                "subPath": "config.properties",
                "readOnly": True,
            },
        ],
        "securityContext": SECURITY_CONTEXT,
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(APP, labels),
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 60,
                    "automountServiceAccountToken": False,
                    "containers": [torchserve, _exporter_container(IMAGE, upstream=False)],
                    "volumes": [
                        {"name": "tsobs-metrics", "emptyDir": {"sizeLimit": "256Mi"}},
                        {"name": "config", "configMap": {"name": "torchserve-config"}},
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(APP, labels),
        "spec": {
            "selector": selector,
            "ports": [
                {
                    "name": PORTS["inference"][0],
                    "port": PORTS["inference"][1],
                    "targetPort": PORTS["inference"][0],
                    "protocol": "TCP",
                }
            ],
        },
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(APP, labels),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta("torchserve-config", labels),
        "data": {"config.properties": CONFIG_PROPERTIES},
    }
    docs = {
        "namespace.yaml": {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": namespace,
                "labels": {"app.kubernetes.io/part-of": "torchserve-obs"},
            },
        },
        "configmap.yaml": configmap,
        "deployment.yaml": deployment,
        "service.yaml": service,
        "poddisruptionbudget.yaml": pdb,
        "networkpolicy.yaml": _network_policy(cfg, APP, selector, management=True),
        "podmonitor.yaml": _pod_monitor(
            cfg,
            APP,
            selector,
            [
                (
                    PORTS["torchserve_metrics"][0],
                    job_name(cfg["torchserve_selector"], "torchserve"),
                    (),
                ),
                (PORTS["exporter"][0], job_name(cfg["exporter_selector"], "torchserve-obs"), ()),
            ],
        ),
    }
    return _directory("torchserve", docs, namespace=namespace)


def _network_policy(
    cfg: Mapping[str, Any], name: str, selector: Mapping[str, str], management: bool
) -> Dict[str, Any]:
    """Inference from anywhere; management from labelled pods; metrics from Prometheus only.

    Kubelet probes come from the node, which NetworkPolicy always allows.
    """
    prometheus = {
        "namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": cfg["kubernetes"]["namespace"]}
        },
        "podSelector": {"matchLabels": dict(PROMETHEUS_POD_LABELS)},
    }
    metrics_ports = ["torchserve_metrics", "exporter"]
    ingress: List[Dict[str, Any]] = [
        {"ports": [{"port": PORTS["inference"][0], "protocol": "TCP"}]},
        {
            "from": [prometheus],
            "ports": [{"port": PORTS[p][0], "protocol": "TCP"} for p in metrics_ports],
        },
    ]
    if management:
        ingress.insert(
            1,
            {
                "from": [{"podSelector": {"matchLabels": {MANAGEMENT_CLIENT_LABEL: "true"}}}],
                "ports": [{"port": PORTS["management"][0], "protocol": "TCP"}],
            },
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, _app_labels("network-policy")),
        "spec": {
            "podSelector": {"matchLabels": dict(selector)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def _instance_is_pod() -> Dict[str, Any]:
    """``instance`` = pod name: the same for both ports of a pod, so joins on it work."""
    return {
        "action": "replace",
        "sourceLabels": ["__meta_kubernetes_pod_name"],
        "targetLabel": "instance",
    }


def _pod_monitor(
    cfg: Mapping[str, Any],
    name: str,
    selector: Mapping[str, str],
    endpoints: List[Tuple[str, str, Tuple[Dict[str, Any], ...]]],
) -> Dict[str, Any]:
    """A PodMonitor scraping ``endpoints`` (port name, job, metric relabelling) of the pods."""
    pod_endpoints = []
    for port, job, metric_relabelings in endpoints:
        endpoint: Dict[str, Any] = {
            "port": port,
            "path": "/metrics",
            "relabelings": [
                {"action": "replace", "targetLabel": "job", "replacement": job},
                _instance_is_pod(),
            ],
        }
        if metric_relabelings:
            endpoint["metricRelabelings"] = list(metric_relabelings)
        pod_endpoints.append(endpoint)
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _meta(name, {**_app_labels("monitor"), **cfg["kubernetes"]["monitor_labels"]}),
        "spec": {
            "selector": {"matchLabels": dict(selector)},
            "podMetricsEndpoints": pod_endpoints,
        },
    }


def _gpu_overlay() -> Dict[str, Any]:
    """The GPU image and one ``nvidia.com/gpu`` per pod, as a JSON 6902 patch."""
    containers = "/spec/template/spec/containers"
    patch = [
        {"op": "replace", "path": f"{containers}/0/image", "value": GPU_IMAGE},
        {"op": "replace", "path": f"{containers}/1/image", "value": GPU_IMAGE},
        {"op": "add", "path": f"{containers}/0/resources/limits/nvidia.com~1gpu", "value": 1},
        {
            "op": "add",
            "path": "/spec/template/spec/tolerations",
            "value": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    ]
    return {
        f"{ROOT}/torchserve-gpu/deployment-gpu.patch.yaml": patch,
        f"{ROOT}/torchserve-gpu/kustomization.yaml": {
            **KUSTOMIZATION,
            "resources": ["../torchserve"],
            "patches": [
                {
                    "path": "deployment-gpu.patch.yaml",
                    "target": {"group": "apps", "version": "v1", "kind": "Deployment", "name": APP},
                }
            ],
        },
    }


KSERVE_DOCKERFILE = f"""\
# Generated by `torchserve-obs generate`.
# KServe's TorchServe runtime image plus torchserve-obs: the runtime's entrypoint stays as
# KServe expects it; the workers import the mixin, the sidecar runs the exporter.
# Build from the repository root:
#   docker build -f kubernetes/kserve/Dockerfile -t {KSERVE_IMAGE} .
FROM pytorch/torchserve-kfs:0.12.0
USER root
COPY pyproject.toml README.md /tmp/torchserve-obs/
COPY obs /tmp/torchserve-obs/obs
COPY handler_mixins /tmp/torchserve-obs/handler_mixins
RUN /home/venv/bin/pip install --no-cache-dir "/tmp/torchserve-obs[torchserve]" \\
    && rm -rf /tmp/torchserve-obs
USER model-server
"""

KSERVE_NAME = "tiny"
"""The example InferenceService; its storageUri is a placeholder to replace."""


def _kserve(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """An InferenceService whose one scrape port (the exporter's) carries both metric sets.

    RawDeployment mode: Knative's serverless mode restricts emptyDir volumes and extra
    containers, which the exporter needs.
    """
    kube = cfg["kubernetes"]
    exporter_job = job_name(cfg["exporter_selector"], "torchserve-obs")
    torchserve_job = job_name(cfg["torchserve_selector"], "torchserve")
    exporter_port = str(PORTS["exporter"][1])
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": KSERVE_NAME,
            "labels": {"app.kubernetes.io/part-of": "torchserve-obs"},
            "annotations": {
                "serving.kserve.io/deploymentMode": "RawDeployment",
                # KServe's own scrape annotations, pointed at the exporter's merged endpoint.
                "serving.kserve.io/enable-prometheus-scraping": "true",
                "prometheus.kserve.io/port": exporter_port,
                "prometheus.kserve.io/path": "/metrics",
            },
        },
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": "pytorch"},
                    "protocolVersion": "v1",
                    # model-store/*.mar and config/config.properties (with metrics_mode=prometheus)
                    "storageUri": "s3://YOUR-BUCKET/torchserve-obs/tiny",
                    "image": KSERVE_IMAGE,
                    "env": [{"name": "PROMETHEUS_MULTIPROC_DIR", "value": METRICS_DIR}],
                    "resources": {
                        "requests": {"cpu": "2", "memory": "4Gi"},
                        "limits": {"cpu": "4", "memory": "4Gi"},
                    },
                    "volumeMounts": [{"name": "tsobs-metrics", "mountPath": METRICS_DIR}],
                },
                "containers": [_exporter_container(KSERVE_IMAGE, upstream=True)],
                "volumes": [{"name": "tsobs-metrics", "emptyDir": {"sizeLimit": "256Mi"}}],
            }
        },
    }

    # One port, scraped twice: once as TorchServe's job keeping TorchServe's series, once as
    # the exporter's keeping the mixin's. Each job then has its up{} and its series, as in
    # the sidecar layout, which the rules and dashboards read.
    def only(action: str) -> Tuple[Dict[str, Any], ...]:
        return ({"action": action, "sourceLabels": ["__name__"], "regex": f"{PREFIX}.+"},)

    monitor = _pod_monitor(
        cfg,
        f"{KSERVE_NAME}-kserve",
        {"serving.kserve.io/inferenceservice": KSERVE_NAME},
        [
            (PORTS["exporter"][0], torchserve_job, only("drop")),
            (PORTS["exporter"][0], exporter_job, only("keep")),
        ],
    )
    return _directory(
        "kserve",
        {
            "inferenceservice.yaml": isvc,
            "podmonitor.yaml": monitor,
            "Dockerfile": KSERVE_DOCKERFILE,
        },
        namespace=kube["workload_namespace"],
    )


FLUENTD_CONF = "fluent.conf"
ELASTICSEARCH_URL = "http://elasticsearch.logging.svc:9200"
"""Where the collector ships to; change it with a kustomize patch."""
LOG_ROOT = "/var/log"


def fluentd_conf(workload_namespace: str) -> str:
    """The collector's Fluentd config for one workload namespace (template: package data)."""
    template = resources.files("obs").joinpath("data", "kubernetes", FLUENTD_CONF)
    return template.read_text("utf-8").replace("@@NAMESPACE@@", workload_namespace)


def _logging(namespace: str, workload_namespace: str) -> Dict[str, Any]:
    """Fluentd on every node, reading the container runtime's log files (no API access).

    Kubernetes metadata (namespace, pod, container) comes from the log file's name, so the
    collector needs no ServiceAccount token; the Elasticsearch index templates and ILM
    policy are installed by a Job from compose/elasticsearch, the compose stack's files.
    """
    name = "tsobs-fluentd"
    labels = {
        "app.kubernetes.io/name": "fluentd",
        "app.kubernetes.io/component": "log-collector",
        "app.kubernetes.io/part-of": "torchserve-obs",
    }
    selector = {"app.kubernetes.io/name": "fluentd", "app.kubernetes.io/part-of": "torchserve-obs"}
    es_env = [
        {"name": "ELASTICSEARCH_URL", "value": ELASTICSEARCH_URL},
        {"name": "TSOBS_ES_DATA_STREAM", "value": "tsobs-logs-otel"},
        *(
            {
                "name": var,
                "valueFrom": {
                    "secretKeyRef": {"name": "tsobs-elasticsearch", "key": key, "optional": True}
                },
            }
            for var, key in (
                ("ELASTICSEARCH_USER", "username"),
                ("ELASTICSEARCH_PASSWORD", "password"),
            )
        ),
    ]
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _meta(name, labels),
        "spec": {
            "selector": {"matchLabels": selector},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
                    "priorityClassName": "system-node-critical",
                    "containers": [
                        {
                            "name": "fluentd",
                            "image": FLUENTD_IMAGE,
                            "env": es_env,
                            # The files under /var/log are root's: read them as root,
                            # nothing else.
                            "securityContext": {
                                "runAsUser": 0,
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"], "add": ["DAC_READ_SEARCH"]},
                            },
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "200Mi"},
                                "limits": {"memory": "500Mi"},
                            },
                            "volumeMounts": [
                                {"name": "varlog", "mountPath": LOG_ROOT, "readOnly": True},
                                {"name": "state", "mountPath": "/fluentd/buffer"},
                                {"name": "config", "mountPath": "/fluentd/etc", "readOnly": True},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "varlog", "hostPath": {"path": LOG_ROOT}},
                        # Positions and buffer survive a collector restart on the node.
                        {
                            "name": "state",
                            "hostPath": {
                                "path": "/var/lib/torchserve-obs-fluentd",
                                "type": "DirectoryOrCreate",
                            },
                        },
                        {"name": "config", "configMap": {"name": "tsobs-fluentd-config"}},
                    ],
                },
            },
        },
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(
            "tsobs-elasticsearch-setup", {**labels, "app.kubernetes.io/component": "setup"}
        ),
        "spec": {
            "backoffLimit": 10,
            "template": {
                "metadata": {"labels": {**labels, "app.kubernetes.io/component": "setup"}},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": "setup",
                            "image": "curlimages/curl:8.10.1",
                            "command": ["/bin/sh", "/setup/setup.sh"],
                            "env": [{"name": "ES_URL", "value": ELASTICSEARCH_URL}],
                            "securityContext": SECURITY_CONTEXT,
                            "volumeMounts": [
                                {"name": "setup", "mountPath": "/setup", "readOnly": True}
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "setup", "configMap": {"name": "tsobs-elasticsearch-setup"}}
                    ],
                },
            },
        },
    }
    docs = {"daemonset.yaml": daemonset, "elasticsearch-setup-job.yaml": job}
    out = _directory(
        "logging",
        docs,
        namespace=namespace,
        # The compose stack's templates, ILM policy and setup script: one source for both.
        resources=["../../compose/elasticsearch"],
        configMapGenerator=[{"name": "tsobs-fluentd-config", "files": [FLUENTD_CONF]}],
    )
    out[f"{ROOT}/logging/{FLUENTD_CONF}"] = fluentd_conf(workload_namespace)
    return out
