"""PromQL building blocks shared by the rules and the dashboards.

Each helper encodes one rule of correctness once (grouping with the optional cluster label,
TorchServe's absent ``Requests5XX``, ratios of rates), so no expression is written twice.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence, Tuple

from obs.generate import torchserve as ts
from obs.signals import Label, Metrics, MetricSpec, Outcome

TORCHSERVE = "torchserve"
EXPORTER = "exporter"
RECORDED = "recorded"

STATUS_CLASS = "code"
"""Label that :func:`Queries.http_responses` adds to tell the ``Requests*XX`` rates apart."""

DEFAULT_VERSION = "default"
"""``model_version`` of TorchServe's ``ts_*`` counters for a request whose URL names no
version (``/predictions/m``): the handler's metrics carry the real version instead, so
dashboard filters keep ``default`` beside the chosen versions, and alerts join on the name."""

EVENT_MEMORY = "1d"
"""How far back :meth:`Queries.new_events` looks for a counter's value before a gap: an
exporter outage longer than this makes its rare-event counters read as new once."""

HOST = "host"
"""Label :meth:`Queries.host` adds; the exporter must run on the same host as TorchServe."""

RECORD_PREFIX = "model"
"""Aggregation level of recorded per-model series (``model:<metric>:<operation>``)."""

NAME_PREFIX = "model_name"
"""Level of series recorded per model name only, where TorchServe's ``ts_*`` counters
(``model_version="default"``) meet the handler's versioned ones."""

OUTCOME_PREFIX = "model_outcome"
"""Level of per-model series that keep the ``outcome`` label."""


def num(value: float) -> str:
    """A number as PromQL text, without float noise (``14.4 * 0.005`` is ``0.072``)."""
    return f"{round(value, 10):g}"


def le_regex(bound: float) -> str:
    """Matcher value for a bucket bound that survives Prometheus 3's ``le`` normalisation."""
    spellings = {repr(float(bound)), f"{bound:g}"}
    return "|".join(sorted(re.escape(s).replace("\\", "\\\\") for s in spellings))


class Queries:
    """Selectors and expressions for one config; ``dashboard=True`` adds variable filters."""

    def __init__(self, cfg: Mapping[str, Any], dashboard: bool = False) -> None:
        self.cfg = cfg
        self.dashboard = dashboard
        self.cluster: Tuple[str, ...] = (cfg["cluster_label"],) if cfg["cluster_label"] else ()
        self.model_by = self.cluster + (Label.MODEL, Label.VERSION)
        self.model_name_by = self.cluster + (Label.MODEL,)
        """Joins between TorchServe's counters and ours: see :data:`DEFAULT_VERSION`."""
        self.instance_by = self.cluster + ("instance",)
        self.host_label = cfg["host_label"]
        self.host_by = self.cluster + (self.host_label,)
        self.host_extra: Tuple[str, ...] = (
            () if self.host_label == "instance" else (self.host_label,)
        )
        """What aggregations must keep, besides ``instance``, for :meth:`host` to work."""
        """Dashboards group per host by the config's ``host_label`` (see :meth:`host_matcher`)."""
        self.rate_window = "$__rate_interval" if dashboard else cfg["rate_window"]

    def by(self, labels: Sequence[str]) -> str:
        """``by (...)`` clause; callers pass ``self.model_by`` or ``self.instance_by`` plus extras."""
        return f"by ({', '.join(labels)})"

    def sel(self, metric: str, source: str, per_model: bool = True, extra: str = "") -> str:
        """``metric{...}`` with the job selector, dashboard filters and ``extra`` matchers.

        ``source`` is ``torchserve``, ``exporter``, or ``recorded`` for our recorded
        per-model series, which have no job or instance label.
        """
        matchers = [self.cfg[f"{source}_selector"]] if source != RECORDED else []
        if self.dashboard:
            if self.cluster:
                matchers.append(f'{self.cluster[0]}=~"$cluster"')
            if source != RECORDED:
                matchers.append(self.host_matcher())
            if per_model:
                matchers.append(f'{Label.MODEL}=~"$model"')
                version = f"$version|{DEFAULT_VERSION}" if source == TORCHSERVE else "$version"
                matchers.append(f'{Label.VERSION}=~"{version}"')
        if extra:
            matchers.append(extra)
        return f"{metric}{{{', '.join(matchers)}}}" if matchers else metric

    def host_matcher(self) -> str:
        """Matcher for the dashboards' ``$host`` variable.

        With ``host_label: instance`` the variable holds the host part of ``instance``, and
        both jobs match whatever their port: TorchServe (8082) and the exporter (8083) on
        one host or in one pod, or an exporter whose scrape config names TorchServe's host.
        """
        if self.host_label == "instance":
            return 'instance=~"$host(:[0-9]+)?"'
        return f'{self.host_label}=~"$host"'

    def exp(
        self, spec: MetricSpec, suffix: str = "", per_model: bool = True, extra: str = ""
    ) -> str:
        """Selector of one of our metrics, scraped from the exporter."""
        return self.sel(spec.series(suffix), EXPORTER, per_model, extra)

    def rate(self, selector: str, window: str = "") -> str:
        return f"rate({selector}[{window or self.rate_window}])"

    def sum_rate(self, selector: str, labels: Sequence[str], window: str = "") -> str:
        return f"sum {self.by(labels)} ({self.rate(selector, window)})"

    def or_zero(self, expr: str, like: str, on: Sequence[str] = ()) -> str:
        """``expr``, or 0 for every group of ``like`` where ``expr`` has no series yet.

        ``on`` names the labels that identify a group when ``expr`` carries more of them.
        """
        matching = f" on ({', '.join(on)})" if on else ""
        return f"(\n  {expr}\n  or{matching}\n  0 * {like}\n)"

    def new_events(self, selector: str, window: str) -> str:
        """Events a counter recorded in the last ``window``, robust to gaps and resets.

        The baseline is the counter's last value before the window, looked up as far back as
        :data:`EVENT_MEMORY`, so a scrape gap shorter than that is not read as a new series
        (``x offset W`` alone would replay the lifetime total after an outage). Above the
        baseline: the difference. Below it: the counter was reset, everything it holds is
        new. No baseline: a series born inside the window, counted from zero. A reset that
        brings the counter back to its old value is seen by ``increase`` over the window.
        """
        base = f"last_over_time({selector}[{EVENT_MEMORY}] offset {window})"
        return (
            f"(\n  ({selector} - {base}) > 0\n  or\n  {selector} < {base}\n"
            f"  or\n  ({selector} unless {base})\n  or\n  increase({selector}[{window}])\n)"
        )

    def host(self, expr: str) -> str:
        """``expr`` with a ``host`` label, to join TorchServe (port 8082) with the exporter
        beside it (8083): the host part of ``instance``, or the config's ``host_label``.

        ``expr`` must keep ``instance`` and :attr:`host_extra` in its aggregations.
        """
        if self.host_label == "instance":
            return f'label_replace({expr}, "{HOST}", "$1", "instance", "(.+?)(?::[0-9]+)?")'
        return f'label_replace({expr}, "{HOST}", "$1", "{self.host_label}", "(.*)")'

    def http_responses(self, labels: Sequence[str], window: str = "") -> str:
        """Rate of TorchServe's HTTP responses with a ``code`` label per status class.

        A regex on ``__name__`` would fail ("same labelset"); ``label_replace ... or`` does not.
        """
        parts = [
            f"label_replace({self.rate(self.sel(name, TORCHSERVE, per_model=False), window)}, "
            f'"{STATUS_CLASS}", "{code}", "", "")'
            for code, name in ts.REQUESTS_BY_CLASS.items()
        ]
        joined = "\n  or\n  ".join(parts)
        return f"sum {self.by(tuple(labels) + (STATUS_CLASS,))} (\n  {joined}\n)"

    def http_5xx_ratio(self, labels: Sequence[str], window: str = "") -> str:
        """Share of HTTP responses that are 5xx: 0, not absent, before the first 5xx."""
        five = self.sum_rate(
            self.sel(ts.REQUESTS_BY_CLASS["5xx"], TORCHSERVE, per_model=False), labels, window
        )
        everything = f"sum {self.by(labels)} ({self.http_responses(labels, window)})"
        return f"{self.or_zero(five, everything)}\n/\n{everything}"

    def server_error_ratio(self, labels: Sequence[str], window: str = "") -> str:
        """Share of inference requests the handler answered with a server error."""
        total = self.sum_rate(self.exp(Metrics.REQUESTS), labels, window)
        errors = self.sum_rate(
            self.exp(Metrics.REQUESTS, extra=f'{Label.OUTCOME}="{Outcome.SERVER_ERROR}"'),
            labels,
            window,
        )
        return f"{self.or_zero(errors, total)}\n/\n{total}"

    def slow_ratio(self, labels: Sequence[str], stage: str, bound: float, window: str = "") -> str:
        """Share of ``stage`` observations slower than ``bound`` seconds (a bucket bound)."""
        stage_m = f'{Label.STAGE}="{stage}"'
        fast = self.sum_rate(
            self.exp(Metrics.STAGE_DURATION, "bucket", extra=f'{stage_m}, le=~"{le_regex(bound)}"'),
            labels,
            window,
        )
        total = self.sum_rate(
            self.exp(Metrics.STAGE_DURATION, "count", extra=stage_m), labels, window
        )
        return f"1 - (\n  {fast}\n  /\n  {total}\n)"

    def mean_ts_latency(self, counter: str, labels: Sequence[str], window: str = "") -> str:
        """Mean seconds per request from a TorchServe cumulative-microseconds counter."""
        spent = self.sum_rate(self.sel(counter, TORCHSERVE), labels, window)
        requests = self.sum_rate(self.sel(ts.INFERENCE_REQUESTS, TORCHSERVE), labels, window)
        return f"{spent}\n/\n{requests}\n/ 1e6"

    def host_average(self, gauge: str, labels: Sequence[str], window: str) -> str:
        """A TorchServe host gauge averaged over ``window``: it is sampled once a minute and
        jumps, so alerts and panels read its average."""
        sampled = self.sel(gauge, TORCHSERVE, per_model=False)
        return f"avg {self.by(labels)} (avg_over_time({sampled}[{window}]))"

    def gpu_memory_used_ratio(self, labels: Sequence[str]) -> str:
        """Share of each GPU's memory in use by all processes; ``labels`` without ``device``."""
        by = self.by(tuple(labels) + (Label.DEVICE,))
        used = self.exp(Metrics.GPU_MEMORY_USED, per_model=False)
        total = self.exp(Metrics.GPU_MEMORY_TOTAL, per_model=False)
        return f"max {by} ({used})\n/\nmax {by} ({total})"

    def quantile(self, q: float, spec: MetricSpec, labels: Sequence[str], extra: str = "") -> str:
        """``histogram_quantile`` of one of our histograms, grouped by ``labels``."""
        rated = self.sum_rate(self.exp(spec, "bucket", extra=extra), tuple(labels) + ("le",))
        return f"histogram_quantile({num(q)}, {rated})"

    def histogram_mean(self, spec: MetricSpec, labels: Sequence[str], extra: str = "") -> str:
        """Mean of one of our histograms: ratio of the rates of ``_sum`` and ``_count``."""
        total = self.sum_rate(self.exp(spec, "sum", extra=extra), labels)
        count = self.sum_rate(self.exp(spec, "count", extra=extra), labels)
        return f"{total}\n/\n{count}"


def record_name(spec_name: str, operation: str, window: str, level: str = RECORD_PREFIX) -> str:
    """Recording-rule name ``<level>:<metric>:<operation><window>`` (Prometheus convention)."""
    return f"{level}:{spec_name}:{operation}{window}"
