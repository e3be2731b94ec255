"""`python -m worker job --job-id N`: run one job of any kind (the `job` table, see app/tables.py).

The worker loads its row, sets it running with its pid, validates the row's params into its kind's model
(a mismatch fails the job with one readable line) and calls the kind's function with a JobContext, whose
`params` is that model. A thread writes progress (done/total/unit) and the heartbeat every half second, and
reads the row's status: a cancel (status `stopping`, or SIGTERM) sets ctx.stop, which the kind's
function checks between units of work. The job ends completed (with its result), stopped (with a
partial result only when the kind gives one that is complete in itself), or failed (one readable
line and the traceback).

A kind is declared once, in app/contract/kinds.py: its params model, the module whose `run(ctx) -> dict` does
the work, and whether it computes with MLX (then OpenBLAS is routed first, as for training).
"""

from __future__ import annotations

import importlib
import json
import os
import sqlite3
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from app.contract.kinds import KINDS, JobKind
from app.contract.settings import Settings
from app.contract.status import TERMINAL, RunStatus
from worker.reporting import close_quietly, connect, now_text, on_stop_signal, write_until

REPORT_EVERY_S = 0.5
Params = TypeVar("Params", bound=BaseModel)


class JobInputError(Exception):
    """A problem with what the job was given, whose message alone says what is wrong (file, line, field)."""


class JobStopped(Exception):
    """The job was cancelled; `partial` is a result complete in itself, or None."""

    def __init__(self, partial: dict[str, Any] | None = None) -> None:
        super().__init__("stopped on request")
        self.partial = partial


@dataclass
class JobContext(Generic[Params]):
    """What a kind's function gets: its parameters (the kind's params model), a progress counter and the stop
    request."""

    job_id: int
    params: Params
    settings: Settings
    done: int = 0
    total: int = 0
    unit: str = ""
    detail: str = ""  # where the work is, in words (shown under the progress bar)
    stop: threading.Event = field(default_factory=threading.Event)

    def set_total(self, total: int, unit: str | None = None) -> None:
        self.total = total
        if unit is not None:
            self.unit = unit

    def advance(self, count: int = 1) -> None:
        self.done += count

    def check_stop(self, partial: dict[str, Any] | None = None) -> None:
        """End the job here (status stopped) when a cancel was requested."""
        if self.stop.is_set():
            raise JobStopped(partial)


def one_line(exc: BaseException, limit: int = 400) -> str:
    """The error as one readable line (a message over several lines is joined; a very long one is cut)."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    if isinstance(exc, JobInputError | FileNotFoundError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}".rstrip(": ")


@contextmanager
def reporting(db_path: Path, ctx: JobContext) -> Iterator[None]:
    """Writes done/total/unit and the heartbeat every REPORT_EVERY_S until the block ends; sees a cancel."""
    finished = threading.Event()

    def loop() -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                ending = finished.wait(REPORT_EVERY_S)
                try:  # a database that refuses writes costs reports (the next one says it all), never the job
                    conn = conn or connect(db_path)
                    conn.execute("UPDATE job SET done = ?, total = ?, unit = COALESCE(NULLIF(?, ''), unit),"
                                 " detail = NULLIF(?, ''), heartbeat_at = ? WHERE id = ?",
                                 (ctx.done, ctx.total, ctx.unit, ctx.detail, now_text(), ctx.job_id))
                    row = conn.execute("SELECT status FROM job WHERE id = ?", (ctx.job_id,)).fetchone()
                    if row is not None and row[0] == RunStatus.stopping.value:
                        ctx.stop.set()
                except sqlite3.Error:
                    conn = close_quietly(conn)  # the next try on a fresh one: one opened read-only stays so
                if ending:
                    return
        finally:
            close_quietly(conn)

    thread = threading.Thread(target=loop, name="job-report", daemon=True)
    thread.start()
    try:
        yield
    finally:
        finished.set()
        thread.join()


def end(conn: sqlite3.Connection, job_id: int, status: RunStatus, ctx: JobContext, *, result_json: str | None = None,
        error: str | None = None, traceback_text: str | None = None) -> None:
    """Record the job's end (status, progress, result or error) in one statement; while the database refuses
    writes, tried again for up to Settings.db_unwritable_limit_s (the job's work is not lost to a short spell)."""
    values = (status.value, ctx.done, ctx.total, result_json, error, traceback_text, now_text(), now_text(), job_id)
    write_until(ctx.settings.database_path, lambda c: c.execute(
        "UPDATE job SET status = ?, done = ?, total = ?, result_json = ?, error = ?, traceback = ?,"
        " finished_at = ?, heartbeat_at = ?, waiting_reason = NULL WHERE id = ?", values),
        ctx.settings.db_unwritable_limit_s, conn)


def kind_named(kind: str) -> JobKind:
    """The contract's kind of this name; JobInputError naming the known ones when there is none."""
    known = KINDS.get(kind)
    if known is None:
        raise JobInputError(f"this worker has no job kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    return known


def load_function(kind: JobKind, settings: Settings) -> Callable[[JobContext], dict[str, Any]]:
    """The kind's `run` function, its module imported (OpenBLAS routed first when it computes)."""
    if kind.computes:
        from worker.blas import route_blas

        route_blas(settings.compiled_cache_dir, settings.openblas, settings.blas_threads)
    function: Callable[[JobContext], dict[str, Any]] = importlib.import_module(kind.module).run
    return function


def check_params(kind: JobKind, params: dict[str, Any]) -> BaseModel:
    """The job's params validated into its kind's model: a mismatch is one readable line (JobInputError)."""
    try:
        return kind.params.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}"
                             for e in exc.errors(include_url=False))
        raise JobInputError(f"this {kind.name} job's parameters are not valid: {problems}") from None


def take(conn: sqlite3.Connection, job_id: int) -> bool:
    """Set the job running with this pid; False when it was cancelled before the worker took it."""
    cursor = conn.execute(
        "UPDATE job SET status = 'running', pid = ?, heartbeat_at = ?, started_at = COALESCE(started_at, ?)"
        " WHERE id = ? AND status IN ('queued', 'starting')", (os.getpid(), now_text(), now_text(), job_id))
    return cursor.rowcount == 1


def run_job(settings: Settings, job_id: int) -> int:
    db_path = settings.database_path
    if not db_path.exists():
        sys.stderr.write(f"worker: no database at {db_path}\n")
        return 2
    conn = connect(db_path)
    try:
        row = conn.execute("SELECT kind, params_json, status FROM job WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            sys.stderr.write(f"worker: no job {job_id} in {db_path}\n")
            return 2
        kind, params_json, status = row
        ctx: JobContext[Any] = JobContext(job_id, None, settings)  # params: the kind's model, read once taken
        if RunStatus(status) in TERMINAL:
            sys.stderr.write(f"worker: job {job_id} has already ended ({status})\n")
            return 0
        if not take(conn, job_id):  # cancelled while starting (or already ended): nothing to do
            now_status = conn.execute("SELECT status FROM job WHERE id = ?", (job_id,)).fetchone()
            if now_status is not None and now_status[0] == RunStatus.stopping.value:
                end(conn, job_id, RunStatus.stopped, ctx)
            return 0
        on_stop_signal(ctx.stop)
        try:
            with reporting(db_path, ctx):
                job_kind = kind_named(kind)
                ctx.params = check_params(job_kind, json.loads(params_json))
                result = load_function(job_kind, settings)(ctx)
        except JobStopped as stopped:
            partial = json.dumps(stopped.partial) if stopped.partial is not None else None
            end(conn, job_id, RunStatus.stopped, ctx, result_json=partial)
            return 0
        except BaseException as exc:  # every failure is recorded, readable, with its traceback
            end(conn, job_id, RunStatus.failed, ctx, error=one_line(exc),
                traceback_text=traceback.format_exc())
            sys.stderr.write(traceback.format_exc())
            return 1
        end(conn, job_id, RunStatus.completed, ctx, result_json=json.dumps(result))
        return 0
    finally:
        conn.close()
