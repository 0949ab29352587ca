"""An Elasticsearch-shaped stand-in: answers like Elasticsearch 8 and records ``_bulk`` bodies.

Not Elasticsearch: no indexing, no search. It does what the Fluentd output needs to see
(the root info with the product header, ``_bulk`` with per-item results, ``create``
refused with 409 for an ``_id`` already there) and keeps every action and document, so a
test can count what Fluentd delivered. ``down()`` makes it answer 503 like a cluster
without a master; ``up()`` heals it. :func:`mapping_errors` checks a document against an
index template's mappings, field by field, the way Elasticsearch would reject it.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

INFO = {
    "name": "standin",
    "cluster_name": "standin",
    "cluster_uuid": "standin",
    "version": {
        "number": "8.15.3",
        "build_flavor": "default",
        "lucene_version": "9.11.1",
        "minimum_wire_compatibility_version": "7.17.0",
        "minimum_index_compatibility_version": "7.0.0",
    },
    "tagline": "You Know, for Search",
}


class ElasticsearchStandin:
    def __init__(self) -> None:
        self.actions: List[Tuple[str, str, str]] = []
        """(operation, index, _id) of every action in every ``_bulk`` body, retries included."""
        self.documents: Dict[Tuple[str, str], Dict[str, Any]] = {}
        """Accepted documents by (index, _id)."""
        self.bulk_requests = 0
        self.conflicts = 0
        self.refused_requests = 0
        """Creates refused because the _id was there: a re-sent document, indexed once."""
        self._failing = False
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(200, {})

            def do_GET(self) -> None:
                self._answer(200, INFO)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self.path.split("?")[0].endswith("/_bulk"):
                    self._answer(404, {"error": f"no such endpoint: {self.path}"})
                else:
                    answer = standin._bulk(body)
                    if answer is None:
                        self._answer(503, {"error": "standin is down", "status": 503})
                    else:
                        self._answer(200, answer)

            do_PUT = do_POST

            def _answer(self, status: int, document: Mapping[str, Any]) -> None:
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Elastic-Product", "Elasticsearch")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _bulk(self, body: bytes) -> Optional[Dict[str, Any]]:
        """The ``_bulk`` answer, or None while down (checked under the lock that ``down`` takes,
        so that nothing is accepted once ``down`` has returned)."""
        items = []
        lines = [line for line in body.decode().split("\n") if line.strip()]
        with self._lock:
            if self._failing:
                self.refused_requests += 1
                return None
            self.bulk_requests += 1
            for action_line, source_line in zip(lines[::2], lines[1::2]):
                ((operation, meta),) = json.loads(action_line).items()
                index, doc_id = meta["_index"], meta.get("_id", "")
                self.actions.append((operation, index, doc_id))
                key = (index, doc_id)
                if operation == "create" and key in self.documents:
                    status, error = 409, {"type": "version_conflict_engine_exception"}
                    self.conflicts += 1
                else:
                    status, error = 201, None
                    self.documents[key] = json.loads(source_line)
                item: Dict[str, Any] = {"_index": index, "_id": doc_id, "status": status}
                if error:
                    item["error"] = error
                items.append({operation: item})
        return {
            "took": 1,
            "errors": any("error" in i[op] for i in items for op in i),
            "items": items,
        }

    def down(self) -> None:
        with self._lock:
            self._failing = True

    def up(self) -> None:
        with self._lock:
            self._failing = False

    def snapshot(self) -> List[Dict[str, Any]]:
        with self._lock:
            return list(self.documents.values())

    def items(self) -> List[Tuple[Tuple[str, str], Dict[str, Any]]]:
        """((index, _id), document) of every accepted document."""
        with self._lock:
            return list(self.documents.items())

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})$")

SCALAR_CHECKS = {
    "keyword": lambda v: isinstance(v, str),
    "text": lambda v: isinstance(v, str),
    "match_only_text": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**31) <= v < 2**31,
    "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "double": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "date": lambda v: isinstance(v, str) and bool(DATE.match(v)),
    "date_nanos": lambda v: isinstance(v, str) and bool(DATE.match(v)),
}


def _leaves(document: Mapping[str, Any], prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """(dotted path, value) of every leaf; flat dotted keys and nested objects alike."""
    for key, value in document.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def mapping_errors(document: Mapping[str, Any], template: Mapping[str, Any]) -> List[str]:
    """Why Elasticsearch would refuse ``document`` under ``template``'s mappings (empty: it fits).

    A mapped field must hold values of its type (arrays of them too); a path through a mapped
    scalar or onto a mapped object is a conflict. Unmapped strings fall to the template's
    dynamic ``keyword``, unmapped numbers to dynamic ``long``/``float``, which always fit.
    """
    root = template["template"]["mappings"]["properties"]
    errors = []
    for path, value in _leaves(document):
        node: Mapping[str, Any] = {"properties": root}
        for part in path.split("."):
            if "properties" not in node:
                errors.append(f"{path}: goes through the scalar field mapped as {node['type']}")
                break
            node = node["properties"].get(part, {})
            if not node:
                break
        else:
            if "properties" in node:
                errors.append(f"{path}: a {type(value).__name__} where an object is mapped")
                continue
            check = SCALAR_CHECKS[node["type"]]
            values = value if isinstance(value, list) else [value]
            bad = [v for v in values if v is not None and not check(v)]
            if bad:
                errors.append(f"{path}: {bad[0]!r} is not a valid {node['type']}")
    return errors
