"""Several clients acting on one run at the same moment, against a real server and real workers: stop
twice, re-tune early stopping while the run ends, delete while it stops, cancel the queue while runs are
stopped and moved. Every answer is a 2xx or a 4xx that says why; the end state is consistent (the run's
rows and files agree, or both are gone)."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import QUICK_RUN, TERMINAL, Server

# trains until stopped, saving a checkpoint every 5 steps
LONG_RUN: dict[str, Any] = {**QUICK_RUN, "iters": 1_000_000, "steps_per_eval": 1_000_000, "save_every": 5,
                            "steps_per_report": 5}
Call = Callable[[], tuple[str, int, Any]]


@pytest.fixture(scope="module")
def race_server(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("race"), extra_env={"LORABOARD_MAX_CONCURRENT_RUNS": "1"}).start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _runs_stopped_after(race_server: Server) -> Iterator[None]:
    """A test that fails midway leaves no run training: the next one would wait for the only slot and fail too."""
    yield
    live = [run["id"] for run in race_server.get("/api/runs") if run["status"] not in TERMINAL]
    for run_id in live:
        race_server.post(f"/api/runs/{run_id}/stop")
    for run_id in live:
        race_server.wait_terminal(run_id)


def at_once(calls: list[Call]) -> list[tuple[str, int, Any]]:
    """Run the calls in threads released together; each answers (what, status, body)."""
    barrier = threading.Barrier(len(calls))

    def released(call: Call) -> tuple[str, int, Any]:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(released, calls))


def call(server: Server, what: str, method: str, path: str, body: Any = None) -> Call:
    def send() -> tuple[str, int, Any]:
        status, parsed, _ = server.request(method, path, body)
        return what, status, parsed

    return send


def training_run(server: Server, name: str, data: Path, checkpoints: int = 0, **config: Any) -> int:
    """A run that trains on data until stopped; answers once it is past `checkpoints` checkpoints."""
    status, run = server.post("/api/runs", {**LONG_RUN, "name": name, "data": str(data), **config})
    assert status == 201, run
    server.wait_for(run["id"], lambda r: r["status"] == "running" and r["iteration"] >= max(1, 5 * checkpoints),
                    what=f"training past {5 * checkpoints} iterations")
    return int(run["id"])


def db_rows(server: Server, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(server.root / "loraboard.db") as conn:
        return conn.execute(query, args).fetchall()


def run_folder(server: Server, run_id: int) -> Path:
    return server.root / "adapters" / f"run-{run_id:04d}"


def assert_answers(results: list[tuple[str, int, Any]], allowed: dict[str, set[int]]) -> None:
    for what, status, body in results:
        assert status in allowed[what], (what, status, body)


def assert_checkpoints_match_files(server: Server, run_id: int) -> int:
    """Every checkpoint row has its file with that size and sha256; every adapter file has its row."""
    rows = db_rows(server, "SELECT filename, size_bytes, sha256 FROM checkpoint WHERE run_id = ?", run_id)
    folder = run_folder(server, run_id)
    for filename, size, sha256 in rows:
        data = (folder / filename).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha256), filename
    on_disk = {p.name for p in folder.glob("*_adapters.safetensors")}
    assert on_disk == {filename for filename, _, _ in rows}
    return len(rows)


def test_stop_twice_and_retune_while_it_ends(race_server: Server, short_data: Path) -> None:
    run_id = training_run(race_server, "stopped by everyone", short_data, checkpoints=1, steps_per_eval=5)
    rule = {"early_stopping": {"patience": 3, "min_delta": 0.01}}
    results = at_once([
        call(race_server, "stop", "POST", f"/api/runs/{run_id}/stop"),
        call(race_server, "stop", "POST", f"/api/runs/{run_id}/stop?keep_best=true"),
        call(race_server, "page stop", "POST", f"/runs/{run_id}/stop"),
        call(race_server, "patch", "PATCH", f"/api/runs/{run_id}", rule),
        call(race_server, "patch", "PATCH", f"/api/runs/{run_id}", {**rule, "name": "renamed while stopping"}),
        call(race_server, "patch", "PATCH", f"/api/runs/{run_id}", {"early_stopping": None}),
    ])
    assert_answers(results, {"stop": {202}, "page stop": {200}, "patch": {200, 409}})
    run = race_server.wait_terminal(run_id)
    # the rename carries a rule, so it is refused whole (409) if the run ended before it was read: the name
    # follows the answer, never half of it
    renamed = results[4][1] == 200
    assert run["status"] == "stopped", run
    assert run["name"] == ("renamed while stopping" if renamed else "stopped by everyone"), (results[4], run)
    # once ended, re-tuning is refused with the reason, and nothing changes
    results = at_once([call(race_server, "patch", "PATCH", f"/api/runs/{run_id}", rule) for _ in range(4)])
    assert {(status, body["detail"]) for _, status, body in results} == {(409, f"run {run_id} has ended (stopped)")}
    assert assert_checkpoints_match_files(race_server, run_id) >= 1
    deployment = [c for c in race_server.get(f"/api/runs/{run_id}/checkpoints") if c["is_deployment"]]
    assert len(deployment) == 1  # keep_best: the best checkpoint is the deployment one, once


def test_delete_while_stopping(race_server: Server, short_data: Path) -> None:
    run_id = training_run(race_server, "deleted while stopping", short_data, checkpoints=1)

    def delete_until_gone() -> tuple[str, int, Any]:
        """DELETE is refused (409) while the run is live; keep asking until it is deleted or gone."""
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            status, body, _ = race_server.request("DELETE", f"/api/runs/{run_id}?confirm=yes")
            if status != 409:
                return "delete", status, body
            time.sleep(0.05)
        return "delete", 409, "still live after 240 s"

    def patch_until_gone() -> tuple[str, int, Any]:
        while True:
            status, body, _ = race_server.request("PATCH", f"/api/runs/{run_id}", {"notes": "racing the delete"})
            if status != 200:
                return "patch", status, body

    results = at_once([
        call(race_server, "stop", "POST", f"/api/runs/{run_id}/stop"),
        delete_until_gone, delete_until_gone, delete_until_gone, patch_until_gone,
    ])
    assert_answers(results, {"stop": {202}, "delete": {200, 404}, "patch": {404}})
    deleted = [body for what, status, body in results if what == "delete" and status == 200]
    assert len(deleted) == 1 and deleted[0]["deleted"] == run_id, results
    status, _, _ = race_server.request("GET", f"/api/runs/{run_id}")
    assert status == 404
    assert not run_folder(race_server, run_id).exists()
    for table in ("trainreport", "valreport", "checkpoint", "run"):
        column = "id" if table == "run" else "run_id"
        assert db_rows(race_server, f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", run_id) == [(0,)], table


def test_cancel_queue_while_runs_are_stopped_and_moved(race_server: Server, short_data: Path) -> None:
    training = training_run(race_server, "trains through the queue's turmoil", short_data)
    waiting = []
    for index in range(4):
        status, run = race_server.post("/api/runs", {**LONG_RUN, "name": f"waiting {index + 1}"})
        assert status == 201, run
        waiting.append(run["id"])
    results = at_once([
        call(race_server, "cancel", "POST", "/api/runs/queue/cancel"),
        call(race_server, "cancel", "POST", "/api/runs/queue/cancel"),
        call(race_server, "stop", "POST", f"/api/runs/{waiting[0]}/stop"),
        call(race_server, "move", "POST", f"/api/runs/{waiting[1]}/queue", {"position": "top"}),
        call(race_server, "move", "POST", f"/api/runs/{waiting[2]}/queue", {"position": "bottom"}),
        call(race_server, "delete", "DELETE", f"/api/runs/{waiting[3]}?confirm=yes"),
    ])
    assert_answers(results, {"cancel": {200}, "stop": {202}, "move": {200, 409}, "delete": {200, 409}})
    cancelled = [run_id for what, _, body in results if what == "cancel" for run_id in body["cancelled"]]
    assert len(cancelled) == len(set(cancelled))  # no run is cancelled twice
    deleted = {body["deleted"] for what, status, body in results if what == "delete" and status == 200}
    for run_id in waiting:
        status, run, _ = race_server.request("GET", f"/api/runs/{run_id}")
        if run_id in deleted:
            assert status == 404
            continue
        assert (run["status"], run["started_at"]) == ("stopped", None), run
        assert run_id in cancelled or run_id == waiting[0]
    assert race_server.get(f"/api/runs/{training}")["status"] == "running"
    status, _ = race_server.post(f"/api/runs/{training}/stop")
    assert status == 202
    assert race_server.wait_terminal(training)["status"] in TERMINAL


def test_delete_races_edits_of_the_same_run(race_server: Server, short_data: Path) -> None:
    """Runs that ended before they started (cancelled from the queue) are deleted while other clients rename
    them, write their notes, stop them and read them: each of those answers 200/202 or 404, never a 5xx."""
    training = training_run(race_server, "holds the only slot", short_data)
    ended = []
    for index in range(8):
        status, run = race_server.post("/api/runs", {**LONG_RUN, "name": f"to delete {index + 1}"})
        assert status == 201, run
        ended.append(run["id"])
    status, body = race_server.post("/api/runs/queue/cancel")
    assert body["cancelled"] == ended
    for run_id in ended:
        results = at_once([
            call(race_server, "delete", "DELETE", f"/api/runs/{run_id}?confirm=yes"),
            call(race_server, "delete", "DELETE", f"/api/runs/{run_id}?confirm=yes"),
            *(call(race_server, "patch", "PATCH", f"/api/runs/{run_id}", {"notes": f"note {n}"}) for n in range(3)),
            call(race_server, "patch", "PATCH", f"/api/runs/{run_id}", {"name": "renamed"}),
            call(race_server, "stop", "POST", f"/api/runs/{run_id}/stop"),
            call(race_server, "get", "GET", f"/api/runs/{run_id}"),
        ])
        assert_answers(results, {"delete": {200, 404}, "patch": {200, 404}, "stop": {202, 404}, "get": {200, 404}})
        assert sorted(status for what, status, _ in results if what == "delete") == [200, 404], results
        status, _, _ = race_server.request("GET", f"/api/runs/{run_id}")
        assert status == 404
    assert race_server.get(f"/api/runs/{training}")["status"] == "running"
    status, _ = race_server.post(f"/api/runs/{training}/stop")
    assert status == 202
    assert race_server.wait_terminal(training)["status"] in TERMINAL


def test_stop_right_after_start_ends_stopped(race_server: Server) -> None:
    status, run = race_server.post("/api/runs", {**LONG_RUN, "name": "stopped at once"})
    assert status == 201, run
    race_server.wait_for(run["id"], lambda r: r["status"] == "starting", what="starting")
    status, _ = race_server.post(f"/api/runs/{run['id']}/stop")
    assert status == 202
    ended = race_server.wait_terminal(run["id"])
    assert ended["status"] == "stopped", ended
