"""A run trained by two processes over loopback (mlx.launch, ring backend): real server, real ranks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import PROJECT_DIR, QUICK_RUN, Server, base_env
from test_runs_e2e import generate_with_adapter, unzip_adapter

from app.contract.distributed import Distributed
from app.contract.pids import is_worker
from app.jobs.process import free_ports, launch_args

TWO_RANKS = {"backend": "ring", "hosts": ["127.0.0.1"], "processes_per_host": 2}
# 20 steps of batch 4 (2 examples per rank), reports every 5, validation at 0, 10, 20 on all 16 examples (short ones)
RUN: dict[str, Any] = {**QUICK_RUN, "iters": 20, "steps_per_eval": 10, "save_every": 10, "val_batches": -1,
                       "distributed": TWO_RANKS}
# runs until stopped; validates once (at 0) on one batch
ENDLESS = {**RUN, "iters": 100_000, "save_every": 100_000, "steps_per_eval": 100_000, "val_batches": 1}


def processes_of(server: Server, run_id: int) -> list[psutil.Process]:
    """Every process whose command line names this run (launcher and ranks) of this server's database (other
    test servers train their own run 1 meanwhile)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if any(args[i:i + 2] == ["--run-id", str(run_id)] for i in range(len(args))):
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("LORABOARD_DB_PATH") == str(server.root / "loraboard.db"):
                    found.append(proc)
    return found


def column(server: Server, run_id: int, name: str) -> Any:
    """One column of the run's row, as the worker wrote it (the API leaves pid and hardware out)."""
    with sqlite3.connect(server.root / "loraboard.db") as db:
        row = db.execute("SELECT pid, hardware_json FROM run WHERE id = ?", (run_id,)).fetchone()
    return row[("pid", "hardware_json").index(name)]


def wait_gone(server: Server, run_id: int) -> list[psutil.Process]:
    left = processes_of(server, run_id)
    psutil.wait_procs(left, timeout=30)
    return [p for p in processes_of(server, run_id) if p.status() != psutil.STATUS_ZOMBIE]


def rank_processes(server: Server, run_id: int, timeout: float = 30) -> dict[int, psutil.Process]:
    """The run's rank processes by rank (MLX_RANK in their environment; a shell mlx.launch starts them through
    has none yet), once both are there."""
    deadline = time.monotonic() + timeout
    ranks: dict[int, psutil.Process] = {}
    while time.monotonic() < deadline:
        ranks = {}
        for proc in processes_of(server, run_id):
            with contextlib.suppress(psutil.Error):
                rank = proc.environ().get("MLX_RANK")
                if rank is not None:
                    ranks[int(rank)] = proc
        if len(ranks) == 2:
            break
        time.sleep(0.2)
    return ranks


def test_launch_args_name_backend_hosts_ranks_python_and_env() -> None:
    spec = Distributed.model_validate(TWO_RANKS)
    args = launch_args(spec, ["127.0.0.1"], {"LORABOARD_DB_PATH": "/d/b.db", "HOME": "/root"}, "/py")
    assert args[:8] == ["--backend", "ring", "--hosts", "127.0.0.1", "-n", "2", "--python", "/py"]
    assert "LORABOARD_DB_PATH=/d/b.db" in args and not any(a.startswith("HOME=") for a in args)
    first = int(args[args.index("--starting-port") + 1])  # ports free now: two local rings never meet
    for port in (first, first + 1):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", port))
    remote = Distributed.model_validate({"hosts": ["10.0.0.2", "10.0.0.3"], "ssh_user": "me", "python": "/r/py"})
    args = launch_args(remote, ["10.0.0.2", "10.0.0.3"], {}, "/py")
    assert args[args.index("--hosts") + 1] == "me@10.0.0.2,me@10.0.0.3" and args[args.index("--python") + 1] == "/r/py"
    hostfile = launch_args(Distributed.model_validate({"hostfile": "/h.json"}), [], {}, "/py")
    assert hostfile[2:4] == ["--hostfile", "/h.json"] and "--hosts" not in hostfile
    assert "--starting-port" not in args and "--starting-port" not in hostfile  # other machines' ports: their own


def command_line(process: psutil.Process) -> str:
    """The process's command line; "" once it has gone (a helper the launcher ran a moment ago)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


@pytest.mark.real
def test_launcher_waits_while_its_ranks_run() -> None:
    """`python -m worker launch` takes next to no CPU while its ranks run: mlx.launch's rank threads wait for
    the ranks' output alone (worker/distributed.select_reads_only) instead of looping on the ranks' standard
    input (always writable)."""
    cmd = [sys.executable, "-m", "worker", "launch", "--backend", "ring", "--hosts", "127.0.0.1", "-n", "2",
           "--starting-port", str(free_ports(2)), "--python", sys.executable, "--cwd", str(PROJECT_DIR), "--",
           "-c", "import time; time.sleep(8)"]
    process = subprocess.Popen(cmd, cwd=PROJECT_DIR, env=base_env(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        launcher = psutil.Process(process.pid)
        deadline = time.monotonic() + 60
        while len([p for p in launcher.children(recursive=True) if "time.sleep(8)" in command_line(p)]) < 2:
            assert process.poll() is None and time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.1)
        before = launcher.cpu_times()
        time.sleep(2)
        after = launcher.cpu_times()
        busy = (after.user + after.system) - (before.user + before.system)
        assert busy < 0.2, f"the launcher used {busy:.2f} CPU-seconds in 2 s while its ranks slept"
        assert process.wait(timeout=60) == 0
    finally:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def completed(shared_server: Server, short_data: Path) -> dict[str, Any]:
    status, run = shared_server.post("/api/runs", {**RUN, "data": str(short_data), "name": "two ranks"})
    assert status == 201, run
    shared_server.wait_for(run["id"], lambda r: r["status"] != "queued", what="started")
    launcher = column(shared_server, run["id"], "pid")
    assert is_worker(launcher, "train", run["id"])  # the launcher's command line is this run's worker
    run = shared_server.wait_terminal(run["id"], timeout=180)
    assert run["status"] == "completed", run
    return run


def test_two_ranks_complete_and_loss_decreases(shared_server: Server, completed: dict[str, Any]) -> None:
    metrics = shared_server.get(f"/api/runs/{completed['id']}/metrics")
    # rank 0 alone reports: one row per report, not one per rank
    assert [p["iteration"] for p in metrics["train"]] == [5, 10, 15, 20]
    assert [p["iteration"] for p in metrics["val"]] == [0, 10, 20]
    assert metrics["val"][-1]["val_loss"] < metrics["val"][0]["val_loss"]
    assert metrics["train"][-1]["train_loss"] < metrics["train"][0]["train_loss"]
    group = json.loads(column(shared_server, completed["id"], "hardware_json"))["distributed"]
    assert group["world_size"] == 2 and group["backend"] == "ring" and group["hosts"] == ["127.0.0.1"]
    per_rank = group["per_rank_tokens_per_second"]
    assert len(per_rank) == 2 and all(v > 0 for v in per_rank)
    tokens = [p["trained_tokens"] for p in metrics["train"]]  # the group's (mlx-lm all-sums them)
    assert tokens == sorted(tokens) and tokens[0] > 0
    assert not wait_gone(shared_server, completed["id"])


def test_final_checkpoint_is_rank0s_file_and_loads(
    shared_server: Server, completed: dict[str, Any], default_model: Path, tmp_path: Path
) -> None:
    checkpoints = shared_server.get(f"/api/runs/{completed['id']}/checkpoints")
    assert [c["iteration"] for c in checkpoints] == [10, 20]
    run_dir = Path(shared_server.root) / "adapters" / f"run-{completed['id']:04d}"
    for ckpt in checkpoints:
        path = run_dir / f"{ckpt['iteration']:07d}_adapters.safetensors"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == ckpt["sha256"]
    adapter = unzip_adapter(shared_server, completed["id"], 20, tmp_path / "adapter")
    assert generate_with_adapter(default_model, adapter).strip()


def test_a_distributed_checkpoint_continues_on_two_ranks_and_on_one(
    shared_server: Server, completed: dict[str, Any]
) -> None:
    config = {key: value for key, value in completed["config"].items() if key not in ("name", "distributed")}
    for distributed in (TWO_RANKS, None):
        status, run = shared_server.post("/api/runs", {**config, "iters": 25, "distributed": distributed,
                                                       "resume_from": {"run_id": completed["id"], "iteration": 20}})
        assert status == 201, run
        done = shared_server.wait_terminal(run["id"], timeout=180)
        assert done["status"] == "completed", done
        assert [p["iteration"] for p in shared_server.get(f"/api/runs/{run['id']}/metrics")["train"]] == [25]
        assert not wait_gone(shared_server, run["id"])


def test_stop_reaches_every_rank_and_leaves_no_process(shared_server: Server, short_data: Path) -> None:
    status, run = shared_server.post("/api/runs", {**ENDLESS, "data": str(short_data)})
    assert status == 201, run
    shared_server.wait_for(run["id"], lambda r: r["iteration"] >= 5, what="past iteration 5")
    assert len(processes_of(shared_server, run["id"])) >= 3  # the launcher and two ranks
    status, _ = shared_server.post(f"/api/runs/{run['id']}/stop")
    assert status == 202
    run = shared_server.wait_terminal(run["id"], timeout=60)
    assert run["status"] == "stopped", run
    checkpoints = shared_server.get(f"/api/runs/{run['id']}/checkpoints")
    assert len(checkpoints) == 1 and checkpoints[0]["iteration"] >= 5
    assert not wait_gone(shared_server, run["id"])


def test_killed_rank_ends_the_group_in_one_terminal_state(shared_server: Server, short_data: Path) -> None:
    status, run = shared_server.post("/api/runs", {**ENDLESS, "data": str(short_data)})
    assert status == 201, run
    shared_server.wait_for(run["id"], lambda r: r["iteration"] >= 5, what="past iteration 5")
    ranks = rank_processes(shared_server, run["id"])
    assert sorted(ranks) == [0, 1]
    ranks[1].kill()  # the rank that writes nothing dies without a word
    run = shared_server.wait_terminal(run["id"], timeout=90)
    assert run["status"] == "failed", run  # rank 0 records why, then the launcher ends
    assert "peer" in run["error"], run["error"]
    assert not wait_gone(shared_server, run["id"])


def test_batch_not_divisible_by_world_size_is_refused(shared_server: Server) -> None:
    before = len(shared_server.get("/api/runs"))
    status, body = shared_server.post("/api/runs", {**RUN, "batch_size": 3})
    assert status == 422, body
    assert "batch_size" in str(body)
    assert len(shared_server.get("/api/runs")) == before
