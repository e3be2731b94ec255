"""Many clients creating runs at the same moment, against a real server: every request answers 201 with its own
run, no more rows exist than were answered, the queue holds them in creation order, and only one trains."""

from __future__ import annotations

import json
import sqlite3
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from conftest import QUICK_RUN, TERMINAL, Server, bearer

CREATES = 50
# trains until stopped: the first run is still training when the test looks at the queue
LONG_RUN: dict[str, Any] = {**QUICK_RUN, "iters": 1_000_000, "steps_per_eval": 1_000_000, "save_every": 1_000_000}


def create(server: Server, barrier: threading.Barrier, number: int) -> tuple[int, Any]:
    """POST /api/runs once every thread is ready; (status, body), or (0, the error) when no answer came."""
    body = json.dumps({**LONG_RUN, "name": f"parallel {number}"}).encode()
    req = urllib.request.Request(server.url + "/api/runs", data=body, method="POST",
                                 headers={"Content-Type": "application/json", **bearer(server.token)})
    barrier.wait()
    try:
        with urllib.request.urlopen(req, timeout=90) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")[:300]
    except OSError as err:  # a timeout or a dropped connection
        return 0, repr(err)


def test_fifty_parallel_creates_each_answer_201_and_queue_in_creation_order(server: Server) -> None:
    barrier = threading.Barrier(CREATES)
    with ThreadPoolExecutor(CREATES) as pool:
        answers = list(pool.map(lambda n: create(server, barrier, n), range(CREATES)))
    failed = [(status, body) for status, body in answers if status != 201]
    assert not failed, f"{len(failed)} of {CREATES} creates failed: {failed[:3]}"
    ids = sorted(body["id"] for _, body in answers)
    assert len(set(ids)) == CREATES

    with sqlite3.connect(server.root / "loraboard.db") as conn:
        assert conn.execute("SELECT count(*) FROM run").fetchone()[0] == CREATES
    listed = server.get("/api/runs")
    assert [run["id"] for run in listed] == ids[::-1]  # newest first
    started = [run["id"] for run in listed if run["status"] != "queued"]
    assert started == [ids[0]], "max_concurrent_runs is 1: the oldest run trains, every other one waits"

    status, answer = server.post(f"/api/runs/{ids[-1]}/queue", {"position": "bottom"})  # already there: the order
    assert status == 200, answer
    assert answer["queue"] == ids[1:]

    status, cancelled = server.post("/api/runs/queue/cancel")
    assert status == 200 and cancelled["cancelled"] == ids[1:]
    status, _ = server.post(f"/api/runs/{ids[0]}/stop")
    assert status == 202
    server.wait_terminal(ids[0], timeout=60)
    assert all(run["status"] in TERMINAL for run in server.get("/api/runs"))
    with sqlite3.connect(server.root / "loraboard.db") as conn:
        assert conn.execute("SELECT count(*) FROM run WHERE started_at IS NOT NULL").fetchone()[0] == 1
