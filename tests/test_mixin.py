"""The mixin in-process, through TorchServe's own Python backend (ts.service.Service.predict).

Each test loads the example archives with TorchServe's model loader and compares the
encoded worker responses with and without the mixin, so "never changes what the handler
returns" is checked on the exact bytes a worker sends to the frontend.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from handler_mixins.example.build import MODEL_NAME, PLAIN_MODEL_NAME
from handler_mixins.observability import ObservabilityMixin, Observer, worker_identity
from handler_mixins.testing import (
    load_model,
    make_context,
    metrics_cache,
    predict,
    unpack_archive,
    wire_request,
    with_requests,
)
from obs.exporter import MetricsSource
from obs.gpu import GpuMemory, IntervalSampler
from tests.support.traffic import Samples, growth, parse_samples, total

pytestmark = pytest.mark.torchserve


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One multi-process directory for this test process (prometheus_client's is global)."""
    directory = tmp_path_factory.mktemp("inprocess-metrics")
    previous = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    yield directory
    if previous is None:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = previous


@pytest.fixture(scope="module")
def unpacked(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("unpacked")
    return {
        name: unpack_archive(model_store / f"{name}.mar", root / name)
        for name in (MODEL_NAME, PLAIN_MODEL_NAME)
    }


@pytest.fixture(scope="module")
def services(unpacked: Dict[str, Path], metrics_dir: Path):
    return {name: load_model(path, name, batch_size=8) for name, path in unpacked.items()}


def samples(metrics_dir: Path) -> Samples:
    return parse_samples(MetricsSource(metrics_dir).render("")[0].decode())


def printed_lines(capsys: pytest.CaptureFixture) -> List[dict]:
    """The JSON lines printed since the last ``capsys.readouterr()``."""
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def batch(*bodies: bytes, headers: Dict[str, str] = None) -> List[dict]:
    return [wire_request(f"req-{i}-{hash(b)}", b, headers) for i, b in enumerate(bodies)]


GOOD = b"[0.5, -1, 2, 3]"
CASES = [
    batch(GOOD),
    batch(GOOD, b"not json", b"[1, 2]", b'["a", "b", "c", "d"]', GOOD),
    batch(*[GOOD] * 8),
    batch(GOOD, b'{"fail": "on purpose"}'),
]


@pytest.mark.parametrize("requests", CASES, ids=["one", "mixed", "full", "failing"])
def test_worker_response_bytes_are_unchanged(services, requests: List[dict]) -> None:
    assert predict(services[MODEL_NAME], requests) == predict(services[PLAIN_MODEL_NAME], requests)


def test_counts_and_one_completion_line_per_request(services, metrics_dir: Path, capsys) -> None:
    before = samples(metrics_dir)
    requests = batch(GOOD, b"not json", GOOD, headers={"X-Request-ID": "client-7"})
    predict(services[MODEL_NAME], requests)
    after = samples(metrics_dir)

    def delta(name: str, **labels: str) -> float:
        return growth(before, after, name, model_name=MODEL_NAME, **labels)

    assert delta("tsobs_requests_total", outcome="success") == 2
    assert delta("tsobs_requests_total", outcome="client_error") == 1
    assert delta("tsobs_batch_size_count") == 1 and delta("tsobs_batch_size_sum") == 3
    assert delta("tsobs_batch_fill_ratio_sum") == pytest.approx(3 / 8)
    for stage in ("preprocess", "inference", "postprocess", "handle"):
        assert delta("tsobs_stage_duration_seconds_count", stage=stage) == 1

    lines = printed_lines(capsys)
    done = [r for r in lines if r["event"] == "request_completed"]
    assert [r["request_id"] for r in done] == [r["requestId"].decode() for r in requests]
    assert [r["status"] for r in done] == [200, 400, 200]
    assert {r["client_request_id"] for r in done} == {"client-7"}
    assert all(r["batch_size"] == 3 and r["duration_ms"] >= r["inference_ms"] for r in done)


def test_a_failing_stage_is_logged_once_counted_and_reraised(
    services, metrics_dir: Path, capsys
) -> None:
    before = samples(metrics_dir)
    response = predict(services[MODEL_NAME], batch(GOOD, b'{"fail": "x"}'))
    assert b"Prediction failed" in response
    after = samples(metrics_dir)
    labels = {"model_name": MODEL_NAME, "stage": "preprocess", "exception": "RuntimeError"}
    assert growth(before, after, "tsobs_errors_total", **labels) == 1
    failed = {"model_name": MODEL_NAME, "outcome": "server_error"}
    assert growth(before, after, "tsobs_requests_total", **failed) == 2
    lines = printed_lines(capsys)
    errors = [r for r in lines if r["event"] == "batch_failed"]
    assert len(errors) == 1
    assert errors[0]["stage"] == "preprocess" and "Traceback" in errors[0]["exception"]
    assert len(errors[0]["request_ids"]) == 2
    assert [r["status"] for r in lines if r["event"] == "request_completed"] == [503, 503]


def test_instrumentation_failure_is_contained_and_counted(
    services, metrics_dir: Path, monkeypatch
) -> None:
    observer: Observer = services[MODEL_NAME]._entry_point.__self__.__dict__["_tsobs_observer"]

    def broken(*_args: object, **_kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(observer.emitter, "emit", broken)
    before = samples(metrics_dir)
    requests = batch(GOOD, b"[1, 2]")
    assert predict(services[MODEL_NAME], requests) == predict(services[PLAIN_MODEL_NAME], requests)
    after = samples(metrics_dir)
    assert growth(before, after, "tsobs_internal_errors_total", component="finish") == 1


def test_logs_from_user_code_carry_the_batch_context(
    unpacked: Dict[str, Path], metrics_dir: Path, capsys
) -> None:
    from handler_mixins.example.tiny_classifier import TinyClassifier
    from obs.logs import get_logger

    structured = get_logger("user")
    plain = logging.getLogger(__name__)

    class Chatty(ObservabilityMixin, TinyClassifier):
        def preprocess(self, data):
            structured.info("preprocessing", rows=len(data))
            plain.info("stdlib says %s", "hi")
            return super().preprocess(data)

    handler = Chatty()
    context = make_context(unpacked[MODEL_NAME], MODEL_NAME, batch_size=8)
    handler.initialize(context)
    root_handlers = list(logging.getLogger().handlers)
    assert plain.propagate is False
    capsys.readouterr()

    with_requests(context, [{"x-request-id": "abc"}])
    handler.handle([{"body": [1, 2, 3, 4]}], context)
    lines = printed_lines(capsys)
    by_event = {r["event"]: r for r in lines}
    for event in ("preprocessing", "stdlib says hi"):
        record = by_event[event]
        assert record["model_name"] == MODEL_NAME and record["request_ids"] == ["request-0"]
        assert record["batch_id"] == by_event["request_completed"]["batch_id"]
        assert record["level"] == "info" and record["timestamp"].endswith("Z")
    assert by_event["preprocessing"]["rows"] == 1 and by_event["preprocessing"]["logger"] == "user"
    assert by_event["stdlib says hi"]["logger"] == __name__
    assert by_event["request_completed"]["preprocess_ms"] > 0
    assert logging.getLogger().handlers == root_handlers  # TorchServe's root logger untouched


def test_the_benchmark_floor_writes_every_field_the_mixin_writes(
    model_store: Path, services, tmp_path: Path, capfd
) -> None:
    """benchmarks/handlers/floor_writes.py is the least Python that writes what the mixin
    writes: its lines must carry every field the mixin's do, or the floor would be too low."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import saturation

    archive = saturation.floor_archive(model_store / f"{PLAIN_MODEL_NAME}.mar", tmp_path / "f.mar")
    floor = load_model(unpack_archive(archive, tmp_path / "floor"), "floor", batch_size=8)
    traced = {
        "X-Request-ID": "client-7",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }
    requests = batch(GOOD, GOOD, headers=traced)
    capfd.readouterr()
    assert predict(floor, requests) == predict(services[PLAIN_MODEL_NAME], requests)
    floor_lines = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    predict(services[MODEL_NAME], requests)
    mixin_lines = [
        record
        for record in (json.loads(line) for line in capfd.readouterr().out.splitlines())
        if record["event"] == "request_completed"
    ]
    assert len(floor_lines) == len(mixin_lines) == 2
    assert set(floor_lines[0]) == set(mixin_lines[0])
    assert floor_lines[1]["client_request_id"] == mixin_lines[1]["client_request_id"] == "client-7"


def test_ecs_field_names(monkeypatch, capsys) -> None:
    from obs import logs
    from obs.settings import Settings

    monkeypatch.setenv("TSOBS_LOG_FIELDS", "ecs")
    emitter = logs.LogEmitter(Settings.from_env())
    emitter.emit(
        [
            {
                "timestamp": "t",
                "level": "info",
                "event": "request_completed",
                "client_request_id": "c",
            }
        ]
    )
    record = json.loads(capsys.readouterr().out)
    assert record == {
        "@timestamp": "t",
        "log.level": "info",
        "message": "request_completed",
        "http.request.id": "c",
    }


def test_worker_identity_comes_from_the_socket_argument() -> None:
    argv = [
        "ts/model_service_worker.py",
        "--sock-type",
        "unix",
        "--sock-name",
        "/tmp/.ts.sock.9003",
    ]
    assert worker_identity(argv) == "w9003"
    assert worker_identity(["worker", "--sock-type", "tcp", "--port", "9010"]) == "w9010"
    assert worker_identity(["pytest"]) == f"pid{os.getpid()}"


def test_gpu_memory_is_sampled_on_an_interval_not_per_batch() -> None:
    now = [100.0]
    published: List[GpuMemory] = []
    reading = GpuMemory(1, 2, 3, 4, 5)
    sampler = IntervalSampler(
        lambda: reading, published.append, interval_s=15, clock=lambda: now[0]
    )
    assert sampler.maybe_sample() is True
    for _ in range(100):
        now[0] += 0.1
        sampler.maybe_sample()
    assert published == [reading]  # 10 s of batches, one reading
    now[0] += 5.1
    assert sampler.maybe_sample() is True and len(published) == 2


def test_a_handle_override_calling_super_is_observed_once(
    unpacked, metrics_dir: Path, capsys
) -> None:
    from handler_mixins.example.tiny_classifier import TinyClassifier

    class Wrapping(ObservabilityMixin, TinyClassifier):
        def handle(self, data, context):
            return [{"wrapped": True, **answer} for answer in super().handle(data, context)]

    handler = Wrapping()
    context = make_context(unpacked[MODEL_NAME], MODEL_NAME, batch_size=8)
    handler.initialize(context)
    before = samples(metrics_dir)
    capsys.readouterr()
    answers = handler.handle(
        [{"body": [1, 2, 3, 4]}, {"body": [4, 3, 2, 1]}], with_requests(context, [{}, {}])
    )
    assert all(a["wrapped"] for a in answers) and len(answers) == 2
    after = samples(metrics_dir)
    labels = {"model_name": MODEL_NAME, "outcome": "success"}
    assert growth(before, after, "tsobs_requests_total", **labels) == 2
    lines = printed_lines(capsys)
    assert [r["batch_index"] for r in lines if r["event"] == "request_completed"] == [0, 1]


def test_gpu_memory_wiring_with_a_substituted_reader(
    services, metrics_dir: Path, monkeypatch
) -> None:
    """No GPU here: the CPU worker gets no sampler; a CUDA one publishes per-worker gauges.

    The torch reads themselves (``obs.gpu.read_cuda_memory``) are replaced by fixed figures:
    what is checked is the device detection and the path to the exported series.
    """
    import torch

    import handler_mixins.observability as observability

    handler = services[MODEL_NAME]._entry_point.__self__
    observer: Observer = handler.__dict__["_tsobs_observer"]
    assert observer.gpu_sampler is None  # loaded on CPU

    figures = GpuMemory(
        allocated=1 << 20, reserved=2 << 20, peak=3 << 20, used=5 << 20, total=8 << 20
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(observability, "read_cuda_memory", lambda index: figures)
    monkeypatch.setattr(handler, "device", torch.device("cuda", 1), raising=False)
    sampler = observer._gpu_sampler(handler)
    assert sampler is not None and sampler.maybe_sample()
    exported = samples(metrics_dir)
    worker = {"model_name": MODEL_NAME, "device": "cuda:1", "pid": observer.worker}
    assert total(exported, "tsobs_gpu_memory_allocated_bytes", **worker) == 1 << 20
    assert total(exported, "tsobs_gpu_memory_peak_bytes", **worker) == 3 << 20
    assert total(exported, "tsobs_gpu_memory_total_bytes", device="cuda:1") == 8 << 20


def test_a_prediction_exception_subclass_keeps_its_status(
    unpacked, metrics_dir: Path, capsys
) -> None:
    """TorchServe answers a ``PredictionException`` subclass with its ``error_code`` (its
    ``except`` matches subclasses): a 429 is a client error, not a 503."""
    from ts.service import Service
    from ts.utils.util import PredictionException

    from handler_mixins.example.tiny_classifier import TinyClassifier

    class Overloaded(PredictionException):
        pass

    class Shedding(ObservabilityMixin, TinyClassifier):
        def preprocess(self, data):
            raise Overloaded("try later", 429)

    handler = Shedding()
    manifest = json.loads((unpacked[MODEL_NAME] / "MAR-INF" / "MANIFEST.json").read_text())
    service = Service(
        MODEL_NAME,
        str(unpacked[MODEL_NAME]),
        manifest,
        handler.handle,
        None,
        8,
        metrics_cache=metrics_cache(),
    )
    service.set_cl_socket(None)
    handler.initialize(service.context)
    before = samples(metrics_dir)
    capsys.readouterr()
    response = predict(service, batch(GOOD))
    assert b"try later" in response  # what TorchServe answers, with status 429
    after = samples(metrics_dir)
    labels = {"model_name": MODEL_NAME, "outcome": "client_error"}
    assert growth(before, after, "tsobs_requests_total", **labels) == 1
    lines = printed_lines(capsys)
    assert [r["status"] for r in lines if r["event"] == "request_completed"] == [429]


KEPT_WORKER = """
import sys
from pathlib import Path
from obs import heartbeat
heartbeat.INTERVAL_S = 0.2
from handler_mixins.testing import load_model, predict, wire_request
service = load_model(Path(sys.argv[1]), "tiny", batch_size=8)
predict(service, [wire_request("r-1", b"[1, 2, 3, 4]")])
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_removed_metrics_directory_is_put_back_with_the_values(
    unpacked: Dict[str, Path], tmp_path: Path
) -> None:
    """The upkeep thread survives the directory going: files re-created, values continued,
    the event counted; the live worker never disappears from the exporter for good."""
    import shutil
    import subprocess
    import sys

    from tests.support.traffic import wait_for

    directory = tmp_path / "metrics"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    worker = subprocess.Popen(
        [sys.executable, "-c", KEPT_WORKER, str(unpacked[MODEL_NAME])],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert worker.stdout is not None
        while worker.stdout.readline() != b"ready\n":
            pass
        assert total(samples(directory), "tsobs_requests_total", outcome="success") == 1
        shutil.rmtree(directory)

        def back() -> Samples:
            found = samples(directory) if directory.is_dir() else {}
            recreated = total(
                found, "tsobs_internal_errors_total", component="metrics_dir_recreated"
            )
            return found if recreated == 1 else {}

        found = wait_for(back, what="the worker's files to be put back")
        assert total(found, "tsobs_requests_total", outcome="success") == 1
        assert total(found, "tsobs_workers", model_name=MODEL_NAME) == 1
        assert total(found, "tsobs_model_info", model_name=MODEL_NAME) == 1
        assert total(found, "tsobs_model_loads_total", outcome="success") == 1
    finally:
        assert worker.stdin is not None
        worker.stdin.close()
        worker.wait(timeout=30)


def test_gpu_memory_is_read_on_the_interval_without_batches(services, monkeypatch) -> None:
    """An idle worker's GPU gauges are current: the upkeep thread reads them, not batches."""
    import dataclasses

    import torch

    import handler_mixins.observability as observability
    from obs import heartbeat
    from tests.support.traffic import wait_for

    handler = services[MODEL_NAME]._entry_point.__self__
    observer: Observer = handler.__dict__["_tsobs_observer"]
    reads: List[int] = []

    def read(index: int) -> GpuMemory:
        reads.append(index)
        return GpuMemory(len(reads), 0, 0, 0, 1)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(observability, "read_cuda_memory", read)
    monkeypatch.setattr(handler, "device", torch.device("cuda", 0), raising=False)
    fast = dataclasses.replace(observer._settings, gpu_sample_interval_s=0.05)
    monkeypatch.setattr(observer, "_settings", fast)
    monkeypatch.setattr(observer, "gpu_sampler", observer._gpu_sampler(handler))
    heartbeat.start([observer.sample_gpu], on_error=lambda: None, interval_s=0.05)
    wait_for(lambda: len(reads) >= 5, what="several readings with no batch at all")
    monkeypatch.setattr(observer, "gpu_sampler", None)  # stops the thread's reads
