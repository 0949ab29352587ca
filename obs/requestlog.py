"""``torchserve-obs logs REQUEST_ID``: one request's story from the local JSON-lines files.

What an on-call engineer does first: given TorchServe's request ID (the ``x-request-id`` a
client got), the client's own ``X-Request-ID`` or a W3C trace ID, find the request's
``request_completed`` line, then everything of its batch (stage timings, the ``batch_failed``
line with its error and traceback, the handler's own lines, the neighbouring requests), and
print the Kibana Discover link for the same query when a Kibana URL is known. Reads both
field sets (otel and ECS) and both file shapes (raw JSON lines, or JSON inside log4j lines).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence

from obs.errors import UsageError
from obs.kibana import discover_url
from obs.logfile import rotated_files
from obs.signals import ECS_EVENT_OUTCOME, ECS_FIELDS, STAGE_FIELDS, Field, Label

Record = Dict[str, Any]

DEFAULT_LOG_DIR = Path(".torchserve-obs") / "torchserve" / "logs"
"""Where the native stack's TorchServe writes (``torchserve-obs stack up``)."""
ID_FIELDS = (Field.REQUEST_ID, Field.CLIENT_REQUEST_ID, Field.TRACE_ID, Field.REQUEST_IDS)
"""The fields an ID is looked up in (``request_ids``: a batch line naming it)."""
COMPLETED = "request_completed"
REASON = Label.LOST_REASON
"""Why a request got no answer (``worker_died``), on the completion line of a lost request."""
LOG4J_MARKER = " - {"

_FROM_ECS = {ecs: field for field, ecs in ECS_FIELDS.items()}


def log_files(paths: Sequence[Path]) -> List[Path]:
    """The files to read: given files as they are; in a folder, the JSON-lines files and
    their rotated copies (oldest first), and model_log.log (JSON inside log4j lines,
    TorchServe's stock config)."""
    found: List[Path] = []
    for path in paths:
        if path.is_dir():
            for current in sorted(path.glob("*.jsonl")) + [path / "model_log.log"]:
                found.extend(p for p in [*rotated_files(current), current] if p.is_file())
        elif path.is_file():
            found.append(path)
    return found


def read_records(files: Iterable[Path]) -> List[Record]:
    """Every JSON object in the files, in otel field names whatever set they were written in."""
    records = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if not line.startswith("{"):
                    _prefix, found, rest = line.partition(LOG4J_MARKER)
                    if not found:
                        continue
                    line = "{" + rest
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    records.append({_FROM_ECS.get(k, k): v for k, v in record.items()})
    return records


def matches(record: Record, wanted: str) -> bool:
    for field in ID_FIELDS:
        value = record.get(field)
        if value == wanted or (isinstance(value, list) and wanted in value):
            return True
    return False


def story(records: Sequence[Record], wanted: str) -> List[str]:
    """The lines to print for one ID; empty when no record names it."""
    hits = [r for r in records if matches(r, wanted)]
    completions = [r for r in hits if r.get(Field.EVENT) == COMPLETED]
    batches = list(dict.fromkeys(r[Field.BATCH_ID] for r in hits if r.get(Field.BATCH_ID)))
    out: List[str] = []
    for request in completions:
        out.extend(_request_lines(request))
    for batch_id in batches:
        batch = [r for r in records if r.get(Field.BATCH_ID) == batch_id]
        out.append("")
        out.append(f"batch {batch_id} ({len(batch)} lines):")
        for record in sorted(batch, key=lambda r: str(r.get(Field.TIMESTAMP, ""))):
            out.extend("  " + line for line in _batch_line(record, wanted))
    others = [r for r in hits if not r.get(Field.BATCH_ID) and r not in completions]
    if others:
        out.append("")
        out.append("other lines naming it:")
        out.extend("  " + _summary(r) for r in others)
    return out


def _request_lines(request: Record) -> List[str]:
    stages = ", ".join(
        f"{stage} {request[field]} ms"
        for stage, field in STAGE_FIELDS.items()
        if field in request and field != Field.DURATION_MS
    )
    lines = [
        f"request {request.get(Field.REQUEST_ID)}"
        + (
            f" (client X-Request-ID {request[Field.CLIENT_REQUEST_ID]})"
            if request.get(Field.CLIENT_REQUEST_ID)
            else ""
        )
        + (f" (trace {request[Field.TRACE_ID]})" if request.get(Field.TRACE_ID) else ""),
        f"  at {request.get(Field.TIMESTAMP)}: {request.get(Field.MODEL)} "
        f"{request.get(Field.VERSION)} on worker {request.get(Field.WORKER)}",
        f"  status {request.get(Field.STATUS)}, outcome {request.get(Field.OUTCOME)}"
        + (f", reason {request[REASON]}" if request.get(REASON) else "")
        + f", {request.get(Field.DURATION_MS)} ms in the handler"
        + (f" ({stages})" if stages else ""),
        f"  batch {request.get(Field.BATCH_ID)}: request {request.get(Field.BATCH_INDEX)} "
        f"of {request.get(Field.BATCH_SIZE)}",
    ]
    if request.get(Field.ERROR_TYPE):
        lines.append(f"  error {request[Field.ERROR_TYPE]}: {request.get(Field.ERROR_MESSAGE)}")
    return lines


def _batch_line(record: Record, wanted: str) -> List[str]:
    if record.get(Field.EVENT) == COMPLETED:
        mark = "this request" if matches(record, wanted) else "neighbour"
        return [
            f"{mark}: {record.get(Field.REQUEST_ID)} status {record.get(Field.STATUS)} "
            f"{record.get(Field.OUTCOME)} {record.get(Field.DURATION_MS)} ms"
        ]
    lines = [_summary(record)]
    if record.get(Field.ERROR_TYPE):
        lines.append(f"  error {record[Field.ERROR_TYPE]}: {record.get(Field.ERROR_MESSAGE)}")
    if record.get(Field.EXCEPTION):
        lines.extend("  | " + line for line in str(record[Field.EXCEPTION]).splitlines())
    return lines


def _summary(record: Record) -> str:
    shown = {Field.TIMESTAMP, Field.LEVEL, Field.EVENT, Field.LOGGER, Field.EXCEPTION}
    skipped = shown | {Field.MODEL, Field.VERSION, Field.WORKER, Field.BATCH_ID, ECS_EVENT_OUTCOME}
    extra = " ".join(f"{k}={v}" for k, v in record.items() if k not in skipped)
    return (
        f"{record.get(Field.TIMESTAMP)} {record.get(Field.LEVEL)} {record.get(Field.LOGGER)}: "
        f"{record.get(Field.EVENT)} {extra}".rstrip()
    )


def kibana_query(wanted: str) -> str:
    """KQL finding every line that names an ID, in either field set."""
    names = list(dict.fromkeys([*ID_FIELDS, *(ECS_FIELDS[f] for f in ID_FIELDS)]))
    value = json.dumps(wanted)
    return " or ".join(f"{name} : {value}" for name in names)


def default_paths() -> List[Path]:
    """$TSOBS_LOG_FILE (and its rotated copies) if set, else the native stack's log folder."""
    log_file = os.environ.get("TSOBS_LOG_FILE")
    if log_file:
        return [Path(log_file).parent]
    return [DEFAULT_LOG_DIR]


def run(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.logs] if args.logs else default_paths()
    files = log_files(paths)
    if not files:
        raise UsageError(
            f"no log files in {', '.join(map(str, paths))}: pass --logs FILE_OR_FOLDER "
            "(TSOBS_LOG_FILE, or TorchServe's logs folder)"
        )
    lines = story(read_records(files), args.request_id)
    found = bool(lines)
    if found:
        print("\n".join(lines))
    else:
        print(
            f"no line names {args.request_id} in {len(files)} files ({', '.join(map(str, files))})"
        )
    kibana = args.kibana_url or os.environ.get("TSOBS_KIBANA_URL")
    if kibana:
        url = discover_url(kibana, kibana_query(args.request_id), oldest_first=True)
        print(f"\nKibana: {url}")
    return 0 if found else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="print one request's story from the JSON-lines log files",
        description="Find a request by TorchServe's request ID (x-request-id), the client's "
        "X-Request-ID or a trace ID, and print its batch, stages, status, error and traceback, "
        "and the other requests of its batch.",
    )
    parser.add_argument("request_id", help="TorchServe request ID, client X-Request-ID or trace ID")
    parser.add_argument(
        "--logs",
        action="append",
        metavar="PATH",
        help="a log file or folder (repeatable; default: the folder of $TSOBS_LOG_FILE, "
        f"else {DEFAULT_LOG_DIR})",
    )
    parser.add_argument(
        "--kibana-url",
        help="also print the Kibana Discover link for this ID (default: $TSOBS_KIBANA_URL)",
    )
    parser.set_defaults(func=run)
