"""Everything a training worker tells the database, written off the training thread.

The training loop only puts small jobs on a queue (never blocks on SQLite); one
writer thread commits them in short transactions and, after each commit, reads the
run's stop flag and early-stopping rule, so a request reaches the loop within one
report. The worker talks to SQLite through the standard library alone (the tables
are the app's, see app/tables.py): the ORM would cost the training process ~26 MB
and its writer thread more time under the GIL.

A report is never dropped: while the database cannot be written (read-only, disk
full, locked), the writer keeps what it could not write, in order, retries with a
growing back-off on a fresh connection, and writes it all in one transaction once it
can. When that has lasted `give_up_after_s` (Settings.db_unwritable_limit_s), it sets
`gave_up` and the stop event: the training loop ends as on a stop request, saving
its adapter, and the worker exits with app.contract.db_writes.EXIT_DB_UNWRITABLE.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.contract.db_writes import Outage, failure_key, failure_kind, write_failure
from app.contract.paths import file_sha256
from app.contract.policy import best_checkpoint
from app.contract.run_config import EarlyStopping
from app.contract.sqlite import BUSY_TIMEOUT_S, apply_pragmas
from app.contract.status import TERMINAL, RunStatus

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
RUN_FIELD_ORDER = ("backend", "finished_at", "stop_reason", "iteration", "error", "traceback", "test_loss",
                   "train_positions", "train_seconds", "positions_per_s")
RUN_FIELDS = frozenset(RUN_FIELD_ORDER)


def db_time(value: datetime) -> str:
    """A UTC datetime as the app's tables store it."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def now_text() -> str:
    return db_time(datetime.now(UTC))


def connect(db_path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), set up as the app's (app/contract/sqlite.py)."""
    conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    apply_pragmas(conn)
    return conn


def close_quietly(conn: sqlite3.Connection | None) -> None:
    """Close a connection that may already be broken; always None (the caller's connection is gone)."""
    if conn is not None:
        with contextlib.suppress(sqlite3.Error):
            conn.close()


def write_until(db_path: Path, write: Callable[[sqlite3.Connection], None], limit_s: float,
                conn: sqlite3.Connection | None = None) -> None:
    """Make one write (on `conn`, then on fresh connections), trying again with a growing back-off while the
    database refuses writes, for up to limit_s; then the refusal is raised. Any other error is raised at once."""
    outage = Outage(first_delay_s=0.5, max_delay_s=5.0)
    while True:
        fresh = None
        try:
            target = conn if conn is not None else connect(db_path)
            fresh = None if target is conn else target
            write(target)
            return
        except sqlite3.Error as exc:
            failure = write_failure(db_path, exc)
            if failure is None:
                raise
            now = time.monotonic()
            if outage.failed(failure_key(exc), now):
                sys.stderr.write(f"worker: {failure.sentence()}; trying again for {limit_s:g} s\n")
            if outage.lasted_s(now) >= limit_s:
                raise
            conn = None  # a connection opened while the file was read-only stays read-only
            time.sleep(outage.delay_s)
        finally:
            close_quietly(fresh)


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
    give_up_after_s: float = 600.0  # unwritable this long: stop training (Settings.db_unwritable_limit_s)
    gave_up: threading.Event = field(default_factory=threading.Event)
    outage: Outage = field(default_factory=lambda: Outage(first_delay_s=0.5, max_delay_s=5.0))
    unwritten: list[Job] = field(default_factory=list)  # in order; written before anything newer

    def start(self) -> ReportWriter:
        if self.silent:
            return self
        self._thread = threading.Thread(target=self._loop, name="report-writer", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Flush everything queued, then stop the thread. While the database refuses writes this waits until it
        takes them or the writer gives up (`gave_up`: what is still in `unwritten` is not written)."""
        if self.silent:
            return
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()

    def submit(self, job: Job) -> None:
        if not self.silent:
            self._queue.put(job)

    def _loop(self) -> None:
        conn: sqlite3.Connection | None = None
        closing = False
        try:
            while True:
                try:  # while writes fail, the next try comes after the back-off, with or without new work
                    jobs = [self._queue.get(timeout=self.outage.delay_s if self.unwritten else None)]
                except queue.Empty:
                    jobs = []
                while not self._queue.empty():  # batch what piled up
                    jobs.append(self._queue.get())
                closing = closing or None in jobs
                self.unwritten.extend(j for j in jobs if j is not None)
                if self.unwritten:
                    conn = self._commit(conn)
                if closing and (not self.unwritten or self.gave_up.is_set()):
                    return
        finally:
            if conn is not None:
                conn.close()

    def _commit(self, conn: sqlite3.Connection | None) -> sqlite3.Connection | None:
        """Write everything unwritten in one transaction. While the database refuses writes, keep it all for the
        next try, on a fresh connection (one opened while the file was read-only stays read-only). A job that
        fails for another reason is dropped alone (a report lost is better than a training run lost).
        Returns the connection to reuse."""
        try:
            conn = conn or connect(self.db_path)
            row = self._transaction(conn, self.unwritten)
        except Exception as exc:
            conn = close_quietly(conn)
            if failure_kind(exc) is not None:
                self._failed(exc)
                return None
            return self._one_by_one()
        if self.outage.succeeded():
            sys.stderr.write(f"worker: the database is written again; the {len(self.unwritten)} writes kept"
                             " meanwhile are in\n")
        self.unwritten.clear()
        self._after_commit(row)
        return conn

    def _one_by_one(self) -> sqlite3.Connection | None:
        """One of the unwritten jobs failed by itself: write them one at a time, in order, dropping that one."""
        conn: sqlite3.Connection | None = None
        while self.unwritten:
            try:
                conn = conn or connect(self.db_path)
                row = self._transaction(conn, self.unwritten[:1])
            except Exception as exc:
                conn = close_quietly(conn)
                if failure_kind(exc) is not None:
                    self._failed(exc)
                    return None
                self.errors.append(repr(exc))
                sys.stderr.write(f"worker: a report could not be written and is dropped: {exc!r}\n")
            else:
                self._after_commit(row)
            self.unwritten.pop(0)
        return conn

    def _transaction(self, conn: sqlite3.Connection, jobs: list[Job]) -> tuple[Any, ...] | None:
        """The jobs, the heartbeat, then the run's stop flag and early-stopping rule, in one transaction."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                job(conn)
            conn.execute("UPDATE run SET heartbeat_at = ? WHERE id = ?", (now_text(), self.run_id))
            row = conn.execute(
                "SELECT stop_requested, early_stopping_json FROM run WHERE id = ?", (self.run_id,)
            ).fetchone()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return tuple(row) if row is not None else None

    def _failed(self, exc: Exception) -> None:
        """Note a refused write: logged once while the same failure lasts; past give_up_after_s, give up."""
        failure = write_failure(self.db_path, exc)
        text = failure.sentence() if failure is not None else f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if self.outage.failed(failure_key(exc), now):
            self.errors.append(text)
            sys.stderr.write(f"worker: {text}; {len(self.unwritten)} writes kept, retrying\n"
                             + "".join(traceback.format_exception(exc)))
        if self.outage.lasted_s(now) >= self.give_up_after_s and not self.gave_up.is_set():
            self.gave_up.set()
            self.stop_event.set()  # the training loop ends here, saving its adapter (worker/__main__.run_train)

    def _after_commit(self, row: tuple[Any, ...] | None) -> None:
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
        share = info.get("useful_token_share")

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO trainreport (run_id, iteration, train_loss, learning_rate, iterations_per_second,"
                " tokens_per_second, trained_tokens, peak_memory, recorded_at, rss_bytes, footprint_bytes,"
                " swap_used_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            conn.execute(
                "UPDATE run SET iteration = MAX(iteration, ?),"
                " useful_token_share = COALESCE(?, useful_token_share) WHERE id = ?",
                (values[1], share, self.run_id),
            )

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
                " test_loss = COALESCE(?, test_loss), train_positions = COALESCE(?, train_positions),"
                " train_seconds = COALESCE(?, train_seconds), positions_per_s = COALESCE(?, positions_per_s)"
                " WHERE id = ?",
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
