"""Worker ledgers: a batch is in flight or counted, a torn write loses nothing, and a dead
worker's in-flight requests are settled exactly once whoever looks first."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

import pytest

from obs import ledger, logs
from obs.exporter import MetricsSource
from obs.settings import Settings
from tests.support.traffic import parse_samples, total

DYING_WORKER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from obs import ledger
    book = ledger.open_ledger(Path(sys.argv[1]), "w9000", lambda batches: None)
    key = ledger.model_key("m", "1.0")
    book.start(key)
    book.loaded(key, True)
    book.begin("w9000-1", key, {"b": "w9000-1", "w": "w9000", "s": 2, "r": [["a", "client-a"], ["b", None]]})
    book.finish("w9000-1", key, [2, 0, 0])
    book.begin("w9000-2", key, {"b": "w9000-2", "w": "w9000", "s": 3, "r": [["c"], ["d"], ["e", "client-e"]]})
    os._exit(0)  # dies inside the second batch, as under kill -9
    """
)


def die_mid_batch(directory: Path) -> None:
    subprocess.run([sys.executable, "-c", DYING_WORKER, str(directory)], check=True, timeout=60)


def settle_in_subprocess(directory: Path) -> List[dict]:
    """A restarted worker on the same port: returns the lines it wrote for lost requests."""
    code = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from obs import ledger
        lines = []
        ledger.open_ledger(Path(sys.argv[1]), "w9000", lambda b: lines.extend(ledger.lost_request_records(b)))
        print(json.dumps(lines))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(directory)], check=True, capture_output=True, timeout=60
    ).stdout
    return json.loads(out)


@pytest.mark.parametrize("first", ["exporter", "restarted worker"])
def test_a_dead_workers_batch_is_settled_once_whoever_looks_first(
    tmp_path: Path, first: str
) -> None:
    die_mid_batch(tmp_path)
    stream = io.StringIO()
    source = MetricsSource(tmp_path, emitter=logs.LogEmitter(Settings.from_env({}), stream=stream))
    lines: List[dict] = []
    for settler in [first, "exporter", "restarted worker"]:
        if settler == "exporter":
            samples = parse_samples(source.render("")[0].decode())
        else:
            lines += settle_in_subprocess(tmp_path)
    lines += [json.loads(line) for line in stream.getvalue().splitlines()]
    samples = parse_samples(source.render("")[0].decode())
    assert total(samples, "tsobs_requests_total", outcome="success") == 2
    assert total(samples, "tsobs_requests_total", outcome="server_error") == 3
    assert total(samples, "tsobs_requests_lost_total", reason="worker_died") == 3
    assert [(r["request_id"], r.get("client_request_id")) for r in lines] == [
        ("c", None),
        ("d", None),
        ("e", "client-e"),
    ]
    assert {(r["status"], r["outcome"], r["reason"], r["batch_id"]) for r in lines} == {
        (500, "server_error", "worker_died", "w9000-2")
    }


def test_a_torn_write_falls_back_to_the_previous_state(tmp_path: Path) -> None:
    die_mid_batch(tmp_path)
    path = ledger.ledger_path(tmp_path, "w9000")
    before = ledger.read_file(path)
    assert before is not None and list(before["inflight"]) == ["w9000-2"]
    newest = (before["seq"] % 2) * ledger.SLOT_BYTES
    with open(path, "r+b") as f:  # a kill in the middle of the newest write
        f.seek(newest + 40)
        f.write(b"\0" * 8)
    after = ledger.read_file(path)
    assert after is not None and after["seq"] == before["seq"] - 1
    # the state before the batch began: its requests were not yet handed to the handler
    assert after["inflight"] == {}
    assert after["counts"][ledger.model_key("m", "1.0")]["requests"] == [2, 0, 0]
