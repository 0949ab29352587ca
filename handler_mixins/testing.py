"""Run a handler in-process through TorchServe's own Python backend, without the frontend.

:func:`load_model` uses TorchServe's model loader and :meth:`ts.service.Service.predict`,
the code path a worker runs for each batch (minus the socket), so a test or benchmark sees
exactly the bytes and status codes a worker would send back. Useful to unit-test your own
handler with the mixin too.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import ts
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.model_loader import TsModelLoader
from ts.service import Service
from ts.utils.util import get_yaml_config


def unpack_archive(archive: Path, into: Path) -> Path:
    """Extract a ``.mar`` as TorchServe does before loading it."""
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(into)
    return into


def metrics_cache() -> MetricsCacheYamlImpl:
    """TorchServe's backend metrics store, configured as a worker configures it by default."""
    cache = MetricsCacheYamlImpl(
        config_file_path=str(Path(ts.__file__).parent / "configs" / "metrics.yaml")
    )
    cache.initialize_cache()
    return cache


def make_context(model_dir: Path, model_name: str, batch_size: int = 1) -> Context:
    """The context a worker hands to ``initialize`` for an unpacked archive."""
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    config_file = manifest["model"].get("configFile")
    yaml_config = get_yaml_config(str(model_dir / config_file)) if config_file else {}
    return Context(
        model_name,
        str(model_dir),
        manifest,
        batch_size,
        None,
        ts.__version__,
        metrics=metrics_cache(),
        model_yaml_config=yaml_config,
    )


def with_requests(context: Context, headers: Sequence[Mapping[str, str]]) -> Context:
    """``context`` as ts.service sets it up for a batch: request IDs and per-request headers."""
    context.request_ids = {index: f"request-{index}" for index in range(len(headers))}
    context.request_processor = [RequestProcessor(dict(h)) for h in headers]
    return context


def load_model(model_dir: Path, model_name: str, batch_size: int = 1) -> Service:
    """Load an unpacked model archive with TorchServe's loader (the handler's initialize runs).

    The model directory goes on ``sys.path``, as the frontend puts it on a worker's PYTHONPATH.
    """
    if str(model_dir) not in sys.path:
        sys.path.append(str(model_dir))
    handler = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())["model"]["handler"]
    service = TsModelLoader().load(
        model_name=model_name,
        model_dir=str(model_dir),
        handler=handler,
        gpu_id=None,
        batch_size=batch_size,
        metrics_cache=metrics_cache(),
    )
    service.set_cl_socket(None)  # only streaming responses write to the socket directly
    return service


def wire_request(
    request_id: str,
    body: bytes,
    headers: Optional[Mapping[str, str]] = None,
    content_type: str = "application/json",
) -> Dict[str, Any]:
    """One request as a worker holds it after reading it off the socket: a JSON body is
    decoded as ts/protocol/otf_message_handler.py decodes it, else left as bytes."""
    value: Any = body
    if content_type == "application/json":
        try:
            value = json.loads(body.decode("utf-8"))
        except ValueError:
            value = body
    return {
        "requestId": request_id.encode(),
        "parameters": [{"name": "body", "value": value, "contentType": content_type}],
        "headers": [{"name": k.encode(), "value": v.encode()} for k, v in (headers or {}).items()],
    }


def predict(service: Service, requests: Sequence[Dict[str, Any]]) -> bytes:
    """The encoded response a worker would send for this batch."""
    return bytes(service.predict(list(requests)))
