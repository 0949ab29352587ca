"""``ObservabilityMixin``: JSON logs and Prometheus metrics for a TorchServe handler.

Put it first among the bases: ``class MyHandler(ObservabilityMixin, ImageClassifier)``.
It wraps ``initialize`` and ``handle`` (also when a subclass overrides them) and, once the
model is loaded, the instance's ``preprocess``/``inference``/``postprocess``, so stages
the user overrides are timed too. The wrapped methods return exactly what they returned
before and raise exactly what they raised; a failure of the instrumentation itself is
counted in ``tsobs_internal_errors_total`` and otherwise ignored.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import os
import sys
import threading
import time
import types
from contextvars import ContextVar
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

from obs import heartbeat, ledger, logs, mpvalue
from obs.context import RequestIds, bind_batch, reset_batch
from obs.gpu import IntervalSampler, read_cuda_memory
from obs.metrics import ModelInstruments, ProcessInstruments, use_memory_only, use_multiprocess_dir
from obs.settings import MULTIPROC_DIR_ENV, Problem, Settings, report
from obs.signals import STAGE_FIELDS, Field, Outcome, Stage, exception_label

F = TypeVar("F", bound=Callable[..., Any])

_INSTALLED_HANDLE = "_tsobs_installed_handle"
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


def _prediction_exception() -> type:
    """TorchServe's ``PredictionException``, which ts/service.py catches with ``except``."""
    try:
        from ts.utils.util import PredictionException
    except ImportError:  # outside TorchServe nothing raises it

        class PredictionException(Exception):  # type: ignore[no-redef]
            pass

    return PredictionException


_PREDICTION_EXCEPTION = _prediction_exception()


def status_for_exception(exc: BaseException) -> int:
    """The HTTP status TorchServe 0.12 answers when ``handle`` raises ``exc`` (ts/service.py):
    subclasses of ``PredictionException`` keep their ``error_code``, as its ``except`` does."""
    if isinstance(exc, MemoryError):
        return 507
    code = getattr(exc, "error_code", None)
    if isinstance(exc, _PREDICTION_EXCEPTION) and isinstance(code, int):
        return code
    return 507 if "CUDA" in str(exc) else 503


def outcome_for_status(status: int) -> str:
    if status >= 500:
        return Outcome.SERVER_ERROR
    if status >= 400:
        return Outcome.CLIENT_ERROR
    return Outcome.SUCCESS


_OUTCOME_INDEX = {outcome: index for index, outcome in enumerate(Outcome.ALL)}


def _outcome_entry(status: int) -> Tuple[str, int]:
    """A status's outcome and that outcome's index in the ledger's counts."""
    outcome = outcome_for_status(status)
    return outcome, _OUTCOME_INDEX[outcome]


_OUTCOME_OF_STATUS = {status: _outcome_entry(status) for status in range(100, 600)}
"""The usual statuses' entries, looked up per request instead of computed."""
_batch_numbers = itertools.count(1)
"""Process-wide: batch IDs are keys of the process's one ledger, whatever the handler."""


class _Batch:
    """What one ``handle`` call accumulates until its completion lines are written."""

    __slots__ = (
        "counts",
        "current_token",
        "failed_stage",
        "fields",
        "ids",
        "size",
        "stage_seconds",
        "started",
        "token",
    )

    def __init__(self, fields: Dict[str, Any], ids: List[RequestIds], token: Any) -> None:
        self.fields = fields
        self.ids = ids
        self.size = len(ids)
        self.token = token
        self.stage_seconds: Dict[str, float] = {}
        self.failed_stage: Optional[str] = None
        self.current_token: Any = None
        self.counts: Optional[List[int]] = None
        """Requests per outcome once known; None until then, and again once in the ledger."""
        self.started = time.perf_counter()


class Observer:
    """The instrumentation of one handler instance in one worker process."""

    def __init__(self, handler: Any, context: Any, settings: Settings) -> None:
        self.worker = worker_identity()
        problems = list(settings.problems)
        metrics_off = "metrics and request counts are off; logs are still written"
        self.ledger: Any = _NoLedger()
        try:
            settings.metrics_dir.mkdir(parents=True, exist_ok=True)
            # The ledger lock first: no exporter folds this identity's files from here on.
            self.ledger = ledger.open_ledger(settings.metrics_dir, self.worker)
            use_multiprocess_dir(settings.metrics_dir, self.worker)
            self.process = ProcessInstruments()
        except OSError as err:
            problems.append(_dir_problem(settings, err, metrics_off))
            self.ledger = _NoLedger()
            use_memory_only()
            self.process = ProcessInstruments()
        self.emitter = logs.configure(settings, on_drop=self.process.count_dropped)
        self.ledger.settle_predecessor(self.write_lost)
        logs.route_to_json((type(handler).__module__, *settings.json_loggers))
        self.model = str(getattr(context, "model_name", None) or "unknown")
        manifest = getattr(context, "manifest", None) or {}
        self.version = str(manifest.get("model", {}).get("modelVersion") or "unknown")
        properties = getattr(context, "system_properties", None) or {}
        self.max_batch_size = int(properties.get("batch_size") or 1)
        self.metrics = ModelInstruments(self.model, self.version)
        self.key = ledger.model_key(self.model, self.version)
        for _problem in report(problems):
            self.process.count_internal_error("settings")
        self.handler_name = f"{type(handler).__module__}.{type(handler).__qualname__}"
        self._properties = properties
        self._settings = settings
        self.gpu_sampler: Optional[IntervalSampler] = None
        self._upkeep: Optional[threading.Thread] = None
        """Set once the model is loaded: only then does the handler know its device."""
        self.current: Optional[_Batch] = None
        """The batch most recently begun: what stages run in threads of their own (TorchServe's
        MicroBatching) are timed into. Concurrent async batches use :data:`_current_batch`."""
        self._log = logs.get_logger(
            model_name=self.model, model_version=self.version, worker=self.worker
        )
        self._completion_fields: Dict[str, Any] = {
            Field.TIMESTAMP: None,
            Field.LEVEL: "info",
            Field.LOGGER: logs.LOGGER_NAME,
            Field.EVENT: "request_completed",
            Field.MODEL: self.model,
            Field.VERSION: self.version,
            Field.WORKER: self.worker,
        }
        """What every ``request_completed`` line of this handler has in common, in line order."""
        wrap_stages(handler)

    def _gpu_sampler(self, handler: Any) -> Optional[IntervalSampler]:
        torch = sys.modules.get("torch")
        device = getattr(handler, "device", None)
        if (
            torch is None
            or self._settings.gpu_sample_interval_s is None
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

    def write_lost(self, batches: List[Dict[str, Any]]) -> None:
        """Log lines for the requests a dead predecessor on this port left in flight."""
        self.emitter.emit(ledger.lost_request_records(batches))

    # Model loading -------------------------------------------------------------------

    def loading(self) -> None:
        """Counted when loading begins: a worker killed while loading shows as a start and,
        once settled, as a failed load."""
        self.ledger.start(self.key)

    def model_loaded(
        self, handler: Any, context: Any, seconds: float, error: Optional[BaseException]
    ) -> None:
        self.ledger.loaded(self.key, error is None)
        self.metrics.load_seconds.observe(seconds)
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
        if self._upkeep is None:
            interval = min(heartbeat.INTERVAL_S, self._settings.gpu_sample_interval_s or 1e9)
            self._upkeep = heartbeat.start(
                (self.keep_files_in_place, self.sample_gpu),
                on_error=lambda: self.process.count_internal_error("upkeep"),
                interval_s=interval,
            )

    def keep_files_in_place(self) -> None:
        """Re-create the ledger and metric files if the directory went (counted)."""
        if self.ledger.keep_in_place():
            mpvalue.rehome()
            self.process.count_internal_error("metrics_dir_recreated")

    def sample_gpu(self) -> None:
        if self.gpu_sampler is not None:
            self.gpu_sampler.maybe_sample()

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
        batch_id = f"{self.worker}-{next(_batch_numbers)}"
        fields = {
            Field.MODEL: self.model,
            Field.VERSION: self.version,
            Field.WORKER: self.worker,
            Field.BATCH_ID: batch_id,
            Field.BATCH_SIZE: size,
            Field.REQUEST_IDS: [i.request_id for i in ids],
        }
        self.ledger.begin(
            batch_id,
            self.key,
            {"b": batch_id, "w": self.worker, "s": size, "r": [list(i) for i in ids]},
        )
        batch = _Batch(fields, ids, bind_batch(fields))
        batch.current_token = _current_batch.set(batch)
        self.current = batch
        return batch

    def finish(
        self, batch: _Batch, context: Any, result: Any, error: Optional[BaseException]
    ) -> None:
        try:
            self._finish(batch, context, result, error)
        finally:
            if self.current is batch:
                self.current = None
            reset_batch(batch.token)
            _current_batch.reset(batch.current_token)
            if batch.counts is not None:  # the lines failed: the counts must not
                self.ledger.finish(batch.fields[Field.BATCH_ID], self.key, batch.counts)

    def _finish(
        self, batch: _Batch, context: Any, result: Any, error: Optional[BaseException]
    ) -> None:
        handle_seconds = time.perf_counter() - batch.started
        batch.stage_seconds[Stage.HANDLE] = handle_seconds
        statuses = self._statuses(batch, context, result, error)
        outcomes = []
        counts = batch.counts = [0, 0, 0]
        for status in statuses:
            outcome, index = _OUTCOME_OF_STATUS.get(status) or _outcome_entry(status)
            outcomes.append(outcome)
            counts[index] += 1
        metrics = self.metrics
        metrics.observe_batch(batch.stage_seconds, batch.size, batch.size / self.max_batch_size)
        if error is not None:
            stage = batch.failed_stage or Stage.HANDLE
            metrics.count_error(stage, exception_label(error))
            self._log.error("batch_failed", exc_info=error, stage=stage, **_error_fields(error))
        self._write_completions(batch, statuses, outcomes)
        # Lines first, then the ledger: see obs/ledger.py on the window between the two.
        batch.counts = None
        self.ledger.finish(batch.fields[Field.BATCH_ID], self.key, counts)

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
        common = self._completion_fields.copy()
        common[Field.TIMESTAMP] = logs.iso_timestamp()
        common[Field.BATCH_ID] = batch.fields[Field.BATCH_ID]
        common[Field.BATCH_SIZE] = batch.size
        for stage, seconds in batch.stage_seconds.items():
            common[STAGE_FIELDS[stage]] = logs.milliseconds(seconds)
        records = []
        for index, (request_id, client_request_id, trace_id, span_id) in enumerate(batch.ids):
            record: Dict[str, Any] = {Field.BATCH_INDEX: index}
            if request_id is not None:
                record[Field.REQUEST_ID] = request_id
            if client_request_id is not None:
                record[Field.CLIENT_REQUEST_ID] = client_request_id
            if trace_id is not None:
                record[Field.TRACE_ID] = trace_id
                record[Field.SPAN_ID] = span_id
            record[Field.OUTCOME] = outcomes[index]
            record[Field.STATUS] = statuses[index]
            records.append(record)
        self.emitter.emit(records, shared=common)


class _NoLedger:
    """Stands in for the ledger when the metrics directory cannot be used."""

    def settle_predecessor(self, lost_lines: Any) -> int:
        return 0

    def start(self, key: str) -> None:
        pass

    def loaded(self, key: str, ok: bool) -> None:
        pass

    def begin(self, batch_id: str, key: str, record: Dict[str, Any]) -> None:
        pass

    def finish(self, batch_id: str, key: str, outcomes: Sequence[int]) -> None:
        pass

    def keep_in_place(self) -> bool:
        return False


def _dir_problem(settings: Settings, err: OSError, disabled: str) -> Problem:
    why = f"cannot be used ({err.strerror or err})"
    return Problem(MULTIPROC_DIR_ENV, str(settings.metrics_dir), why, disabled)


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


_current_batch: ContextVar[Optional[_Batch]] = ContextVar("tsobs_current_batch", default=None)
"""The batch of this thread or asyncio task: async handlers run several batches at once."""
_handling: ContextVar[Any] = ContextVar("tsobs_handling", default=None)
"""The handler whose ``handle`` this thread or task is inside, so an override that calls
``super().handle`` is observed once; per task, since async batches interleave."""


def _batch_of(handler: Any) -> Optional[_Batch]:
    batch = _current_batch.get()
    if batch is None:  # a thread of the handler's own, e.g. MicroBatching's stage threads
        observer = handler.__dict__.get(_OBSERVER)
        batch = observer.current if observer else None
    return batch


@contextlib.contextmanager
def _in_batch(batch: _Batch) -> Iterator[None]:
    """This thread or task inside ``batch``, as ``begin`` puts the thread that calls
    ``handle``: stages see it and log lines carry its fields."""
    token, fields_token = _current_batch.set(batch), bind_batch(batch.fields)
    try:
        yield
    finally:
        reset_batch(fields_token)
        _current_batch.reset(token)


def wrap_stages(handler: Any) -> None:
    """Time the stages on the instance, so the most-derived override is what is timed."""
    for stage in (Stage.PREPROCESS, Stage.INFERENCE, Stage.POSTPROCESS):
        method = getattr(handler, stage, None)
        if method is not None and not getattr(method, _WRAPPED, False):
            setattr(handler, stage, _timed_stage(handler, stage, method))


def _timed_stage(handler: Any, stage: str, method: Callable[..., Any]) -> Callable[..., Any]:
    clock = time.perf_counter

    def account(batch: Optional[_Batch], started: float, failed: bool) -> None:
        if batch is not None:
            if failed and batch.failed_stage is None:
                batch.failed_stage = stage
            seconds = batch.stage_seconds
            seconds[stage] = seconds.get(stage, 0.0) + clock() - started

    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            batch = _batch_of(handler)
            started = clock()
            try:
                result = await method(*args, **kwargs)
            except BaseException:
                account(batch, started, True)
                raise
            account(batch, started, False)
            return result

        setattr(timed_async, _WRAPPED, True)
        return timed_async

    @functools.wraps(method)
    def timed(*args: Any, **kwargs: Any) -> Any:
        batch = _current_batch.get()
        if batch is None:  # a thread of the handler's own, e.g. MicroBatching's stage threads
            batch = _batch_of(handler)
            if batch is not None:  # in its batch: its log lines carry the batch's IDs too
                with _in_batch(batch):
                    return timed(*args, **kwargs)
        started = clock()
        try:
            result = method(*args, **kwargs)
        except BaseException:
            account(batch, started, True)
            raise
        account(batch, started, False)
        return result

    setattr(timed, _WRAPPED, True)
    return timed


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
        if observer is not None:
            observer.contain("loading", observer.loading)
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


_Entered = Tuple["Observer", Optional[_Batch], Any]


def _enter(handler: Any, data: Any, context: Any) -> Optional[_Entered]:
    """Begin observing an outermost ``handle`` call; None where it is not observed (a nested
    ``super().handle``, or instrumentation that could not start)."""
    if _handling.get() is handler:
        return None
    observer = _observer(handler, context)
    if observer is None:
        return None
    batch = observer.contain("begin", observer.begin, data, context)
    return observer, batch, _handling.set(handler)


def _exit(entered: _Entered, context: Any, result: Any, error: Optional[BaseException]) -> None:
    observer, batch, token = entered
    _handling.reset(token)
    if batch is not None:
        observer.contain("finish", observer.finish, batch, context, result, error)


def _observed_handle(handle: F) -> F:
    """``handle`` observed: one batch begun and finished per outermost call, also when it is
    ``async def`` (TorchServe's async worker awaits it)."""
    if inspect.iscoroutinefunction(handle):

        @functools.wraps(handle)
        async def async_wrapper(
            self: Any, data: Any, context: Any, *args: Any, **kwargs: Any
        ) -> Any:
            entered = _enter(self, data, context)
            if entered is None:
                return await handle(self, data, context, *args, **kwargs)
            try:
                result = await handle(self, data, context, *args, **kwargs)
            except BaseException as error:
                _exit(entered, context, None, error)
                raise
            _exit(entered, context, result, None)
            return result

        setattr(async_wrapper, _WRAPPED, True)
        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(handle)
    def wrapper(self: Any, data: Any, context: Any, *args: Any, **kwargs: Any) -> Any:
        entered = _enter(self, data, context)
        if entered is None:
            return handle(self, data, context, *args, **kwargs)
        try:
            result = handle(self, data, context, *args, **kwargs)
        except BaseException as error:
            _exit(entered, context, None, error)
            raise
        _exit(entered, context, result, None)
        return result

    setattr(wrapper, _WRAPPED, True)
    return wrapper  # type: ignore[return-value]


def _observed_callable(handler: Any, value: Any) -> Any:
    """A ``handle`` installed on the instance (``self.handle = MicroBatching(self)``),
    observed like a class-level one."""
    if getattr(value, _WRAPPED, False) or not callable(value):
        return value
    call = type(value).__call__  # a callable object: its method may be async
    if inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(call):

        async def forward_async(_self: Any, data: Any, context: Any, *a: Any, **kw: Any) -> Any:
            return await value(data, context, *a, **kw)

        return types.MethodType(_observed_handle(forward_async), handler)

    def forward(_self: Any, data: Any, context: Any, *a: Any, **kw: Any) -> Any:
        return value(data, context, *a, **kw)

    return types.MethodType(_observed_handle(forward), handler)


class _ObservedHandle:
    """``handle`` on the mixin and its subclasses, as a data descriptor: a handler that puts
    its own ``handle`` on the instance, as TorchServe's micro-batching does in ``__init__``,
    gets it observed too, instead of shadowing the observed one."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self.func
        installed = obj.__dict__.get(_INSTALLED_HANDLE)
        return installed if installed is not None else self.func.__get__(obj, objtype)

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[_INSTALLED_HANDLE] = _observed_callable(obj, value)

    def __delete__(self, obj: Any) -> None:
        obj.__dict__.pop(_INSTALLED_HANDLE, None)


class ObservabilityMixin:
    """Adds request-scoped JSON logs and Prometheus metrics to a TorchServe handler."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        """Stages are wrapped before ``__init__`` runs, so what ``__init__`` hands them to
        (TorchServe's MicroBatching starts its stage threads there) gets the timed ones."""
        handler = super().__new__(cls)
        wrap_stages(handler)
        return handler

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        initialize = cls.__dict__.get("initialize")
        if callable(initialize) and not getattr(initialize, _WRAPPED, False):
            cls.initialize = _observed_initialize(initialize)  # type: ignore[method-assign]
        handle = cls.__dict__.get("handle")
        if callable(handle) and not getattr(handle, _WRAPPED, False):
            cls.handle = _ObservedHandle(_observed_handle(handle))  # type: ignore[assignment]

    @_observed_initialize
    def initialize(self, context: Any) -> Any:
        return super().initialize(context)  # type: ignore[misc]

    def _handle(self, data: Any, context: Any) -> Any:
        return super().handle(data, context)  # type: ignore[misc]

    handle = _ObservedHandle(_observed_handle(_handle))
    del _handle
