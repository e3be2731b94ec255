"""Workers started as forks of the worker forkserver (app/contract/worker_fork.py), on Linux: a real run in a real
server is such a fork, with the title, session, log and parentage of `python -m worker train --run-id N`, and stops
cleanly; the exit status comes back, and a worker whose environment needs a fresh interpreter gets one."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import PROJECT_DIR, QUICK_RUN, Server, base_env

from app.contract.pids import FORKSERVER_CODE, is_worker
from app.contract.worker_fork import needs_fresh_interpreter

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")


def test_a_fresh_interpreter_only_where_a_start_setting_differs() -> None:
    here = {"PATH": "/bin", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    assert needs_fresh_interpreter({**here, "LORABOARD_DB_PATH": "/x.db", "PYTHONUNBUFFERED": "1"}, here) == []
    assert needs_fresh_interpreter({**here, "HF_HUB_OFFLINE": "0", "LD_PRELOAD": "/lib.so"}, here) == [
        "LD_PRELOAD", "HF_HUB_OFFLINE"]
    assert needs_fresh_interpreter({"PATH": "/bin"}, here) == ["PYTHONHASHSEED", "HF_HUB_OFFLINE"]


def run_row(server: Server, run_id: int) -> tuple[int, str]:
    with sqlite3.connect(server.root / "loraboard.db") as conn:
        pid, log_path = conn.execute("SELECT pid, log_path FROM run WHERE id = ?", (run_id,)).fetchone()
    return int(pid), str(log_path)


def test_a_run_trains_in_a_forked_worker_that_stops_cleanly(shared_server: Server, short_data: Path) -> None:
    status, run = shared_server.post("/api/runs", {**QUICK_RUN, "name": "forked", "data": str(short_data),
                                                   "iters": 100_000, "steps_per_eval": 100_000,
                                                   "save_every": 100_000})
    assert status == 201, run
    shared_server.poll(f"/api/runs/{run['id']}", lambda r: r["iteration"] and r["iteration"] >= 5, what="training")
    pid, log_path = run_row(shared_server, run["id"])
    worker = psutil.Process(pid)
    assert " ".join(worker.cmdline()).strip() == f"{sys.executable} -m worker train --run-id {run['id']}"
    assert is_worker(pid, "train", run["id"]) and not is_worker(pid, "train", run["id"] + 1)
    assert psutil.Process(pid).ppid() != shared_server.process.pid  # a fork of the forkserver, the server's child
    forkserver = worker.parent()
    assert forkserver is not None and FORKSERVER_CODE.decode() in " ".join(forkserver.cmdline())
    assert forkserver.ppid() == shared_server.process.pid
    assert os.getsid(pid) == pid  # its own session: a stop of its group reaches nothing else
    assert "Warning" not in Path(log_path).read_text()  # its log holds the worker's own output only
    status, _ = shared_server.post(f"/api/runs/{run['id']}/stop")
    assert status in (200, 202)
    done = shared_server.wait_terminal(run["id"], timeout=120)
    assert done["status"] == "stopped", done
    assert psutil.wait_procs([worker], timeout=30)[1] == []


CHILDREN = """
import json, os, sys, tempfile
from pathlib import Path
from app.jobs.process import ForkedWorker
folder = Path(tempfile.mkdtemp())
results = {}
for name, args, extra in (("forked", ["--help"], {}), ("fresh", ["--help"], {"PYTHONHASHSEED": "7"}),
                          ("refused", ["no-such-command"], {})):
    log = folder / f"{name}.log"
    log.touch()
    worker = ForkedWorker(args, {**os.environ, **extra}, log)
    results[name] = [worker.wait(timeout=60), log.read_text()]
# a stop signal that reaches a fork before any of the worker's code runs (the supervisor signals a run that is still
# starting): held until the worker's handler is in place, never the end of it
import signal
from app.jobs.process import worker_forkserver
early = worker_forkserver().Process(target=signal.raise_signal, args=(signal.SIGTERM,))
early.start()
early.join(60)
results["stopped_as_it_forks"] = early.exitcode
print(json.dumps(results))
"""


def test_exit_status_and_output_come_back_forked_or_fresh() -> None:
    """A forked worker's exit status reaches its starter as Popen's would; where a start setting differs the child
    runs the command in a fresh interpreter (the same pid), with the same result. A fork holds SIGTERM from its
    first instruction."""
    ran = subprocess.run([sys.executable, "-c", CHILDREN], cwd=PROJECT_DIR, env=base_env(), capture_output=True,
                         text=True, timeout=180)
    assert ran.returncode == 0, ran.stderr
    results = json.loads(ran.stdout.strip().splitlines()[-1])
    for name in ("forked", "fresh"):
        code, log = results[name]
        assert code == 0 and "usage:" in log and "train" in log, (name, log)
    code, log = results["refused"]
    assert code == 2 and "invalid choice: 'no-such-command'" in log, log
    assert results["stopped_as_it_forks"] == 0, results  # -15: SIGTERM ended it before it could hold the signal
