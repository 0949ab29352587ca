"""An Elasticsearch-shaped HTTP stand-in for testing Fluentd's Elasticsearch output.

Not Elasticsearch: it answers the product check and ``_bulk`` as Elasticsearch 8 does and
keeps every indexed document with its action, which is what a test of the shipping side
needs to see (index, ``_id``, fields).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Tuple

Document = Tuple[Dict[str, Any], Dict[str, Any]]
"""(action, source) of one bulk item, e.g. ({"create": {"_index": ..., "_id": ...}}, {...})."""


class BulkRecorder:
    def __init__(self) -> None:
        self.documents: List[Document] = []
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                version = {"number": "8.15.0", "build_flavor": "default"}
                self._answer({"version": version, "tagline": "You Know, for Search"})

            def do_HEAD(self) -> None:
                self._answer({})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self.path.split("?")[0].endswith("/_bulk"):
                    self._answer({"acknowledged": True})
                    return
                lines = [json.loads(line) for line in body.decode().splitlines() if line]
                pairs = list(zip(lines[0::2], lines[1::2]))
                with recorder._lock:
                    recorder.documents.extend(pairs)
                items = [
                    {op: {**meta, "status": 201, "result": "created"}}
                    for action, _ in pairs
                    for op, meta in action.items()
                ]
                self._answer({"took": 1, "errors": False, "items": items})

            do_PUT = do_POST

            def _answer(self, payload: Dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Elastic-Product", "Elasticsearch")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test reads the documents, not the access log."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def snapshot(self) -> List[Document]:
        with self._lock:
            return list(self.documents)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
