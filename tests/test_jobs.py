"""Jobs: the pure rules, the database side with real SQLite and real processes, real token-statistics jobs
through a real server (finished, cancelled, killed); bad job requests and the upgrade of an older database
in-process. The pages are in test_jobs_browser.py."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_DIR, InProcess, Server, bearer, in_process
from pydantic import BaseModel
from sqlmodel import Session, select

from app.contract.kinds import EVALUATE, KINDS, TOKEN_STATS, TokenStatsParams
from app.contract.pids import is_job_process
from app.contract.policy import rough_duration
from app.contract.settings import Settings
from app.db import make_engine
from app.jobs.jobs import (
    Candidate,
    Holder,
    blocker,
    cancel_step,
    create_job,
    dead_end,
    free_action,
    holder_ref,
    job_eta_s,
    job_is_dead,
    request_cancel,
    to_release_for,
    waiting_reason,
)
from app.jobs.supervisor import Supervisor
from app.jobs.views import VIEWS
from app.tables import Checkpoint, Job, Run, utcnow

SAMPLE = PROJECT_DIR / "data" / "contact-center"
ENDED = ("completed", "stopped", "failed", "interrupted")


# Unit: the rules --------------------------------------------------------------------------------------


def test_dead_job_rule() -> None:
    assert job_is_dead("running", process_alive=False, heartbeat_age_s=1, timeout_s=15)
    assert job_is_dead("starting", process_alive=True, heartbeat_age_s=16, timeout_s=15)
    assert job_is_dead("stopping", process_alive=False, heartbeat_age_s=None, timeout_s=15)
    assert not job_is_dead("running", process_alive=True, heartbeat_age_s=14, timeout_s=15)
    assert not job_is_dead("running", process_alive=True, heartbeat_age_s=None, timeout_s=15)
    assert not job_is_dead("queued", process_alive=False, heartbeat_age_s=None, timeout_s=15)  # no worker yet
    for ended in ENDED:
        assert not job_is_dead(ended, process_alive=False, heartbeat_age_s=999, timeout_s=15)
    assert dead_end("running", process_alive=False) == (
        "interrupted", "the worker process ended without reporting")
    assert dead_end("running", process_alive=True) == ("interrupted", "the worker stopped reporting")
    assert dead_end("stopping", process_alive=False) == ("stopped", None)  # it was being cancelled anyway


def test_eta_only_while_working_and_from_the_pace_so_far() -> None:
    assert job_eta_s("running", done=250, total=1000, elapsed_s=10.0) == pytest.approx(30.0)
    assert job_eta_s("running", done=0, total=1000, elapsed_s=10.0) is None  # no pace yet
    assert job_eta_s("running", done=10, total=0, elapsed_s=10.0) is None  # total not known yet
    assert job_eta_s("running", done=1000, total=1000, elapsed_s=10.0) == 0.0
    assert job_eta_s("queued", done=0, total=1000, elapsed_s=0.0) is None
    assert job_eta_s("completed", done=500, total=1000, elapsed_s=10.0) is None
    assert job_eta_s("running", done=1, total=1, elapsed_s=60.0, resident=True) is None  # up until released


def test_cancel_state_changes() -> None:
    queued = cancel_step("queued")
    assert queued is not None and (queued.status, queued.finished, queued.signal) == ("stopped", True, False)
    for working in ("starting", "running", "stopping"):
        step = cancel_step(working)
        assert step is not None and (step.status, step.finished, step.signal) == ("stopping", False, True)
    for ended in ENDED:
        assert cancel_step(ended) is None


def test_capacity_rule_is_shared_by_runs_and_jobs() -> None:
    training = Holder("run", 3, "running", memory=True)
    evaluating = Holder("evaluate", 7, "running", memory=True)
    counting = Holder("token_stats", 8, "running", memory=False)
    evaluate = Candidate("evaluate", needs_memory=True)
    run = Candidate("run", needs_memory=True)

    assert waiting_reason(Candidate("token_stats", needs_memory=False), [training, evaluating], 1) is None
    assert waiting_reason(evaluate, [training], 1) == "waits for run 3 (training) to finish"
    assert waiting_reason(evaluate, [evaluating], 1) == "waits for job 7 (evaluate) to finish"
    assert waiting_reason(evaluate, [counting], 1) is None  # a cheap job holds no model memory
    assert waiting_reason(evaluate, [], 1) is None
    assert waiting_reason(Candidate("evaluate", True, allow_while_training=True), [training], 1) is None
    assert waiting_reason(evaluate, [Holder("run", 4, "stopping", True)], 1) == "waits for run 4 (stopping) to finish"

    assert waiting_reason(run, [training], 1) == "waits for run 3 (training) to finish"
    assert waiting_reason(run, [training], 2) is None
    assert waiting_reason(run, [evaluating], 2) == "waits for job 7 (evaluate) to finish"
    assert waiting_reason(run, [counting], 1) is None
    assert waiting_reason(run, [Holder("serve", 9, "running", True, shares=True)], 1) is None  # user let it share


def test_a_resident_job_holds_runs_back_but_not_other_jobs() -> None:
    serving = Holder("serve", 9, "running", memory=True, resident=True)
    training = Holder("run", 3, "running", memory=True)
    playground = Candidate("playground", needs_memory=True, resident=True)

    assert waiting_reason(Candidate("run", True), [serving], 1) == "waits for the server (job 9) to be stopped"
    assert waiting_reason(Candidate("evaluate", True), [serving], 1) is None
    assert waiting_reason(playground, [serving], 1) is None
    assert waiting_reason(playground, [Holder("evaluate", 7, "running", True)], 1) is None
    assert waiting_reason(playground, [training], 1) == "waits for run 3 (training) to finish"


def test_an_idle_playground_alone_is_released_for_a_run_and_says_for_how_long() -> None:
    idle = Holder("playground", 12, "running", memory=True, resident=True, idle_s=130, release_in_s=470)
    answering = Holder("playground", 12, "running", memory=True, resident=True)
    serving = Holder("serve", 9, "running", memory=True, resident=True)
    run = Candidate("run", True)
    assert waiting_reason(run, [idle], 1) == (
        "waits for the playground (job 12, idle 2 min, releases itself in 8 min) to be released")
    assert waiting_reason(run, [answering], 1) == "waits for the playground (job 12) to be released"
    assert to_release_for(run, [idle], 1) == [idle]
    assert to_release_for(run, [answering], 1) == []  # it is answering a prompt
    assert to_release_for(run, [idle, serving], 1) == []  # the server holds the run back anyway
    assert to_release_for(run, [Holder("run", 3, "running", True), idle], 1) == []  # a run trains: one at a time
    assert to_release_for(run, [], 1) == []
    assert to_release_for(Candidate("evaluate", True), [idle], 1) == []  # jobs never wait for it
    shared = Holder("playground", 12, "running", memory=True, shares=True, resident=True, idle_s=5, release_in_s=595)
    assert to_release_for(run, [shared], 1) == [] and blocker(run, [shared], 1) is None  # "Start anyway": it shares
    assert (holder_ref(idle), holder_ref(Holder("run", 3, "running", True))) == ("playground 12", "run 3")
    assert rough_duration(40) == "40 s" and rough_duration(3900) == "1 h 5 min" and rough_duration(7200) == "2 h"


def test_the_one_click_that_frees_what_a_run_waits_for() -> None:
    assert free_action("run 3") == {"url": "/runs/3/stop", "label": "Stop run 3",
                                    "confirm": "Stop run 3? It saves its adapter at the next step and ends."}
    assert free_action("playground 12")["label"] == "Release the playground"  # type: ignore[index]
    assert free_action("serve 9") == {"url": "/jobs/9/cancel", "label": "Stop the server",
                                      "confirm": "Stop the server (job 9)? What waits for it starts once it has ended."}
    assert free_action("evaluate 7")["label"] == "Cancel job 7"  # type: ignore[index]
    assert [free_action(ref) for ref in (None, "", "run", "run x", "job 3/../4")] == [None] * 5


# Real SQLite and real processes: the supervisor's rule and cancel ---------------------------------------------


class NoParams(BaseModel):
    pass


@pytest.fixture
def engine_settings(tmp_path: Path) -> Iterator[tuple[Any, Settings]]:
    settings = Settings(data_dir=tmp_path, db_path=tmp_path / "loraboard.db", hf_offline=True,
                        heartbeat_timeout_s=15)
    engine = make_engine(settings.database_path)
    yield engine, settings
    engine.dispose()


def wait_row(engine: Any, job_id: int, statuses: tuple[str, ...], timeout: float = 120) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        with Session(engine) as session:
            job = session.get(Job, job_id)
            assert job is not None
            if job.status in statuses:
                return job
        assert time.monotonic() < deadline, f"job {job_id} stayed {job.status}"
        time.sleep(0.2)


def test_a_stop_read_before_the_run_ended_leaves_its_end(engine_settings: tuple[Any, Settings]) -> None:
    """Stop asked on a run read while it trained, after its worker recorded `completed`: the end stays; a stop
    read while queued, of a run the supervisor has just started, stops it as a running one."""
    engine, settings = engine_settings
    supervisor = Supervisor(settings, engine)
    with Session(engine) as reader, Session(engine) as worker:
        run = Run(name="ends", status="running")
        queued = Run(name="starts", status="queued")
        reader.add_all([run, queued])
        reader.commit()
        reader.refresh(run)
        reader.refresh(queued)
        for row, status in ((worker.get(Run, run.id), "completed"), (worker.get(Run, queued.id), "running")):
            assert row is not None
            row.status = status
            worker.add(row)
        worker.commit()
        assert (run.status, queued.status) == ("running", "queued")  # what the stop request read
        supervisor.request_stop(reader, run)
        supervisor.request_stop(reader, queued, keep_best=True)
        ids = run.id, queued.id
    with Session(engine) as session:
        ended, started = session.get(Run, ids[0]), session.get(Run, ids[1])
        assert ended is not None and started is not None
        assert (ended.status, ended.stop_requested) == ("completed", False)
        assert (started.status, started.stop_requested, started.deploy_best_on_end) == ("stopping", True, True)
        assert started.finished_at is None


def test_keep_best_asked_while_another_stop_ended_the_run_marks_the_best(
        engine_settings: tuple[Any, Settings]) -> None:
    """"Stop and keep best" read while the run stopped on a plain stop, arriving after the worker recorded its end
    (too late for the worker to see it): the best checkpoint is marked all the same, once. A run with a deployment
    checkpoint already, or that ended otherwise than stopped, keeps what it has."""
    engine, settings = engine_settings
    supervisor = Supervisor(settings, engine)
    with Session(engine) as reader, Session(engine) as worker:
        runs = {name: Run(name=name, status="stopping") for name in ("stopped", "marked", "failed")}
        reader.add_all(runs.values())
        reader.commit()
        for run in runs.values():
            reader.refresh(run)
            for iteration, loss in ((5, 2.0), (10, 1.5), (15, 1.8)):
                name = f"{iteration:07d}_adapters.safetensors"
                worker.add(Checkpoint(run_id=run.id, iteration=iteration, filename=name,
                                      size_bytes=1, sha256="0", val_loss=loss,
                                      is_deployment=run.name == "marked" and iteration == 15))
        for run in runs.values():  # the worker ends each run after the stop request read it
            row = worker.get(Run, run.id)
            assert row is not None
            row.status = "failed" if run.name == "failed" else "stopped"
            worker.add(row)
        worker.commit()
        for run in runs.values():
            supervisor.request_stop(reader, run, keep_best=True)
        supervisor.request_stop(reader, runs["stopped"], keep_best=True)  # asked twice: still one
        ids = {name: run.id for name, run in runs.items()}
    with Session(engine) as session:
        deployed = {name: [c.iteration for c in session.exec(select(Checkpoint).where(Checkpoint.run_id == run_id))
                           if c.is_deployment] for name, run_id in ids.items()}
    assert deployed == {"stopped": [10], "marked": [15], "failed": []}


@pytest.mark.real  # the supervisor starts a real worker
def test_a_memory_job_waits_for_training_then_starts(engine_settings: tuple[Any, Settings]) -> None:
    engine, settings = engine_settings
    supervisor = Supervisor(settings, engine)
    with Session(engine) as session:
        run = Run(name="busy", status="running")
        session.add(run)
        session.commit()
        session.refresh(run)
        # "no_such_kind" is a kind this worker does not know: taken to need the model's memory (the safe side)
        job = create_job(session, "no_such_kind", NoParams())
        cheap = create_job(session, "token_stats", NoParams())
        request_cancel(session, cheap)  # a queued job is stopped at once, never spawned
        assert (cheap.status, cheap.finished_at is not None) == ("stopped", True)
        beside = create_job(session, "no_such_kind", NoParams())
        supervisor.start_queued(session)
        for waiting in (job, beside):
            session.refresh(waiting)
            assert waiting.status == "queued"
            assert waiting.waiting_reason == f"waits for run {run.id} (training) to finish"

        assert supervisor.allow_while_training(session, beside, True)  # the user's override: it starts now
        assert beside.status in ("starting", "running", "failed") and beside.id is not None
        assert wait_row(engine, beside.id, ENDED).status == "failed"
        assert not supervisor.allow_while_training(session, beside, False)  # it has started: too late
        session.refresh(job)
        assert job.status == "queued"  # still waits for the run

        run.status = "completed"
        session.add(run)
        session.commit()
        supervisor.start_queued(session)
        session.refresh(job)
        assert job.status in ("starting", "running", "failed") and job.waiting_reason is None
        assert job.id is not None
    ended = wait_row(engine, job.id, ENDED)  # the real worker took it and said what is wrong
    assert ended.status == "failed"
    assert ended.error is not None and ended.error.startswith("this worker has no job kind 'no_such_kind'"), ended.error
    supervisor.reap()


def test_cancel_a_working_job_signals_its_worker(engine_settings: tuple[Any, Settings]) -> None:
    engine, _ = engine_settings
    with Session(engine) as session:
        job = create_job(session, "token_stats", NoParams())
        assert job.id is not None
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "worker", "job",
                                    "--job-id", str(job.id)])
        try:
            job.status, job.pid = "running", sleeper.pid
            session.add(job)
            session.commit()
            assert request_cancel(session, job)
            assert job.status == "stopping" and job.finished_at is None  # the worker ends it `stopped` itself
            assert sleeper.wait(timeout=30) == -signal.SIGTERM
            assert not request_cancel(session, Job(kind="x", status="completed"))
        finally:
            sleeper.kill()
            sleeper.wait()


# Real server: token statistics as a job ---------------------------------------------------------------------


def big_dataset(root: Path, name: str, times: int = 30) -> Path:
    """The sample data repeated `times` over: long enough to be still counting when cancelled or killed."""
    folder = root / "datasets" / name
    folder.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        lines = (SAMPLE / f"{split}.jsonl").read_text().rstrip("\n") + "\n"
        (folder / f"{split}.jsonl").write_text(lines * times)
    return folder


def wait_job(server: Server, job_id: int, predicate: Any, timeout: float = 180) -> dict[str, Any]:
    return server.poll(f"/api/jobs/{job_id}", predicate, timeout, every_s=0.2)


def read_events(url: str, timeout: float = 180) -> list[tuple[str, dict[str, Any]]]:
    """Every event of a server-sent event stream until the server ends it."""
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    with urllib.request.urlopen(urllib.request.Request(url, headers=bearer()), timeout=timeout) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
    return events


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("jobs")).start()
    yield srv
    for job in srv.get("/api/jobs"):  # never leave a worker counting after the tests
        if job["status"] not in ENDED:
            srv.post(f"/api/jobs/{job['id']}/cancel")
    srv.stop()


def test_a_token_stats_job_runs_to_the_end(jobs_server: Server, default_model: Path) -> None:
    folder = big_dataset(jobs_server.root, "finishing", times=2)
    code, started = jobs_server.post("/api/token-stats", {"data": str(folder), "model": str(default_model)})
    assert code == 201, started
    job_id = started["id"]
    events = read_events(f"{jobs_server.url}/api/jobs/{job_id}/events")
    names = [name for name, _ in events]
    assert names[-1] == "end" and set(names[:-1]) <= {"progress"}, names
    last = events[-1][1]
    assert last["status"] == "completed" and last["progress"] == {"done": 3000, "total": 3000, "unit": "examples"}
    assert all(e["progress"]["done"] <= e["progress"]["total"] or e["progress"]["total"] == 0 for _, e in events)

    job = jobs_server.get(f"/api/jobs/{job_id}")
    assert job["kind"] == "token_stats" and job["status"] == "completed" and job["error"] is None
    assert job["result"]["splits"]["train"]["examples"] == 2400
    assert job["params"]["data"] == str(folder) and job["params"]["model"] == str(default_model)
    assert job["eta_s"] is None and job["started_at"] <= job["finished_at"]
    listed = jobs_server.get("/api/jobs?kind=token_stats&status=completed")
    assert job_id in [j["id"] for j in listed]
    assert [j["id"] for j in listed] == sorted((j["id"] for j in listed), reverse=True)  # newest first
    assert jobs_server.get(f"/api/token-stats/{job_id}")["summary"]["all"]["examples"] == 3000  # the old view
    assert jobs_server.request("POST", f"/api/jobs/{job_id}/cancel")[0] == 409  # it has ended


def ended_job(inproc: InProcess, data: Path, model: Path) -> int:
    """A token-statistics job that has ended, as its worker leaves it."""
    with Session(inproc.engine) as session:
        job = Job(kind="token_stats", status="completed", params_json=json.dumps({"data": str(data), "model": str(
            model)}), done=1500, total=1500, unit="examples", started_at=utcnow(), finished_at=utcnow())
        session.add(job)
        session.commit()
        assert job.id is not None
        return job.id


def test_bad_job_requests_are_named(app_client: InProcess, default_model: Path) -> None:
    jobs_server = app_client
    code, answer, _ = jobs_server.request("GET", "/api/jobs?kind=nope")
    assert code == 422 and answer["detail"][0]["loc"] == ["query", "kind"]
    assert "token_stats" in answer["detail"][0]["msg"]
    code, answer, _ = jobs_server.request("GET", "/api/jobs?status=done")
    assert code == 422 and answer["detail"][0]["loc"] == ["query", "status"]
    assert jobs_server.request("GET", "/api/jobs/0")[0] == 422
    assert jobs_server.request("GET", f"/api/jobs/{2**63}")[0] == 422
    code, answer, _ = jobs_server.request("GET", "/api/jobs/999999")
    assert code == 404 and answer["detail"] == "no job with id 999999"
    assert jobs_server.request("POST", "/api/jobs/999999/cancel")[0] == 404
    assert jobs_server.request("GET", "/api/jobs/999999/events")[0] == 404
    assert jobs_server.request("PATCH", "/api/jobs/999999", {"allow_while_training": True})[0] == 404
    ended = ended_job(jobs_server, big_dataset(jobs_server.root, "small", times=1), default_model)
    code, answer, _ = jobs_server.request("PATCH", f"/api/jobs/{ended}", {"allow_while_training": True})
    assert code == 409 and "has already started" in answer["detail"]
    code, answer, _ = jobs_server.request("PATCH", f"/api/jobs/{ended}", {"allow_while_training": "sometimes"})
    assert code == 422 and answer["detail"][0]["loc"] == ["body", "allow_while_training"]
    for method, path in (("POST", f"/api/jobs/{ended}/cancel"), ("PATCH", f"/api/jobs/{ended}"),
                         ("POST", f"/jobs/{ended}/cancel"), ("POST", f"/jobs/{ended}/allow-while-training")):
        refused = jobs_server.client.request(method, path, content=b'{"allow_while_training": true}', headers={
            "Content-Type": "application/json", "Origin": "https://evil.example"})
        assert refused.status_code == 403, (method, path)


def test_cancelling_a_running_job_stops_it(jobs_server: Server, default_model: Path) -> None:
    folder = big_dataset(jobs_server.root, "cancelled")
    code, started = jobs_server.post("/api/token-stats", {"data": str(folder), "model": str(default_model)})
    assert code == 201
    job_id = started["id"]
    running = wait_job(jobs_server, job_id, lambda j: j["status"] == "running" and j["progress"]["done"] > 0)
    assert running["progress"]["total"] == 45_000 and running["progress"]["unit"] == "examples"
    code, answer = jobs_server.post(f"/api/jobs/{job_id}/cancel")
    assert code == 202 and answer["status"] in ("stopping", "stopped"), answer
    stopped = wait_job(jobs_server, job_id, lambda j: j["status"] in ENDED, timeout=60)
    assert stopped["status"] == "stopped", stopped
    assert stopped["result"] is None  # a partial count is not complete in itself: not kept
    assert 0 < stopped["progress"]["done"] < 45_000 and stopped["finished_at"] is not None
    pid, deadline = job_pid(jobs_server, job_id), time.monotonic() + 60
    while is_job_process(pid, job_id):  # the worker exits after writing its end
        assert time.monotonic() < deadline, f"the worker {pid} of a stopped job still runs"
        time.sleep(0.2)

    code, again = jobs_server.post("/api/token-stats", {"data": str(folder), "model": str(default_model)})
    assert code == 201 and again["id"] != job_id  # a stopped job is counted again when asked for
    jobs_server.post(f"/api/jobs/{again['id']}/cancel")


def job_pid(server: Server, job_id: int) -> int:
    conn = sqlite3.connect(server.root / "loraboard.db")
    try:
        return int(conn.execute("SELECT pid FROM job WHERE id = ?", (job_id,)).fetchone()[0])
    finally:
        conn.close()


def test_a_killed_worker_leaves_its_job_interrupted(jobs_server: Server, default_model: Path) -> None:
    folder = big_dataset(jobs_server.root, "killed")
    code, started = jobs_server.post("/api/token-stats", {"data": str(folder), "model": str(default_model)})
    assert code == 201
    job_id = started["id"]
    wait_job(jobs_server, job_id, lambda j: j["status"] == "running" and j["progress"]["done"] > 0)
    os.kill(job_pid(jobs_server, job_id), signal.SIGKILL)
    timeout_s = float(jobs_server.env()["LORABOARD_HEARTBEAT_TIMEOUT_S"])
    deadline = time.monotonic() + timeout_s
    while True:  # the list does not check workers itself: this is the supervisor's tick at work
        job = next(j for j in jobs_server.get("/api/jobs?kind=token_stats") if j["id"] == job_id)
        if job["status"] != "running":
            break
        assert time.monotonic() < deadline, "the killed worker's job was not marked within the heartbeat timeout"
        time.sleep(0.2)
    assert job["status"] == "interrupted", job
    assert job["error"].startswith("the worker process ended without reporting"), job["error"]


# Upgrade: a database written by the loraboard before jobs --------------------------------------------------------

OLD_TOKEN_STATS_TABLE = """
CREATE TABLE tokenstatsjob (
	id INTEGER NOT NULL,
	dataset_path VARCHAR NOT NULL,
	model VARCHAR NOT NULL,
	files_signature VARCHAR NOT NULL,
	status VARCHAR NOT NULL,
	done INTEGER NOT NULL,
	total INTEGER NOT NULL,
	pid INTEGER,
	heartbeat_at DATETIME,
	error VARCHAR,
	traceback VARCHAR,
	result_json VARCHAR,
	log_path VARCHAR,
	created_at DATETIME NOT NULL,
	started_at DATETIME,
	finished_at DATETIME,
	PRIMARY KEY (id),
	CONSTRAINT token_stats_status CHECK (status IN ('queued', 'running', 'completed', 'failed'))
)"""


def test_an_older_database_keeps_its_token_statistics(tmp_path: Path, default_model: Path) -> None:
    from app.datasets.registry import files_signature

    folder = tmp_path / "datasets" / "kept"
    folder.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (folder / f"{split}.jsonl").write_text((SAMPLE / f"{split}.jsonl").read_text())
    result = {"splits": {"train": {"examples": 3, "lengths": [[10, 2], [40, 1]]},
                         "valid": {"examples": 1, "lengths": [[20, 1]]}}}
    conn = sqlite3.connect(tmp_path / "loraboard.db")
    with conn:
        conn.execute(OLD_TOKEN_STATS_TABLE)
        conn.execute("CREATE INDEX ix_token_stats_key ON tokenstatsjob (dataset_path, model)")
        row = ("completed", 4, 4, None, json.dumps(result), "2026-11-20 10:00:00.000000",
               "2026-11-20 10:00:01.000000", "2026-11-20 10:00:03.000000")
        conn.execute("INSERT INTO tokenstatsjob (dataset_path, model, files_signature, status, done, total, error,"
                     " result_json, created_at, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (str(folder), str(default_model), files_signature(folder), *row))
        conn.execute("INSERT INTO tokenstatsjob (dataset_path, model, files_signature, status, done, total, error,"
                     " created_at) VALUES (?, ?, '{}', 'failed', 0, 0, 'train.jsonl line 3: not valid JSON',"
                     " '2026-11-20 09:00:00.000000')", (str(folder), str(default_model)))
    conn.close()

    with in_process(tmp_path) as server:  # the dashboard upgrades the database as it starts
        jobs = server.get("/api/jobs?kind=token_stats")
        assert [(j["status"], j["error"]) for j in jobs] == [
            ("failed", "train.jsonl line 3: not valid JSON"), ("completed", None)]
        kept = jobs[1]
        assert kept["result"] == result and kept["progress"] == {"done": 4, "total": 4, "unit": "examples"}
        assert kept["finished_at"].startswith("2026-11-20T10:00:03")
        summary = server.get(f"/api/token-stats/{kept['id']}?max_seq_length=15")["summary"]
        assert summary["all"]["examples"] == 4 and summary["all"]["over_max_seq_length"] == 2
        code, again = server.post("/api/token-stats", {"data": str(folder), "model": str(default_model)})
        assert (code, again["id"], again["status"]) == (200, kept["id"], "completed")  # reused, not recounted
    conn = sqlite3.connect(tmp_path / "loraboard.db")
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert "tokenstatsjob" not in tables and "job" in tables


def test_a_job_whose_parameters_do_not_fit_its_kind_fails_with_one_readable_line() -> None:
    from worker.job import JobInputError, check_params, kind_named

    assert check_params(TOKEN_STATS, {"data": "/d", "model": "/m"}) == TokenStatsParams(data="/d", model="/m")
    with pytest.raises(JobInputError) as unknown:
        kind_named("no_such_kind")
    assert str(unknown.value) == f"this worker has no job kind 'no_such_kind' (known: {', '.join(sorted(KINDS))})"
    with pytest.raises(JobInputError) as err:
        check_params(EVALUATE, {"run_id": 1})
    assert str(err.value).startswith("this evaluate job's parameters are not valid: model: Field required")


def test_every_kind_of_the_contract_has_one_worker_module_and_exactly_one_view() -> None:
    """A kind is declared once (app/contract/kinds.py): its worker module defines run(ctx), and the app lists
    exactly one JobView of it (app/jobs/views.py), holding the contract's own kind object."""
    for name, kind in KINDS.items():
        assert kind.name == name
        spec = importlib.util.find_spec(kind.module)
        assert spec is not None and spec.origin is not None, f"{name}: no module {kind.module}"
        source = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        assert any(isinstance(node, ast.FunctionDef) and node.name == "run" for node in source.body), kind.module
        assert [view.kind for view in VIEWS if view.kind.name == name] == [kind], f"{name}: not one view"
    assert sorted(view.kind.name for view in VIEWS) == sorted(KINDS), "a view of a kind the contract lacks"
