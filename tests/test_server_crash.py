"""A server killed with SIGKILL while a run trains: the worker trains on, and a restarted server re-attaches to it
with no gap and no duplicate in the metric rows; the run then ends normally."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

from conftest import QUICK_RUN, Server


def train_iterations(server: Server, run_id: int) -> list[int]:
    with sqlite3.connect(server.root / "loraboard.db") as conn:
        return [it for (it,) in conn.execute(
            "SELECT iteration FROM trainreport WHERE run_id = ? ORDER BY id", (run_id,))]


def test_server_killed_mid_run_loses_nothing(server: Server, short_data: Path) -> None:
    config = {**QUICK_RUN, "data": str(short_data), "iters": 50, "steps_per_report": 5, "steps_per_eval": 25,
              "save_every": 25}
    status, run = server.post("/api/runs", config)
    assert status == 201
    server.wait_for(run["id"], lambda r: r["status"] == "running" and len(train_iterations(server, r["id"])) >= 2,
                    what="training with reports")
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)
    server.process = None
    killed_at = train_iterations(server, run["id"])[-1]
    deadline = time.monotonic() + 120
    while train_iterations(server, run["id"])[-1] == killed_at:  # nobody is serving: the worker reports on
        assert time.monotonic() < deadline, "the worker stopped reporting when the server died"
        time.sleep(0.3)

    server.start()
    live = server.get(f"/api/runs/{run['id']}")
    assert live["status"] in ("running", "completed"), live  # re-attached, not marked interrupted
    done = server.wait_terminal(run["id"], timeout=300)
    assert done["status"] == "completed", done

    iterations = train_iterations(server, run["id"])
    assert iterations == list(range(5, 51, 5))  # every report once, in order: no gap, no duplicate
    metrics = server.get(f"/api/runs/{run['id']}/metrics")
    assert [p["iteration"] for p in metrics["train"]] == iterations
    assert [c["iteration"] for c in server.get(f"/api/runs/{run['id']}/checkpoints")] == [25, 50]
