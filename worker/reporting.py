"""Everything a training worker tells the database, written off the training thread.

The training loop only puts small jobs on a queue (never blocks on SQLite); one
writer thread commits them in short transactions and, after each commit, reads the
run's stop flag and early-stopping rule, so a request reaches the loop within one
report. The worker talks to SQLite through the standard library alone (the tables
are the app's, see app/tables.py): the ORM would cost the training process ~26 MB
and its writer thread more time under the GIL.
"""

from __future__ import annotations

import queue
import signal
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.paths import file_sha256
from app.runs.config import EarlyStopping
from app.runs.policy import best_checkpoint
from app.status import TERMINAL, RunStatus

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def on_stop_signal(event: threading.Event) -> None:
    """SIGTERM and SIGINT set `event` (the work ends cleanly at its next check); then the signals, held since
    the worker was spawned (app/jobs/process.spawn_worker), are let through: one that came while the worker
    was still starting up is delivered now, to this handler."""

    def handler(_signum: int, _frame: Any) -> None:
        event.set()

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

Job = Callable[[sqlite3.Connection], None]
# Columns of the run table that set_status may write, in the order of its UPDATE.
RUN_FIELD_ORDER = ("backend", "finished_at", "stop_reason", "iteration", "error", "traceback", "test_loss")
RUN_FIELDS = frozenset(RUN_FIELD_ORDER)


def db_time(value: datetime) -> str:
    """A UTC datetime as the app's tables store it."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def now_text() -> str:
    return db_time(datetime.now(UTC))


def connect(db_path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, with a busy timeout."""
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@dataclass
class CheckpointRow:
    id: int
    iteration: int
    val_loss: float | None


@dataclass
class ReportWriter:
    """A single writer thread for one run's reports."""

    db_path: Path
    run_id: int
    stop_event: threading.Event = field(default_factory=threading.Event)
    _queue: queue.Queue[Job | None] = field(default_factory=queue.Queue)
    _thread: threading.Thread | None = None
    _rule_json: str | None = None
    errors: list[str] = field(default_factory=list)
    early_stopping: EarlyStopping | None = None  # the live rule, refreshed at every commit
    silent: bool = False  # a rank other than 0 of a run of several processes: it writes nothing

    def start(self) -> ReportWriter:
        if self.silent:
            return self
        self._thread = threading.Thread(target=self._loop, name="report-writer", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Flush everything queued, then stop the thread."""
        if self.silent:
            return
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()

    def submit(self, job: Job) -> None:
        if not self.silent:
            self._queue.put(job)

    def _loop(self) -> None:
        conn = connect(self.db_path)
        try:
            while True:
                job = self._queue.get()
                jobs = [job]
                while job is not None and not self._queue.empty():  # batch what piled up
                    job = self._queue.get()
                    jobs.append(job)
                work = [j for j in jobs if j is not None]
                if work:
                    self._commit(conn, work)
                if jobs[-1] is None:
                    return
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, jobs: list[Job]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                job(conn)
            conn.execute("UPDATE run SET heartbeat_at = ? WHERE id = ?", (now_text(), self.run_id))
            row = conn.execute(
                "SELECT stop_requested, early_stopping_json FROM run WHERE id = ?", (self.run_id,)
            ).fetchone()
            conn.execute("COMMIT")
        except Exception as exc:  # a report lost is better than a training run lost
            self.errors.append(repr(exc))
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return
        if row is not None:
            if row[0]:
                self.stop_event.set()
            self._refresh_rule(row[1])

    def _refresh_rule(self, rule_json: str | None) -> None:
        if rule_json != self._rule_json:
            self._rule_json = rule_json
            self.early_stopping = EarlyStopping.model_validate_json(rule_json) if rule_json else None

    # What the training side reports -------------------------------------------------

    def train_report(self, info: dict[str, Any]) -> None:
        values = (
            self.run_id, int(info["iteration"]), float(info["train_loss"]), float(info["learning_rate"]),
            float(info["iterations_per_second"]), float(info["tokens_per_second"]), int(info["trained_tokens"]),
            float(info["peak_memory"]), now_text(),
            info.get("rss_bytes"), info.get("footprint_bytes"), info.get("swap_used_bytes"),
        )

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO trainreport (run_id, iteration, train_loss, learning_rate, iterations_per_second,"
                " tokens_per_second, trained_tokens, peak_memory, recorded_at, rss_bytes, footprint_bytes,"
                " swap_used_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            conn.execute("UPDATE run SET iteration = MAX(iteration, ?) WHERE id = ?", (values[1], self.run_id))

        self.submit(job)

    def val_report(self, iteration: int, val_loss: float, val_time: float, batches: int) -> None:
        recorded = now_text()

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO valreport (run_id, iteration, val_loss, val_time, batches, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (self.run_id, iteration, val_loss, val_time, batches, recorded),
            )
            conn.execute(
                "UPDATE checkpoint SET val_loss = ?, val_full = ? WHERE run_id = ? AND iteration = ?",
                (val_loss, batches == -1, self.run_id, iteration),
            )

        self.submit(job)

    def checkpoint(self, iteration: int, path: Path) -> None:
        created = now_text()

        def job(conn: sqlite3.Connection) -> None:
            val = conn.execute(
                "SELECT val_loss, batches FROM valreport WHERE run_id = ? AND iteration = ? LIMIT 1",
                (self.run_id, iteration),
            ).fetchone()
            train = conn.execute(
                "SELECT train_loss, trained_tokens FROM trainreport WHERE run_id = ? AND iteration <= ?"
                " ORDER BY iteration DESC LIMIT 1",
                (self.run_id, iteration),
            ).fetchone()
            conn.execute(
                "INSERT INTO checkpoint (run_id, iteration, filename, size_bytes, sha256, val_loss, val_full,"
                " train_loss, trained_tokens, is_deployment, note, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, '', ?)",
                (self.run_id, iteration, path.name, path.stat().st_size, file_sha256(path),
                 val[0] if val else None, bool(val) and val[1] == -1,
                 train[0] if train else None, train[1] if train else None, created),
            )

        self.submit(job)

    def heartbeat(self) -> None:
        self.submit(lambda conn: None)

    def mark_running(self, trainable_params: int, total_params: int, train_dtype: str) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(  # a stop request meanwhile keeps "stopping"
                "UPDATE run SET status = CASE WHEN status = ? THEN ? ELSE status END,"
                " trainable_params = ?, total_params = ?, train_dtype = ? WHERE id = ?",
                (RunStatus.starting.value, RunStatus.running.value, trainable_params, total_params, train_dtype,
                 self.run_id),
            )

        self.submit(job)

    def set_status(self, status: RunStatus, **fields: Any) -> None:
        """Set the status and any of RUN_FIELDS (a field left out or None keeps its value)."""
        unknown = set(fields) - RUN_FIELDS
        if unknown:
            raise ValueError(f"set_status cannot write {sorted(unknown)}")
        values = [db_time(v) if isinstance(v, datetime) else v for v in (fields.get(f) for f in RUN_FIELD_ORDER)]

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE run SET status = ?, backend = COALESCE(?, backend), finished_at = COALESCE(?, finished_at),"
                " stop_reason = COALESCE(?, stop_reason), iteration = COALESCE(?, iteration),"
                " error = COALESCE(?, error), traceback = COALESCE(?, traceback),"
                " test_loss = COALESCE(?, test_loss) WHERE id = ?",
                (status.value, *values, self.run_id),
            )
            if status in TERMINAL:
                self._deploy_best_if_asked(conn)

        self.submit(job)

    def _deploy_best_if_asked(self, conn: sqlite3.Connection) -> None:
        """"Stop and keep best": the best checkpoint becomes the deployment one."""
        row = conn.execute("SELECT deploy_best_on_end FROM run WHERE id = ?", (self.run_id,)).fetchone()
        if row is None or not row[0]:
            return
        rows = conn.execute(
            "SELECT id, iteration, val_loss FROM checkpoint WHERE run_id = ? ORDER BY iteration", (self.run_id,)
        ).fetchall()
        best = best_checkpoint([CheckpointRow(*r) for r in rows])
        if best is not None:
            conn.execute(
                "UPDATE checkpoint SET is_deployment = (id = ?) WHERE run_id = ?", (best.id, self.run_id)
            )
