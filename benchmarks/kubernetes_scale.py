"""Series a TorchServe fleet costs, and what a real Prometheus spends on our rules and dashboards.

One pod's exposition is built from the real code: the mixin's metrics written by one process
identity per worker (as TorchServe's workers do) and aggregated by the exporter's
``MetricsSource``, plus TorchServe's own series enumerated from the installed
``ts/configs/metrics.yaml``. Every label value the mixin pre-creates is there, plus one error
series per model. The fleet (``--pods`` copies, labelled as the PodMonitor labels them) is
written as OpenMetrics with ``--history`` of samples every ``--step`` and turned into TSDB
blocks by ``promtool tsdb create-blocks-from openmetrics``. A real Prometheus then loads the
blocks: each rule group's cost is its rules' expressions run as instant queries at the end of
the history (what the rule manager runs per evaluation), the dashboards' cost each panel's
range query over the history, variables set to "All" (every pod, every model) as the
heaviest view; medians of ``--repeat`` runs. Prints JSON.

    python benchmarks/kubernetes_scale.py [--pods 500 --models 5 --workers 4 --history 30m]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

Series = Tuple[str, Tuple[Tuple[str, str], ...], float, bool]
"""(sample name, labels without the pod's, value, is it cumulative)."""

POD = "@pod"
"""Placeholder for the pod's name (TorchServe's Hostname/hostname labels)."""

MACROS = {"$__rate_interval": "2m", "$__interval": "30s", "$__range": "30m"}


def mixin_series(models: List[str], workers: int, scratch: Path) -> List[Series]:
    """The exporter's exposition for one pod whose models each run ``workers`` workers."""
    from prometheus_client.parser import text_string_to_metric_families

    from obs import heartbeat
    from obs.exporter import MetricsSource
    from obs.metrics import ModelInstruments, use_multiprocess_dir
    from obs.signals import Outcome, Stage

    directory = scratch / "metrics"
    port = 9000
    for model in models:
        for _ in range(workers):
            identity = f"w{port}"
            port += 1
            use_multiprocess_dir(directory, identity)
            instruments = ModelInstruments(model, "1.0")
            for outcome in Outcome.ALL:
                instruments.requests[outcome].inc(10)
            for stage in Stage.TIMED:
                for seconds in (0.004, 0.03, 0.2):
                    instruments.stage_seconds[stage].observe(seconds)
            instruments.batch_size.observe(4)
            instruments.batch_fill.observe(0.5)
            instruments.count_error(Stage.INFERENCE, "RuntimeError")
            instruments.load_seconds.observe(3.0)
            instruments.loads[Outcome.SUCCESS].inc()
            instruments.worker_starts.inc()
            instruments.set_info("handler.Handler", "2.13.0", "0.12.0", "3.9.21")
            instruments.torch_mismatch.set(0)
            heartbeat.start(directory, identity, model, "1.0", interval_s=3600)
    text = MetricsSource(directory).render("")[0].decode()
    out = []
    for family in text_string_to_metric_families(text):
        cumulative = family.type in ("counter", "histogram")
        for sample in family.samples:
            out.append(
                (sample.name, tuple(sorted(sample.labels.items())), sample.value, cumulative)
            )
    return out


def torchserve_series(models: List[str], workers: int, gpus: int) -> List[Series]:
    """TorchServe's own series, from the metrics.yaml of the installed TorchServe."""
    import ts

    declared = yaml.safe_load((Path(ts.__file__).parent / "configs" / "metrics.yaml").read_text())
    out: List[Series] = []
    sections = [("ts_metrics", "Host"), ("model_metrics", "Model")]
    for section, level in sections:
        for kind, metrics in declared[section].items():
            for metric in metrics:
                dims = list(metric["dimensions"])
                combos: List[Dict[str, str]] = [{}]
                if "model_name" in dims or "ModelName" in dims:
                    combos = [{"model": m} for m in models]
                if "WorkerName" in dims:  # one per worker of every model
                    combos = [
                        {**c, "worker": f"W-{9000 + workers * j + i}-{m}_1.0"}
                        for c in combos
                        for j, m in enumerate(models)
                        for i in range(workers)
                    ]
                if "DeviceId" in dims:
                    combos = [{**c, "device": str(d)} for c in combos for d in range(gpus)]
                for combo in combos:
                    labels = {
                        "model_name": combo.get("model", ""),
                        "model_version": "default",
                        "ModelName": combo.get("model", ""),
                        "WorkerName": combo.get("worker", ""),
                        "DeviceId": combo.get("device", ""),
                        "Level": level,
                    }
                    chosen = {d: labels.get(d, POD) for d in dims}
                    out.append(
                        (metric["name"], tuple(sorted(chosen.items())), 5.0, kind == "counter")
                    )
    return out


def accounting(
    mixin: List[Series], torchserve: List[Series], models: int, workers: int
) -> Dict[str, Any]:
    """Series per model, per worker and per pod, for each source."""

    def split(series: List[Series]) -> Dict[str, int]:
        per_worker = sum(1 for _, ls, _, _ in series if {"WorkerName", "pid"} & dict(ls).keys())
        per_model = sum(
            1
            for _, ls, _, _ in series
            if {"model_name", "ModelName"} & dict(ls).keys()
            and not {"WorkerName", "pid"} & dict(ls).keys()
        )
        return {
            "per_model": per_model // models,
            "per_worker": per_worker // (models * workers),
            "per_pod_fixed": len(series) - per_model - per_worker,
            "per_pod": len(series),
        }

    return {"mixin": split(mixin), "torchserve": split(torchserve)}


def write_openmetrics(
    path: Path, pods: int, series: List[Tuple[str, Series]], end: int, history_s: int, step_s: int
) -> int:
    """The fleet's samples, family by family; returns the number of samples written."""
    times = list(range(end - history_s, end + 1, step_s))
    by_name: Dict[str, List[Tuple[str, Series]]] = {}
    for job_series in series:
        by_name.setdefault(job_series[1][0], []).append(job_series)
    written = 0
    with path.open("w", buffering=1 << 20) as out:
        for name, members in by_name.items():
            for pod_index in range(pods):
                pod = f"torchserve-{pod_index:04d}"
                for job, (_, labels, base, cumulative) in members:
                    pod_labels = {k: pod if v == POD else v for k, v in labels}
                    container = "torchserve" if job == "torchserve" else "tsobs-exporter"
                    pod_labels.update(
                        job=job, namespace="torchserve", pod=pod, instance=pod, container=container
                    )
                    text = ",".join(f'{k}="{v}"' for k, v in sorted(pod_labels.items()))
                    prefix = f"{name}{{{text}}} "
                    lines = [
                        f"{prefix}{base * (1 + i) if cumulative else base} {t}\n"
                        for i, t in enumerate(times)
                    ]
                    out.writelines(lines)
                    written += len(lines)
        out.write("# EOF\n")
    return written


def _get(url: str, timeout: float = 300.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.loads(answer.read())


def _timed(url: str, params: Dict[str, Any], repeat: int) -> Tuple[float, List[Any]]:
    """Median seconds of ``repeat`` runs of a query and its result; inf if it timed out."""
    timings = []
    result: List[Any] = []
    for _ in range(repeat):
        started = time.perf_counter()
        try:
            answer = _get(f"{url}?" + urllib.parse.urlencode(params))
        except OSError as err:  # HTTP 503 from Prometheus's --query.timeout, or ours
            print(f"{params['query'][:80]}...: {err}", file=sys.stderr)
            return float("inf"), []
        timings.append(time.perf_counter() - started)
        assert answer["status"] == "success", answer
        result = answer["data"]["result"]
    return statistics.median(timings), result


def _free_port() -> int:
    from obs.services import free_port

    return free_port()


def dashboard_queries(cfg: Dict[str, Any]) -> Iterator[Tuple[str, str, str]]:
    from obs.generate import panels

    for spec in panels.dashboards(cfg):
        for row in spec.rows:
            for panel in row.panels:
                for query in panel.queries:
                    expr = query.expr
                    variables = {"host": ".+", "model": ".+", "version": ".+"}
                    if spec.single_model:
                        variables["model"] = "model-0"
                    for name, value in {
                        **MACROS,
                        **{f"${k}": v for k, v in variables.items()},
                    }.items():
                        expr = expr.replace(name, value)
                    yield spec.title, panel.title, expr


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from obs.generate import config, writers
    from obs.services import Service, wait_until_http_ok

    models = [f"model-{i}" for i in range(args.models)]
    scratch = Path(tempfile.mkdtemp(prefix="tsobs-scale-"))
    try:
        mixin = mixin_series(models, args.workers, scratch)
        torchserve = torchserve_series(models, args.workers, args.gpus)
        counts = accounting(mixin, torchserve, args.models, args.workers)
        per_pod = len(mixin) + len(torchserve)
        result: Dict[str, Any] = {
            "fleet": {
                "pods": args.pods,
                "models": args.models,
                "workers": args.workers,
                "gpus": args.gpus,
            },
            "series": {**counts, "per_pod": per_pod, "fleet": per_pod * args.pods},
        }
        history_s = config.durations_seconds(args.history)
        step_s = config.durations_seconds(args.step)
        end = int(time.time()) // step_s * step_s
        fleet = [("torchserve-obs", s) for s in mixin] + [("torchserve", s) for s in torchserve]
        started = time.perf_counter()
        samples = write_openmetrics(scratch / "fleet.om", args.pods, fleet, end, history_s, step_s)
        tsdb = scratch / "tsdb"
        subprocess.run(
            [
                args.promtool,
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                str(scratch / "fleet.om"),
                str(tsdb),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (scratch / "fleet.om").unlink()
        result["backfill"] = {
            "samples": samples,
            "history": args.history,
            "step": args.step,
            "seconds": round(time.perf_counter() - started, 1),
        }
        cfg = config.resolve({})
        groups = yaml.safe_load(writers.build(cfg)[writers.RULES_FILE])["groups"]
        (scratch / "prometheus.yml").write_text(json.dumps({"global": {}}))
        port = _free_port()
        prometheus = Service(
            "prometheus",
            [
                args.prometheus,
                f"--config.file={scratch / 'prometheus.yml'}",
                f"--storage.tsdb.path={tsdb}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=30d",
                f"--query.timeout={args.query_timeout}",
            ],
            scratch / "prometheus.log",
        ).start()
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_http_ok(f"{url}/-/ready", 600, prometheus.process)
            result["load_average_1m"] = [round(os.getloadavg()[0], 1)]
            result["rules"] = rule_evaluation(url, groups, end, args.repeat)
            result["dashboards"] = query_times(url, cfg, end, history_s, step_s, args.repeat)
            result["load_average_1m"].append(round(os.getloadavg()[0], 1))
        finally:
            prometheus.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def rule_evaluation(
    url: str, groups: List[Dict[str, Any]], end: int, repeat: int
) -> Dict[str, Any]:
    """Each rule group's cost: its rules' expressions evaluated as instant queries at ``end``.

    That is the work Prometheus's rule manager does per evaluation, timed at the end of the
    backfilled history (a live rule manager would evaluate at wall-clock time, after the
    backfill). Alerts that read recorded series find none here, so their (small) part is
    understated; recording rules read the fleet's raw series, which is where the cost is.
    """
    out: Dict[str, Any] = {}
    for group in groups:
        total = 0.0
        slowest = (0.0, "")
        recorded = 0
        for rule in group["rules"]:
            params = {"query": rule["expr"], "time": end}
            seconds, result = _timed(f"{url}/api/v1/query", params, repeat)
            if "record" in rule:
                recorded += len(result)
            total += seconds
            slowest = max(slowest, (seconds, rule.get("record") or rule.get("alert", "")))
        out[group["name"]] = {
            "rules": len(group["rules"]),
            "seconds": round(total, 3),
            "slowest": [round(slowest[0], 3), slowest[1]],
            "recorded_series": recorded,
        }
    return out


def query_times(
    url: str, cfg: Dict[str, Any], end: int, history_s: int, step_s: int, repeat: int
) -> Dict[str, Any]:
    """Each panel query's range query over the history, median of ``repeat``; per dashboard.

    A query Prometheus gives up on (``--query.timeout``) counts as a timeout, not a crash.
    """
    out: Dict[str, Any] = {}
    for dashboard, panel, expr in dashboard_queries(cfg):
        params = {"query": expr, "start": end - history_s, "end": end, "step": step_s}
        board = out.setdefault(
            dashboard, {"queries": 0, "timeouts": 0, "sum_s": 0.0, "slowest": []}
        )
        board["queries"] += 1
        seconds, _ = _timed(f"{url}/api/v1/query_range", params, repeat)
        if seconds == float("inf"):
            board["timeouts"] += 1
            continue
        board["sum_s"] = round(board["sum_s"] + seconds, 3)
        board["slowest"] = sorted([*board["slowest"], [round(seconds, 3), panel]], reverse=True)[:3]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--gpus", type=int, default=0, help="GPUs per pod (TorchServe's GPU gauges)"
    )
    parser.add_argument("--history", default="30m")
    parser.add_argument("--step", default="30s", help="scrape interval of the simulated fleet")
    parser.add_argument("--query-timeout", default="2m", help="Prometheus --query.timeout")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each query (median)")
    parser.add_argument("--prometheus", default=shutil.which("prometheus") or "prometheus")
    parser.add_argument("--promtool", default=shutil.which("promtool") or "promtool")
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
