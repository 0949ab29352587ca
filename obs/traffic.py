"""Inference traffic and TorchServe's model log, for the demo, the stack and the tests."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

LOG_MARKER = " MODEL_LOG - "


@dataclass(frozen=True)
class Request:
    body: bytes
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Response:
    status: int
    request_id: Optional[str]
    body: bytes
    seconds: float


def predict(base_url: str, model: str, request: Request, timeout: float = 60.0) -> Response:
    """POST one inference request; HTTP errors are answers too."""
    http_request = urllib.request.Request(
        f"{base_url}/predictions/{model}",
        data=request.body,
        headers={"Content-Type": "application/json", **request.headers},
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(http_request, timeout=timeout) as answer:
            status, headers, body = answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        status, headers, body = error.code, error.headers, error.read()
    return Response(status, headers.get("x-request-id"), body, time.perf_counter() - started)


def send_all(
    base_url: str, model: str, requests: Sequence[Request], concurrency: int = 16
) -> List[Response]:
    """Send every request, ``concurrency`` at a time, answers in request order."""
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda r: predict(base_url, model, r), requests))


def json_request(payload: Any, headers: Optional[Mapping[str, str]] = None) -> Request:
    return Request(json.dumps(payload).encode(), dict(headers or {}))


def json_log_entries(model_log: Path) -> List[Tuple[str, Dict[str, Any]]]:
    """Each line of a TorchServe log that carries a worker's JSON object, with it: raw lines
    (model_log.jsonl, our log4j config) or inside log4j lines (model_log.log, the stock one)."""
    entries = []
    for line in model_log.read_text(errors="replace").splitlines():
        _, found, message = line.partition(LOG_MARKER)
        message = message if found else line
        if message.startswith("{"):
            try:
                entries.append((line, json.loads(message)))
            except ValueError:
                continue
    return entries


def json_log_lines(model_log: Path) -> List[Dict[str, Any]]:
    """The JSON objects among the worker output lines in a TorchServe log."""
    return [record for _, record in json_log_entries(model_log)]
