"""The metric definitions follow Prometheus conventions and never take unbounded labels."""

from __future__ import annotations

import re

from obs.signals import (
    ECS_FIELDS,
    KNOWN_EXCEPTIONS,
    LATENCY_BUCKETS,
    OTHER,
    PREFIX,
    Field,
    Label,
    Metrics,
    all_metrics,
    exception_label,
)

UNBOUNDED = {
    Field.REQUEST_ID,
    Field.CLIENT_REQUEST_ID,
    Field.TRACE_ID,
    Field.SPAN_ID,
    Field.BATCH_ID,
    "error_message",
}


def test_names_follow_prometheus_conventions() -> None:
    specs = all_metrics()
    assert len({s.name for s in specs}) == len(specs)
    for spec in specs:
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", spec.name), spec.name
        assert spec.name.startswith(PREFIX) and not spec.name.startswith("ts_")
        assert spec.help.endswith(".")
        assert spec.kind in ("counter", "gauge", "histogram")
        assert (spec.kind == "counter") == spec.name.endswith("_total"), spec.name
        if spec.unit:
            assert spec.name.endswith(f"_{spec.unit}"), spec.name
        if spec.kind == "histogram":
            assert list(spec.buckets) == sorted(spec.buckets) and spec.buckets
        if spec.kind == "gauge" and not spec.by_exporter:
            assert spec.multiprocess_mode, spec.name
        if spec.by_exporter:
            assert spec.kind == "gauge" and not spec.multiprocess_mode


def test_no_label_takes_client_supplied_values() -> None:
    for spec in all_metrics():
        assert not UNBOUNDED & set(spec.labels), spec.name


def test_latency_buckets_resolve_1ms_to_60s() -> None:
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 60.0
    assert Metrics.STAGE_DURATION.buckets == LATENCY_BUCKETS
    assert Metrics.STAGE_DURATION.unit == "seconds"


def test_model_labels_match_torchserve_metrics() -> None:
    assert (Label.MODEL, Label.VERSION) == ("model_name", "model_version")
    assert Metrics.REQUESTS.labels[:2] == (Label.MODEL, Label.VERSION)


def test_exception_labels_are_bounded() -> None:
    class CustomFailure(Exception):
        pass

    assert exception_label(ValueError()) == "ValueError"
    assert exception_label(CustomFailure()) == OTHER
    assert "ValueError" in KNOWN_EXCEPTIONS


def test_every_ecs_name_is_distinct() -> None:
    assert len(set(ECS_FIELDS.values())) == len(ECS_FIELDS)
    scalars = {name for name in ECS_FIELDS.values() if "." not in name}
    prefixes = {name.split(".")[0] for name in ECS_FIELDS.values() if "." in name}
    assert not scalars & prefixes  # never a scalar `log` beside `log.*`
