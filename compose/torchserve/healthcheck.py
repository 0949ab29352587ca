"""Container healthcheck: TorchServe answers /ping and serves Prometheus metrics.

The official image backgrounds the JVM, so a dead frontend would leave a "running"
container; this probe makes it unhealthy instead. Token auth covers /ping, so the
inference key is read from key_file.json, which TorchServe writes at startup.
Runs on the image's Python 3.9, standard library only.
"""

import json
import sys
import urllib.request
from pathlib import Path

KEY_FILE = Path("/home/model-server/key_file.json")


def get(url, headers=None):
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=4) as response:
        return response.read().decode()


def main():
    headers = {}
    if KEY_FILE.exists():
        key = json.loads(KEY_FILE.read_text())["inference"]["key"]
        headers["Authorization"] = "Bearer " + key
    ping = get("http://127.0.0.1:8080/ping", headers)
    if json.loads(ping).get("status") != "Healthy":
        sys.exit("ping: " + ping)
    if "ts_inference_requests_total" not in get("http://127.0.0.1:8082/metrics"):
        sys.exit("metrics: no ts_inference_requests_total (is metrics_mode=prometheus set?)")


if __name__ == "__main__":
    main()
