"""``ObservabilityMixin``: JSON logs and Prometheus metrics for a TorchServe handler.

Put it first among the bases: ``class MyHandler(ObservabilityMixin, ImageClassifier)``.
It wraps ``initialize`` and ``handle`` (also when a subclass overrides them) and, once the
model is loaded, the instance's ``preprocess``/``inference``/``postprocess``, so stages
the user overrides are timed too. The wrapped methods return exactly what they returned
before and raise exactly what they raised; a failure of the instrumentation itself is
counted in ``tsobs_internal_errors_total`` and otherwise ignored.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar

from obs import heartbeat, logs
from obs.context import ID_FIELDS, RequestIds, bind_batch, reset_batch
from obs.gpu import IntervalSampler, read_cuda_memory
from obs.metrics import ModelInstruments, ProcessInstruments, use_multiprocess_dir
from obs.settings import Settings
from obs.signals import STAGE_FIELDS, Field, Outcome, Stage, exception_label

F = TypeVar("F", bound=Callable[..., Any])

_ACTIVE_HANDLE = "_tsobs_in_handle"
_ACTIVE_INITIALIZE = "_tsobs_in_initialize"
_OBSERVER = "_tsobs_observer"
_WRAPPED = "_tsobs_wrapped"
_MODEL_CONFIG_KEY = "torchserve_obs"
"""Section of the model's model-config.yaml read by the mixin (``torch_version``)."""


def worker_identity(argv: Sequence[str] = sys.argv) -> str:
    """``w<port>`` for a TorchServe worker, from its ``--sock-name .../.ts.sock.<port>`` or
    ``--port`` argument; ``pid<pid>`` outside TorchServe.

    TorchServe restarts a dead worker on the same port, so the identity survives restarts.
    """
    args = list(argv)
    for flag in ("--sock-name", "--port"):
        if flag in args[:-1]:
            value = args[args.index(flag) + 1].rsplit(".", 1)[-1]
            if value.isdigit():
                return f"w{value}"
    return f"pid{os.getpid()}"


def status_for_exception(exc: BaseException) -> int:
    """The HTTP status TorchServe 0.12 answers when ``handle`` raises ``exc`` (ts/service.py)."""
    if isinstance(exc, MemoryError):
        return 507
    code = getattr(exc, "error_code", None)
    if type(exc).__name__ == "PredictionException" and isinstance(code, int):
        return code
    return 507 if "CUDA" in str(exc) else 503


def outcome_for_status(status: int) -> str:
    if status >= 500:
        return Outcome.SERVER_ERROR
    if status >= 400:
        return Outcome.CLIENT_ERROR
    return Outcome.SUCCESS


class _Batch:
    """What one ``handle`` call accumulates until its completion lines are written."""

    __slots__ = ("failed_stage", "fields", "ids", "size", "stage_seconds", "started", "token")

    def __init__(self, fields: Dict[str, Any], ids: List[RequestIds], token: Any) -> None:
        self.fields = fields
        self.ids = ids
        self.size = len(ids)
        self.token = token
        self.stage_seconds: Dict[str, float] = {}
        self.failed_stage: Optional[str] = None
        self.started = time.perf_counter()


class Observer:
    """The instrumentation of one handler instance in one worker process."""

    def __init__(self, handler: Any, context: Any, settings: Settings) -> None:
        self.worker = worker_identity()
        use_multiprocess_dir(settings.metrics_dir, self.worker)
        self.process = ProcessInstruments()
        self.emitter = logs.configure(settings, on_drop=self.process.count_dropped)
        logs.route_to_json((type(handler).__module__, *settings.json_loggers))
        self.model = str(getattr(context, "model_name", None) or "unknown")
        manifest = getattr(context, "manifest", None) or {}
        self.version = str(manifest.get("model", {}).get("modelVersion") or "unknown")
        properties = getattr(context, "system_properties", None) or {}
        self.max_batch_size = int(properties.get("batch_size") or 1)
        self.metrics = ModelInstruments(self.model, self.version)
        self.handler_name = f"{type(handler).__module__}.{type(handler).__qualname__}"
        self._properties = properties
        self._settings = settings
        self.gpu_sampler: Optional[IntervalSampler] = None
        self._heartbeat: Optional[threading.Thread] = None
        """Set once the model is loaded: only then does the handler know its device."""
        self._batch_ids = itertools.count(1)
        self.current: Optional[_Batch] = None
        self._log = logs.get_logger(
            model_name=self.model, model_version=self.version, worker=self.worker
        )
        self.wrap_stages(handler)

    def _gpu_sampler(self, handler: Any) -> Optional[IntervalSampler]:
        torch = sys.modules.get("torch")
        device = getattr(handler, "device", None)
        if (
            torch is None
            or getattr(device, "type", None) != "cuda"
            or not torch.cuda.is_available()
        ):
            return None
        index = device.index
        if index is None:
            index = int(self._properties.get("gpu_id") or 0)
        label = f"cuda:{index}"
        return IntervalSampler(
            read=lambda: read_cuda_memory(index),
            publish=lambda memory: self.metrics.set_gpu_memory(label, memory),
            interval_s=self._settings.gpu_sample_interval_s,
        )

    def contain(self, component: str, func: Callable[..., Any], *args: Any) -> Any:
        """Run instrumentation code; a failure is counted, never raised into the handler."""
        try:
            return func(*args)
        except Exception:
            try:
                self.process.count_internal_error(component)
            except Exception:
                pass
            return None

    # Model loading -------------------------------------------------------------------

    def model_loaded(
        self, handler: Any, context: Any, seconds: float, error: Optional[BaseException]
    ) -> None:
        self.metrics.worker_starts.inc()
        self.metrics.load_seconds.observe(seconds)
        self.metrics.loads[Outcome.SUCCESS if error is None else Outcome.SERVER_ERROR].inc()
        torch = sys.modules.get("torch")
        torch_version = str(getattr(torch, "__version__", "none"))
        self.metrics.set_info(
            self.handler_name, torch_version, _torchserve_version(), _python_version()
        )
        expected = _expected_torch_version(context)
        mismatch = expected is not None and torch_version.split("+")[0] != expected
        self.metrics.torch_mismatch.set(1 if mismatch else 0)
        fields: Dict[str, Any] = {
            Field.DURATION_MS: round(seconds * 1000, 3),
            Field.STAGE: Stage.INITIALIZE,
        }
        if error is None:
            self._log.info("model_loaded", handler=self.handler_name, torch_version=torch_version)
        else:
            self._log.error("model_load_failed", exc_info=error, **fields, **_error_fields(error))
            self.metrics.count_error(Stage.INITIALIZE, exception_label(error))
            return
        if mismatch:
            self._log.warning("torch_version_mismatch", expected=expected, actual=torch_version)
        self.gpu_sampler = self._gpu_sampler(handler)
        if self._heartbeat is None:
            self._heartbeat = heartbeat.start(
                self._settings.metrics_dir, self.worker, self.model, self.version
            )

    def wrap_stages(self, handler: Any) -> None:
        """Time the stages on the instance, so the most-derived override is what is timed."""
        for stage in (Stage.PREPROCESS, Stage.INFERENCE, Stage.POSTPROCESS):
            method = getattr(handler, stage, None)
            if method is not None and not getattr(method, _WRAPPED, False):
                setattr(handler, stage, self._timed_stage(stage, method))

    def _timed_stage(self, stage: str, method: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.perf_counter

        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            batch = self.current
            started = clock()
            try:
                return method(*args, **kwargs)
            except BaseException:
                if batch is not None and batch.failed_stage is None:
                    batch.failed_stage = stage
                raise
            finally:
                if batch is not None:
                    batch.stage_seconds[stage] = (
                        batch.stage_seconds.get(stage, 0.0) + clock() - started
                    )

        setattr(timed, _WRAPPED, True)
        return timed

    # Batches --------------------------------------------------------------------------

    def begin(self, data: Any, context: Any) -> _Batch:
        request_ids = getattr(context, "request_ids", None) or {}
        processors = getattr(context, "request_processor", None) or ()
        size = len(data) if isinstance(data, list) else len(request_ids)
        ids = []
        for index in range(size):
            headers = (
                processors[index].get_request_properties() if index < len(processors) else None
            )
            ids.append(RequestIds.from_headers(request_ids.get(index), headers))
        fields = {
            Field.MODEL: self.model,
            Field.VERSION: self.version,
            Field.WORKER: self.worker,
            Field.BATCH_ID: f"{self.worker}-{next(self._batch_ids)}",
            Field.BATCH_SIZE: size,
            Field.REQUEST_IDS: [i.request_id for i in ids],
        }
        batch = _Batch(fields, ids, bind_batch(fields))
        self.current = batch
        return batch

    def finish(
        self, batch: _Batch, context: Any, result: Any, error: Optional[BaseException]
    ) -> None:
        try:
            self._finish(batch, context, result, error)
        finally:
            self.current = None
            reset_batch(batch.token)

    def _finish(
        self, batch: _Batch, context: Any, result: Any, error: Optional[BaseException]
    ) -> None:
        handle_seconds = time.perf_counter() - batch.started
        batch.stage_seconds[Stage.HANDLE] = handle_seconds
        statuses = self._statuses(batch, context, result, error)
        metrics = self.metrics
        for stage, seconds in batch.stage_seconds.items():
            metrics.stage_seconds[stage].observe(seconds)
        if batch.size:
            metrics.batch_size.observe(batch.size)
            metrics.batch_fill.observe(batch.size / self.max_batch_size)
        outcomes = [outcome_for_status(s) for s in statuses]
        for outcome in Outcome.ALL:
            count = outcomes.count(outcome)
            if count:
                metrics.requests[outcome].inc(count)
        if error is not None:
            stage = batch.failed_stage or Stage.HANDLE
            metrics.count_error(stage, exception_label(error))
            self._log.error("batch_failed", exc_info=error, stage=stage, **_error_fields(error))
        self._write_completions(batch, statuses, outcomes)
        if self.gpu_sampler is not None:
            self.gpu_sampler.maybe_sample()

    @staticmethod
    def _statuses(
        batch: _Batch, context: Any, result: Any, error: Optional[BaseException]
    ) -> List[int]:
        """The status TorchServe will answer each request with, as ts/service.py decides it."""
        if error is not None:
            return [status_for_exception(error)] * batch.size
        if not isinstance(result, list) or len(result) != batch.size:
            return [503] * batch.size
        processors = getattr(context, "request_processor", None) or ()
        return [
            int(processors[i].get_response_status_code()) if i < len(processors) else 200
            for i in range(batch.size)
        ]

    def _write_completions(self, batch: _Batch, statuses: List[int], outcomes: List[str]) -> None:
        common = {
            Field.TIMESTAMP: logs.iso_timestamp(),
            Field.LEVEL: "info",
            Field.LOGGER: logs.LOGGER_NAME,
            Field.EVENT: "request_completed",
            **batch.fields,
        }
        del common[Field.REQUEST_IDS]
        for stage, seconds in batch.stage_seconds.items():
            common[STAGE_FIELDS[stage]] = logs.milliseconds(seconds)
        records = []
        for index, ids in enumerate(batch.ids):
            record: Dict[str, Any] = {Field.BATCH_INDEX: index}
            for name, value in zip(ID_FIELDS, ids):
                if value is not None:
                    record[name] = value
            record[Field.OUTCOME] = outcomes[index]
            record[Field.STATUS] = statuses[index]
            records.append(record)
        self.emitter.emit(records, shared=common)


def _error_fields(error: BaseException) -> Dict[str, Any]:
    return {
        Field.ERROR_TYPE: type(error).__name__,
        Field.ERROR_MESSAGE: logs.truncate(str(error), logs.MAX_MESSAGE_LENGTH),
    }


def _torchserve_version() -> str:
    try:
        from ts.version import __version__
    except ImportError:
        return "none"
    return str(__version__)


def _python_version() -> str:
    return "{}.{}.{}".format(*sys.version_info[:3])


def _expected_torch_version(context: Any) -> Optional[str]:
    config = getattr(context, "model_yaml_config", None) or {}
    section = config.get(_MODEL_CONFIG_KEY) if isinstance(config, dict) else None
    declared = section.get("torch_version") if isinstance(section, dict) else None
    return str(declared) if declared else None


def _observer(handler: Any, context: Any) -> Optional[Observer]:
    """The handler's observer, created on first use; None if it cannot be (counted nowhere:
    without an observer there is no metrics file to count in, so it is logged to stderr)."""
    observer = handler.__dict__.get(_OBSERVER)
    if observer is None:
        try:
            observer = Observer(handler, context, Settings.from_env())
        except Exception as err:
            print(f"torchserve-obs: instrumentation disabled: {err!r}", file=sys.stderr)
            observer = False
        handler.__dict__[_OBSERVER] = observer
    return observer or None


def _observed_initialize(initialize: F) -> F:
    @functools.wraps(initialize)
    def wrapper(self: Any, context: Any, *args: Any, **kwargs: Any) -> Any:
        if self.__dict__.get(_ACTIVE_INITIALIZE):
            return initialize(self, context, *args, **kwargs)
        observer = _observer(self, context)
        self.__dict__[_ACTIVE_INITIALIZE] = True
        started = time.perf_counter()
        error: Optional[BaseException] = None
        try:
            return initialize(self, context, *args, **kwargs)
        except BaseException as raised:
            error = raised
            raise
        finally:
            self.__dict__[_ACTIVE_INITIALIZE] = False
            if observer is not None:
                seconds = time.perf_counter() - started
                observer.contain("initialize", observer.model_loaded, self, context, seconds, error)

    setattr(wrapper, _WRAPPED, True)
    return wrapper  # type: ignore[return-value]


def _observed_handle(handle: F) -> F:
    @functools.wraps(handle)
    def wrapper(self: Any, data: Any, context: Any, *args: Any, **kwargs: Any) -> Any:
        if self.__dict__.get(_ACTIVE_HANDLE):
            return handle(self, data, context, *args, **kwargs)
        observer = _observer(self, context)
        if observer is None:
            return handle(self, data, context, *args, **kwargs)
        batch = observer.contain("begin", observer.begin, data, context)
        self.__dict__[_ACTIVE_HANDLE] = True
        result: Any = None
        error: Optional[BaseException] = None
        try:
            result = handle(self, data, context, *args, **kwargs)
            return result
        except BaseException as raised:
            error = raised
            raise
        finally:
            self.__dict__[_ACTIVE_HANDLE] = False
            if batch is not None:
                observer.contain("finish", observer.finish, batch, context, result, error)

    setattr(wrapper, _WRAPPED, True)
    return wrapper  # type: ignore[return-value]


_WRAPPERS = {"initialize": _observed_initialize, "handle": _observed_handle}


class ObservabilityMixin:
    """Adds request-scoped JSON logs and Prometheus metrics to a TorchServe handler."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, wrap in _WRAPPERS.items():
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, _WRAPPED, False):
                setattr(cls, name, wrap(method))

    @_observed_initialize
    def initialize(self, context: Any) -> Any:
        return super().initialize(context)  # type: ignore[misc]

    @_observed_handle
    def handle(self, data: Any, context: Any) -> Any:
        return super().handle(data, context)  # type: ignore[misc]
