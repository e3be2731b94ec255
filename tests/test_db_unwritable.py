"""A database that cannot be written: no report is lost, the supervisor goes on, requests answer 503 with a
sentence, the pages say so, and a worker that cannot write for too long saves its adapter and fails, saying so.

The fault is the real one: the database file and its WAL made immutable (`chattr +i`, which stops root too),
so SQLite's writes fail as they do on a read-only or full file system.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import QUICK_RUN, TERMINAL, InProcess, Server, in_process, short_examples

from app.contract.db_writes import (
    EXIT_DB_UNWRITABLE,
    GAVE_UP,
    Outage,
    duration_words,
    failure_kind,
    gave_up_reason,
    gone_worker_end,
    write_failure,
)
from app.contract.pids import is_worker
from app.contract.status import RunStatus
from worker.reporting import now_text

# --- the fault ---------------------------------------------------------------------------------------------


def chattr(flag: str, paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def unwritable(db: Path) -> Iterator[None]:
    """The database and its WAL immutable while the block runs (skips where the file system cannot)."""
    files = [db, db.with_name(db.name + "-wal")]
    assert all(f.exists() for f in files), files
    frozen = chattr("+i", files)
    if frozen.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {frozen.stderr.strip()}")
    try:
        yield
    finally:
        chattr("-i", files)


# --- pure rules --------------------------------------------------------------------------------------------


def test_write_failures_are_told_apart_from_other_errors(tmp_path: Path) -> None:
    from sqlalchemy.exc import OperationalError

    db = tmp_path / "t.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
    read_only = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as refused:
        read_only.execute("INSERT INTO t VALUES (1)")
    assert failure_kind(refused.value) == "read-only"
    wrapped = OperationalError("INSERT", {}, refused.value)
    failure = write_failure(db, wrapped)
    assert failure is not None
    assert failure.sentence() == (f"the database {db} cannot be written (read-only): "
                                  "attempt to write a readonly database")

    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(sqlite3.OperationalError) as locked:
        sqlite3.connect(db, timeout=0).execute("INSERT INTO t VALUES (2)")
    holder.execute("ROLLBACK")
    assert failure_kind(locked.value) == "locked"
    assert failure_kind(sqlite3.OperationalError("database or disk is full")) == "disk full"  # no code: by message
    with pytest.raises(sqlite3.OperationalError) as syntax:
        holder.execute("SELEKT 1")
    assert failure_kind(syntax.value) is None and write_failure(db, syntax.value) is None
    assert failure_kind(ValueError("disk I/O error")) is None


def test_outage_backs_off_and_tells_a_new_failure_once() -> None:
    outage = Outage(first_delay_s=0.5, max_delay_s=3.0)
    assert outage.failed("unwritable", now=10.0)
    assert [outage.failed("unwritable", now=10.0 + i) for i in range(4)] == [False] * 4
    assert outage.delay_s == 3.0 and outage.lasted_s(now=20.0) == 10.0
    assert outage.failed("ValueError: other", now=15.0)  # a different failure is told
    assert outage.succeeded() and not outage.succeeded()
    assert outage.delay_s == 0.0 and outage.lasted_s(now=30.0) == 0.0


def test_the_reason_of_a_worker_that_gave_up() -> None:
    assert [duration_words(s) for s in (600, 60, 3600, 90, 3, 1, 2.5)] == [
        "10 minutes", "1 minute", "1 hour", "90 seconds", "3 seconds", "1 second", "2.5 seconds"]
    reason = gave_up_reason(600, 1245)
    assert reason == "the database could not be written for 10 minutes; the adapter was saved at iteration 1,245"
    tail = f"step 1240\nworker: 12 writes were not made\n{reason}"
    assert gone_worker_end(EXIT_DB_UNWRITABLE, tail) == (RunStatus.failed, reason)
    assert gone_worker_end(None, tail) == (RunStatus.failed, reason)  # the app restarted meanwhile: its log says
    assert gone_worker_end(EXIT_DB_UNWRITABLE, "")[0] == RunStatus.failed
    assert gone_worker_end(EXIT_DB_UNWRITABLE, "")[1].startswith(GAVE_UP)
    assert gone_worker_end(-9, "step 1240") == (
        RunStatus.interrupted, "the worker process ended without reporting (exit code -9)")
    assert gone_worker_end(None, "") == (RunStatus.interrupted, "the worker process ended without reporting")


# --- the supervisor's loop ---------------------------------------------------------------------------------


class FailingTicks:
    """Stands in for the Supervisor: its first ticks raise a refused write, then one other error, then work."""

    def __init__(self, settings: Any, errors: list[Exception]) -> None:
        self.settings = settings
        self.errors = list(errors)
        self.ticks = 0
        self.write_failure: Any = None

    def tick(self) -> None:
        self.ticks += 1
        if self.errors:
            raise self.errors.pop(0)


def test_the_supervisor_loop_survives_failing_ticks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from app.contract.settings import Settings
    from app.main import _watch

    refused = sqlite3.OperationalError("disk I/O error")
    errors: list[Exception] = [refused, refused, sqlite3.OperationalError("attempt to write a readonly database"),
                               refused, RuntimeError("a bug")]
    supervisor = FailingTicks(Settings(data_dir=tmp_path), errors)

    async def watch_a_while() -> None:
        task = asyncio.create_task(_watch(supervisor, 0.01))  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while supervisor.ticks < 8 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not task.done(), task.exception()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="loraboard"):
        asyncio.run(watch_a_while())
    assert supervisor.ticks >= 8  # it went on after every failure
    assert supervisor.write_failure is not None and supervisor.write_failure.kind == "the file system refused the write"
    failed = [r for r in caplog.records if "check failed" in r.getMessage()]
    assert len(failed) == 2, [r.getMessage() for r in failed]  # the refused writes once, the bug once
    assert all(r.exc_info for r in failed)  # with its traceback
    assert "cannot be written" in failed[0].getMessage() and "a bug" in failed[1].getMessage()
    assert any("work again" in r.getMessage() for r in caplog.records)


# --- the worker's report writer ----------------------------------------------------------------------------


def report(iteration: int) -> dict[str, Any]:
    return {"iteration": iteration, "train_loss": 2.0, "learning_rate": 1e-3, "iterations_per_second": 1.0,
            "tokens_per_second": 100.0, "trained_tokens": 100 * iteration, "peak_memory": 0.1}


@pytest.fixture
def run_db(tmp_path: Path) -> Iterator[Path]:
    """A database with run 1 (running), its WAL open."""
    from sqlmodel import Session

    from app.db import make_engine
    from app.tables import Run

    db = tmp_path / "loraboard.db"
    engine = make_engine(db)
    with Session(engine) as session:
        session.add(Run(id=1, status="running"))
        session.commit()
    yield db
    engine.dispose()


def train_iterations(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT iteration FROM trainreport WHERE run_id = 1 ORDER BY id")]


def test_the_writer_keeps_reports_until_it_can_write(run_db: Path) -> None:
    from worker.reporting import ReportWriter

    writer = ReportWriter(run_db, 1).start()
    writer.train_report(report(1))
    writer.heartbeat()
    deadline = time.monotonic() + 10
    while train_iterations(run_db) != [1]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with unwritable(run_db):
        for iteration in range(2, 12):
            writer.train_report(report(iteration))
            time.sleep(0.15)
        assert train_iterations(run_db) == [1]
        assert writer.unwritten and not writer.gave_up.is_set()
    writer.train_report(report(12))
    writer.close()  # waits until it is all written
    assert train_iterations(run_db) == list(range(1, 13))
    assert writer.unwritten == [] and len(writer.errors) == 1 and "cannot be written" in writer.errors[0]


def test_the_writer_gives_up_after_its_limit(run_db: Path) -> None:
    from worker.reporting import ReportWriter

    writer = ReportWriter(run_db, 1, give_up_after_s=1.0).start()
    with unwritable(run_db):
        writer.train_report(report(1))
        assert writer.gave_up.wait(10)
        assert writer.stop_event.is_set()  # the training loop ends as on a stop request
        writer.train_report(report(2))
        started = time.monotonic()
        writer.close()  # one more try, then it returns
        assert time.monotonic() - started < 5
        assert len(writer.unwritten) == 2
    assert train_iterations(run_db) == []


def test_the_pool_drops_a_connection_opened_read_only(run_db: Path) -> None:
    """SQLite opens a file it may not write read-only, for good: the app's pool must not keep such a connection."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from app.db import make_engine

    engine = make_engine(run_db)
    engine.dispose()  # no pooled connection: the next one is opened while the file is immutable
    rename = text("UPDATE run SET name = :name WHERE id = 1")
    with unwritable(run_db), pytest.raises(OperationalError, match="readonly"), engine.begin() as conn:
        conn.execute(rename, {"name": "refused"})
    with engine.begin() as conn:
        conn.execute(rename, {"name": "written"})
    engine.dispose()
    with sqlite3.connect(run_db) as check:
        assert check.execute("SELECT name FROM run WHERE id = 1").fetchone() == ("written",)


def test_a_job_end_waits_for_the_database(run_db: Path) -> None:
    """A job's end (worker/job.end goes through write_until) is written once the database takes it; past the limit
    the refusal is raised."""
    import threading

    from worker.reporting import connect, write_until

    def finish(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE run SET status = 'completed' WHERE id = 1")

    conn = connect(run_db)
    with unwritable(run_db):
        with pytest.raises(sqlite3.OperationalError):
            write_until(run_db, finish, 1.0, conn)
        writing = threading.Thread(target=write_until, args=(run_db, finish, 30.0, conn))
        writing.start()
        time.sleep(1.0)
    writing.join(15)
    assert not writing.is_alive()
    conn.close()
    with sqlite3.connect(run_db) as check:
        assert check.execute("SELECT status FROM run WHERE id = 1").fetchone() == ("completed",)


def test_an_evaluation_result_waits_for_the_database(run_db: Path) -> None:
    """An evaluation's figures and answers (worker/evaluate.write_measurement) are written once the database takes
    them again, in one piece: a short spell of refused writes loses no result."""
    import threading

    from worker.evaluate import Loss, Measurement, write_measurement

    measured = Measurement(iteration=40, loss=Loss(loss=1.25, tokens=320, batches=2),
                           examples=[(1, "prompt", "reference", "output", 0.5, "{}")])
    write = threading.Thread(target=write_measurement, args=(run_db, 7, 1, "test", True, measured, 30.0))
    with unwritable(run_db):
        write.start()
        time.sleep(1.0)
        with sqlite3.connect(run_db) as check:
            assert check.execute("SELECT COUNT(*) FROM evaluation").fetchone() == (0,)
    write.join(15)
    assert not write.is_alive()
    with sqlite3.connect(run_db) as check:
        assert check.execute("SELECT iteration, loss, tokens FROM evaluation").fetchall() == [(40, 1.25, 320)]
        assert check.execute("SELECT line, output FROM evaluationexample").fetchall() == [(1, "output")]


def test_a_fused_model_is_registered_once_the_database_takes_it(run_db: Path, tmp_path: Path) -> None:
    """A fuse or quantize job's RegisteredModel row (worker/model_output.register) waits out refused writes; the
    folder it names is kept, and a name already taken still removes it and says so."""
    import threading

    from worker.job import JobInputError
    from worker.model_output import register

    folder = tmp_path / "fused-1"
    folder.mkdir()
    fields = {"name": "fused-1", "path": str(folder), "origin": "fused", "source_model": "base", "size_bytes": 1}
    write = threading.Thread(target=register, args=(run_db, fields, 30.0))
    with unwritable(run_db):
        write.start()
        time.sleep(1.0)
    write.join(15)
    assert not write.is_alive() and folder.is_dir()
    with sqlite3.connect(run_db) as check:
        assert check.execute("SELECT name, path FROM registered_model").fetchall() == [("fused-1", str(folder))]
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(JobInputError, match="already named 'fused-1'"):
        register(run_db, {**fields, "path": str(again)}, 30.0)
    assert not again.exists()


# --- real dashboards ---------------------------------------------------------------------------------------


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


QUICK_HEARTBEAT_TIMEOUT_S = 4
OUTAGE_S = 7  # longer than the heartbeat timeout by more than a supervisor tick


@pytest.fixture
def quick_heartbeat_server(tmp_path: Path, default_model: Path) -> Iterator[Server]:
    """A server that takes a silent worker for dead after 4 s without a heartbeat (the other tests' servers: 15 s)."""
    server = Server(tmp_path, extra_env={"LORABOARD_HEARTBEAT_TIMEOUT_S": str(QUICK_HEARTBEAT_TIMEOUT_S)}).start()
    yield server
    server.stop()


def test_an_unwritable_database_loses_no_report(quick_heartbeat_server: Server, short_data: Path) -> None:
    """A run trains on through 7 s of a database that refuses every write (longer than the heartbeat timeout):
    requests that write answer 503, the pages say why, and afterwards every report is there, in order."""
    server = quick_heartbeat_server
    db = server.root / "loraboard.db"
    status, run = server.post("/api/runs", {**QUICK_RUN, "data": str(short_data), "iters": 100_000,
                                            "steps_per_report": 2, "steps_per_eval": 100_000, "save_every": 100_000})
    assert status == 201, run
    run_id = run["id"]
    server.wait_for(run_id, lambda r: r["status"] == "running" and r["iteration"] >= 4, timeout=120)
    with unwritable(db):
        frozen_at = server.get(f"/api/runs/{run_id}")["iteration"]
        started, window = time.monotonic(), [now_text()]
        status, answer, _ = server.request("PATCH", f"/api/runs/{run_id}", {"notes": "kept?"})
        assert status == 503, answer
        assert answer["detail"].startswith(f"the database {db} cannot be written ("), answer
        _, _, page = server.request("GET", "/")
        assert b'id="database-unwritable"' in page and b"runs keep training" in page
        while time.monotonic() - started < OUTAGE_S:
            assert server.get(f"/api/runs/{run_id}")["status"] == "running"  # not taken for dead
            time.sleep(1)
        assert server.get(f"/api/runs/{run_id}")["iteration"] == frozen_at
        window.append(now_text())
    server.wait_for(run_id, lambda r: r["iteration"] > frozen_at, timeout=60, what="reports written again")
    server.poll("/api/runs", lambda _: b"database-unwritable" not in server.request("GET", "/")[2], timeout=30,
                what="the banner gone")
    assert server.post(f"/api/runs/{run_id}/stop")[0] == 202
    ended = server.wait_terminal(run_id, timeout=120)
    assert ended["status"] == "stopped", ended
    iterations = train_iterations_of(db, run_id)
    assert iterations == list(range(2, iterations[-1] + 1, 2)), iterations  # no gap, in order
    with sqlite3.connect(db) as conn:  # reported while nothing could be written, and kept
        (kept,) = conn.execute("SELECT COUNT(*) FROM trainreport WHERE run_id = ? AND recorded_at BETWEEN ? AND ?",
                               (run_id, *window)).fetchone()
    assert kept >= 2, (kept, window, train_iterations_of(db, run_id, "recorded_at"))
    print(f"{kept} reports made during the {OUTAGE_S} s outage were kept; {len(iterations)} reports in all, "
          "none missing")
    worker_log = (server.root / "adapters" / f"run-{run_id:04d}" / "worker.log").read_text()
    assert worker_log.count("writes kept, retrying") == 1, worker_log  # told once, not at every try
    server_log = (server.root / "server.log").read_text()
    assert server_log.count("the supervisor's check failed") == 1, server_log


def train_iterations_of(db: Path, run_id: int, *more: str) -> list[Any]:
    """The run's train reports' iterations (with more columns: rows) in the order they were written."""
    columns = ", ".join(("iteration", *more))
    with sqlite3.connect(db) as conn:
        rows = conn.execute(f"SELECT {columns} FROM trainreport WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
    return rows if more else [row[0] for row in rows]


def run_status(inproc: InProcess, run_id: int) -> dict[str, Any]:
    answer: dict[str, Any] = inproc.get(f"/api/runs/{run_id}")
    return answer


@pytest.mark.real  # a real server and worker
def test_writes_answer_503_the_supervisor_goes_on_and_a_worker_gives_up(tmp_path: Path, default_model: Path) -> None:
    """In-process dashboard, workers giving up after 3 s: while the database refuses writes a request that writes
    answers 503 (JSON for the API, the error page for a browser) and every page shows the banner; afterwards the
    pool's read-only connections are gone, a new run is started by the supervisor whose ticks failed meanwhile,
    and when the database refuses writes again its worker saves its adapter and ends; its run then fails, saying
    why."""
    with in_process(tmp_path / "app", db_unwritable_limit_s=3.0) as inproc:
        db = inproc.root / "loraboard.db"
        data = short_examples(tmp_path / "data")
        config = {**QUICK_RUN, "data": str(data), "iters": 100_000, "steps_per_report": 5, "steps_per_eval": 100_000,
                  "save_every": 100_000}
        with unwritable(db):
            status, answer = inproc.post("/api/runs", config)
            assert status == 503, answer
            assert answer["detail"].startswith(f"the database {db} cannot be written ("), answer
            page = inproc.client.post("/datasets/register", headers={"Accept": "text/html"},
                                      data={"name": "copy", "path": str(data)})
            assert page.status_code == 503 and "<html" in page.text and "cannot be written" in page.text, page.text
            assert 'id="database-unwritable"' in inproc.get("/")
            time.sleep(1.5)  # supervisor ticks fail meanwhile
            assert inproc.app.state.supervisor.write_failure is not None
        status, run = inproc.post("/api/runs", config)
        assert status == 201, run
        run_id = run["id"]
        wait_until(lambda: run_status(inproc, run_id)["iteration"] >= 5, 120, "the run never trained")
        assert 'id="database-unwritable"' not in inproc.get("/")
        folder = inproc.app.state.settings.adapters_dir / f"run-{run_id:04d}"
        with sqlite3.connect(db) as conn:
            (pid,) = conn.execute("SELECT pid FROM run WHERE id = ?", (run_id,)).fetchone()
        with unwritable(db):
            wait_until(lambda: not is_worker(pid, "train", run_id), 60, "the worker never gave up")
            assert run_status(inproc, run_id)["status"] == "running"  # nothing can be recorded yet
        ended = {}
        wait_until(lambda: ended.update(run_status(inproc, run_id)) or ended["status"] in TERMINAL, 30, "no end")
        assert ended["status"] == "failed", ended
        saved = int(ended["error"].rpartition(" ")[2].replace(",", ""))
        assert ended["error"] == f"the database could not be written for 3 seconds; the adapter was saved at " \
                                 f"iteration {saved:,}"
        assert (folder / f"{saved:07d}_adapters.safetensors").is_file()
        assert (folder / "adapters.safetensors").is_file()
