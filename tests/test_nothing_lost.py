"""Nothing lost: a worker killed mid-write, a disk that fills while saving (real servers, real workers)."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import QUICK_RUN, Server

from app.contract.paths import TEMP_GLOB, remove_temp_files

SLOW_SAVE_ENV = "LORABOARD_TEST_SLOW_SAVE_S"  # worker/durable.py: pause between the temp file and the rename


def run_folder(server: Server, run_id: int) -> Path:
    return server.root / "adapters" / f"run-{run_id:04d}"


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(TEMP_GLOB))


def worker_pid(server: Server, run_id: int) -> int:
    with sqlite3.connect(server.root / "loraboard.db") as conn:
        (pid,) = conn.execute("SELECT pid FROM run WHERE id = ?", (run_id,)).fetchone()
    return int(pid)


def assert_listed_complete(server: Server, run_id: int) -> list[dict[str, Any]]:
    """Every listed checkpoint's files exist, whole: size and sha256 as recorded; no temporary name is listed."""
    folder = run_folder(server, run_id)
    listed = server.get(f"/api/runs/{run_id}/checkpoints")
    for ckpt in listed:
        path = folder / f"{ckpt['iteration']:07d}_adapters.safetensors"
        data = path.read_bytes()
        assert len(data) == ckpt["size_bytes"] > 0
        assert hashlib.sha256(data).hexdigest() == ckpt["sha256"]
        assert (folder / f"{ckpt['iteration']:07d}_optimizer.safetensors").is_file()  # resumable
    with sqlite3.connect(server.root / "loraboard.db") as conn:
        names = [row[0] for row in conn.execute("SELECT filename FROM checkpoint WHERE run_id = ?", (run_id,))]
    assert names and not any(".tmp" in name for name in names), names
    return listed


def test_remove_temp_files_takes_only_temporary_names(tmp_path: Path) -> None:
    keep = ["0000010_adapters.safetensors", "0000010_optimizer.safetensors", "adapter_config.json", "worker.log",
            "adapters.safetensors", ".gitkeep"]
    gone = [".0000020_adapters.tmp.safetensors", ".0000020_optimizer.tmp.safetensors", ".adapter_config.json.tmp",
            ".adapters.tmp.safetensors"]
    for name in keep + gone:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_server_start_cleanup_leaves_a_folder_whose_worker_may_be_writing(tmp_path: Path) -> None:
    from sqlmodel import Session

    from app.contract.settings import Settings
    from app.db import make_engine
    from app.runs.store.checkpoints import remove_leftover_temps
    from app.tables import Run

    settings = Settings(data_dir=tmp_path, adapters_dir=tmp_path / "adapters")
    engine = make_engine(settings.database_path)
    with Session(engine) as session:
        session.add(Run(id=1, status="running"))
        session.add(Run(id=2, status="interrupted"))
        session.commit()
        temps = []
        for run_id in (1, 2, 3):  # run 3: a folder without a row
            folder = settings.adapters_dir / f"run-{run_id:04d}"
            folder.mkdir(parents=True)
            temps.append(folder / ".0000020_adapters.tmp.safetensors")
            temps[-1].write_bytes(b"partial")
            (folder / "0000010_adapters.safetensors").write_bytes(b"whole")
        removed = remove_leftover_temps(session, settings, writing=lambda run: run.id == 1)
    assert removed == temps[1:]
    assert temps[0].exists() and not temps[1].exists() and not temps[2].exists()
    assert len(list(settings.adapters_dir.glob("run-*/0000010_adapters.safetensors"))) == 3
    engine.dispose()


@pytest.mark.real  # a real server and worker
def test_worker_killed_while_saving_loses_nothing_and_resumes(tmp_path: Path, default_model: Path,
                                                             short_data: Path) -> None:
    server = Server(tmp_path, extra_env={SLOW_SAVE_ENV: "2"}).start()
    try:
        config = {**QUICK_RUN, "data": str(short_data), "iters": 60, "steps_per_eval": 10, "save_every": 10}
        status, run = server.post("/api/runs", config)
        assert status == 201, run
        run_id, folder = run["id"], run_folder(server, run["id"])
        # wait for a later checkpoint's temporary file while an earlier checkpoint is already listed
        deadline = time.monotonic() + 300
        while True:
            assert time.monotonic() < deadline, server.get(f"/api/runs/{run_id}")
            listed = server.get(f"/api/runs/{run_id}/checkpoints")
            later = [t for t in temp_files(folder) if t.name[1:8].isdigit()
                     and listed and int(t.name[1:8]) > listed[-1]["iteration"]]
            if later:
                break
            time.sleep(0.1)
        os.kill(worker_pid(server, run_id), signal.SIGKILL)
        killed_at = time.monotonic()
        run = server.wait_terminal(run_id, timeout=60)
        assert run["status"] == "interrupted", run
        assert time.monotonic() - killed_at < 15  # the server's heartbeat deadline (LORABOARD_HEARTBEAT_TIMEOUT_S)
        assert temp_files(folder), "the kill left the temporary file this test waited for"
        listed = assert_listed_complete(server, run_id)
        assert all(".tmp" not in p.name for p in folder.glob("*_adapters.safetensors"))

        server.restart()  # the next start removes what the killed worker left
        assert temp_files(folder) == []
        assert assert_listed_complete(server, run_id) == listed

        last = listed[-1]["iteration"]
        status, body = server.post("/api/runs", {**config, "iters": last + 10,
                                                 "resume_from": {"run_id": run_id, "iteration": last}})
        assert status == 201, body
        resumed = server.wait_terminal(body["id"], timeout=300)
        assert resumed["status"] == "completed", resumed
        metrics = server.get(f"/api/runs/{body['id']}/metrics")
        assert [p["iteration"] for p in metrics["train"]] == [last + 5, last + 10]  # it trained on from there
        assert [c["iteration"] for c in assert_listed_complete(server, body["id"])] == [last + 10]
        assert temp_files(run_folder(server, body["id"])) == []
    finally:
        server.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1.5 MB tmpfs as the adapters folder: room for one checkpoint of the tiny model, not two."""
    folder = tmp_path / "adapters"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.real  # a real server and worker
def test_disk_full_while_saving_fails_readably_and_keeps_what_was_saved(
    tmp_path: Path, default_model: Path, short_data: Path, small_disk: Path
) -> None:
    server = Server(tmp_path).start()
    try:
        status, run = server.post("/api/runs", {**QUICK_RUN, "data": str(short_data), "iters": 200,
                                                "steps_per_eval": 10, "save_every": 10})
        assert status == 201, run
        run = server.wait_terminal(run["id"], timeout=300)
        folder = run_folder(server, run["id"])
        assert run["status"] == "failed", run
        assert "disk is full" in run["error"] and str(folder) in run["error"], run["error"]
        listed = assert_listed_complete(server, run["id"])  # the checkpoints before it are intact
        assert listed[0]["iteration"] == 10
        assert temp_files(folder) == []  # the half-written file was removed
        for page in ("/", f"/runs/{run['id']}", "/runs/new", f"/runs/{run['id']}/status"):
            status_code, _, body = server.request("GET", page)
            assert status_code == 200, (page, body[:300])
        assert server.get(f"/api/runs/{run['id']}")["error"] == run["error"]
    finally:
        server.stop()
