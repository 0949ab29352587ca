"""A test receiver for Fluentd's forward protocol: collects what fluent-logger sends.

Not Fluentd: it accepts Message and Forward mode packets over TCP on loopback and keeps
the records, which is all a test of the sending side needs.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Dict, List

import msgpack


class ForwardReceiver:
    def __init__(self, port: int) -> None:
        self.records: List[Dict[str, Any]] = []
        self.tags: List[str] = []
        self._server = socket.create_server(("127.0.0.1", port))
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        unpacker = msgpack.Unpacker(
            raw=False, ext_hook=lambda code, data: msgpack.ExtType(code, data)
        )
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                unpacker.feed(chunk)
                for message in unpacker:
                    self._keep(message)

    def _keep(self, message: List[Any]) -> None:
        tag, rest = message[0], message[1:]
        entries = rest[0] if isinstance(rest[0], list) else [rest[:2]]  # Forward or Message mode
        with self._lock:
            for _time, record in entries:
                self.tags.append(tag)
                self.records.append(record)

    def snapshot(self) -> List[Dict[str, Any]]:
        with self._lock:
            return list(self.records)

    def close(self) -> None:
        self._server.close()
