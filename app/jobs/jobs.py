"""Jobs: every worker task that is not a training run (token statistics, evaluation, fuse, serve...).

A job is a row of the `job` table (app/tables.py) run by `python -m worker job --job-id N`. Its life:
queued → starting (spawned by the supervisor) → running (the worker took it) → completed, failed or, on
cancel, stopping → stopped. A worker that vanishes without writing its end leaves the job `interrupted`.

The pure rules come first (the dead-job rule, the ETA, what a cancel does, who may start while others
hold the model's memory); the database side after them. The supervisor (app/jobs/supervisor.py) is the
one place that spawns jobs and marks dead ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from sqlmodel import Session, col, func, select

from app.contract.kinds import is_resident
from app.contract.pids import is_job_process
from app.contract.policy import eta_seconds, format_duration, rough_duration
from app.contract.settings import Settings
from app.contract.status import TERMINAL, RunStatus
from app.jobs.process import log_tail
from app.tables import Generation, Job, utcnow

WORKING = (RunStatus.starting.value, RunStatus.running.value, RunStatus.stopping.value)  # a worker process exists
LIVE = (RunStatus.queued.value, *WORKING)


class JobRefused(ValueError):
    """A request for a job that cannot start, refused before a job row exists: the HTTP status (404, 409, 410,
    422), the field it concerns (`loc`, as FastAPI names fields) and one sentence saying what is wrong."""

    def __init__(self, status: int, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.status = status
        self.loc = loc

    def detail(self) -> list[dict[str, Any]] | str:
        """The HTTPException detail: a 422 in FastAPI's validation shape, any other status as its sentence."""
        if self.status == 422:
            return [{"loc": list(self.loc), "msg": str(self), "type": "value_error"}]
        return str(self)


# Pure rules ------------------------------------------------------------------------------------------


def job_is_dead(status: str, process_alive: bool, heartbeat_age_s: float | None, timeout_s: float) -> bool:
    """A job with a worker (starting, running, stopping) whose process is gone, or that has been silent longer
    than the heartbeat timeout. A queued job has no worker yet and is never dead."""
    if status not in WORKING:
        return False
    return not process_alive or (heartbeat_age_s is not None and heartbeat_age_s > timeout_s)


def dead_end(status: str, process_alive: bool) -> tuple[str, str | None]:
    """(final status, one-line error) of a dead job: a job being cancelled is simply stopped (its worker may
    have ended by the SIGTERM before it could write so), any other is interrupted."""
    if status == RunStatus.stopping.value:
        return RunStatus.stopped.value, None
    if process_alive:
        return RunStatus.interrupted.value, "the worker stopped reporting"
    return RunStatus.interrupted.value, "the worker process ended without reporting"


def job_eta_s(status: str, done: int, total: int, elapsed_s: float, resident: bool = False) -> float | None:
    """Seconds left at the average pace so far, while the job runs; None before there is a pace or after it, and
    for a resident job (a server, the playground): it runs until it is released."""
    if status not in WORKING or total <= 0 or resident:
        return None
    return eta_seconds(done, total, elapsed_s)


@dataclass(frozen=True)
class CancelStep:
    """What a cancel request does to a job in a given status."""

    status: str  # the status it gets now
    finished: bool  # it has ended (a queued job just ends)
    signal: bool  # its worker gets SIGTERM (it then ends `stopped` by itself)


def cancel_step(status: str) -> CancelStep | None:
    """queued → stopped at once; starting/running → stopping + SIGTERM; stopping → SIGTERM again; None: ended."""
    if RunStatus(status) in TERMINAL:
        return None
    if status == RunStatus.queued.value:
        return CancelStep(RunStatus.stopped.value, finished=True, signal=False)
    return CancelStep(RunStatus.stopping.value, finished=False, signal=True)


@dataclass(frozen=True)
class Holder:
    """Something active that may hold the model's memory: a training run, or a job."""

    what: str  # "run" or a job kind
    id: int
    status: str
    memory: bool  # a training run, or a job of a kind that loads the model
    shares: bool = False  # a memory job the user let run beside training (allow_while_training)
    resident: bool = False  # a job that stays loaded until released (playground, serve)
    idle_s: float | None = None  # a playground with no prompt to answer: for how long (None: busy, or another kind)
    release_in_s: float | None = None  # ... and in how long it releases the model by itself

    @property
    def label(self) -> str:
        if self.what == "run":
            doing = "stopping" if self.status == RunStatus.stopping.value else "training"
            return f"run {self.id} ({doing})"
        if self.what == "playground":
            if self.idle_s is None:
                return f"the playground (job {self.id})"
            left = f", releases itself in {rough_duration(self.release_in_s)}" if self.release_in_s is not None else ""
            return f"the playground (job {self.id}, idle {rough_duration(self.idle_s)}{left})"
        if self.what == "serve":
            return f"the server (job {self.id})"
        return f"job {self.id} ({self.what.replace('_', ' ')})"

    @property
    def idle_playground(self) -> bool:
        return self.what == "playground" and self.idle_s is not None


@dataclass(frozen=True)
class Candidate:
    """A queued run or job asking to start."""

    what: str  # "run" or a job kind
    needs_memory: bool  # runs always; a job when its kind loads the model
    allow_while_training: bool = False
    resident: bool = False  # stays loaded until released (playground, serve)


def blocker(candidate: Candidate, active: Sequence[Holder], max_concurrent_runs: int) -> Holder | None:
    """What the candidate must wait for (the first of them); None: it may start now.

    One rule for runs and jobs. A job that does not need the model's memory (token statistics) starts at
    once. A run waits while max_concurrent_runs runs are active, or while a memory job runs that did not
    ask to share. A memory job waits while a run trains or another memory job runs, unless the user let it
    run beside them (allow_while_training). A resident job (the playground, a server: loaded until released)
    makes runs wait, and waits for runs, but jobs neither wait for it nor make it wait.
    """
    runs = [h for h in active if h.what == "run"]
    memory_jobs = [h for h in active if h.what != "run" and h.memory]
    if candidate.what == "run":
        if len(runs) >= max_concurrent_runs:
            return runs[0]
        exclusive = [h for h in memory_jobs if not h.shares]
        return exclusive[0] if exclusive else None
    if not candidate.needs_memory or candidate.allow_while_training:
        return None
    blocking = runs + [h for h in memory_jobs if not h.resident and not candidate.resident]
    return blocking[0] if blocking else None


def waits_for(holder: Holder) -> str:
    """What a queued run or job waiting for `holder` says: "waits for run 3 (training) to finish"."""
    if not holder.resident:
        return f"waits for {holder.label} to finish"
    return f"waits for {holder.label} to be {'stopped' if holder.what == 'serve' else 'released'}"


def waiting_reason(candidate: Candidate, active: Sequence[Holder], max_concurrent_runs: int) -> str | None:
    """Why the candidate must stay queued, in words for the page (the blocker's); None: it may start now."""
    holder = blocker(candidate, active, max_concurrent_runs)
    return waits_for(holder) if holder is not None else None


def holder_ref(holder: Holder) -> str:
    """What a queued run or job waits for, as its `waiting_for` column keeps it: "run 3", "playground 12"."""
    return f"{holder.what} {holder.id}"


FREE_LABELS = {"playground": "Release the playground", "serve": "Stop the server"}


def free_action(waiting_for: str | None) -> dict[str, str] | None:
    """The one click that frees what a queued run or job waits for (`waiting_for`, as holder_ref writes it):
    {url (a POST), label, confirm}; None when it names nothing."""
    what, _, number = (waiting_for or "").partition(" ")
    if not what or not number.isdigit():
        return None
    if what == "run":
        return {"url": f"/runs/{number}/stop", "label": f"Stop run {number}",
                "confirm": f"Stop run {number}? It saves its adapter at the next step and ends."}
    label = FREE_LABELS.get(what, f"Cancel job {number}")
    return {"url": f"/jobs/{number}/cancel", "label": label,
            "confirm": f"{label} (job {number})? What waits for it starts once it has ended."}


def to_release_for(candidate: Candidate, active: Sequence[Holder], max_concurrent_runs: int) -> list[Holder]:
    """The idle playgrounds a queued run releases as it asks to start: only when nothing else holds it back
    (a prompt being answered, a server, another job or run keeps them all)."""
    if candidate.what != "run" or blocker(candidate, active, max_concurrent_runs) is None:
        return []
    others = [h for h in active if not h.idle_playground]
    if blocker(candidate, others, max_concurrent_runs) is not None:
        return []
    return [h for h in active if h.idle_playground and not h.shares]


def lookup_key(*parts: str) -> str:
    """A job's key from the inputs that make it the same work (e.g. data folder, model, files' signature)."""
    return json.dumps(list(parts), ensure_ascii=False)


def as_utc(moment: datetime) -> datetime:
    """A stored time as aware UTC (SQLite keeps no zone: a naive time is UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def elapsed_s(job: Job, now: datetime) -> float:
    if job.started_at is None:
        return 0.0
    return max(0.0, (as_utc(job.finished_at or now) - as_utc(job.started_at)).total_seconds())


# Database ----------------------------------------------------------------------------------------------


def create_job(
    session: Session, kind: str, params: BaseModel, *, key: str = "", unit: str = "", run_id: int | None = None,
    iteration: int | None = None, allow_while_training: bool = False,
) -> Job:
    """A new queued job (the supervisor starts it: at once, or when the memory it needs is free)."""
    job = Job(kind=kind, key=key, params_json=params.model_dump_json(), unit=unit, run_id=run_id,
              iteration=iteration, allow_while_training=allow_while_training)
    session.add(job)
    session.commit()
    session.refresh(job)
    return job


def latest_job(session: Session, settings: Settings, kind: str, key: str) -> Job | None:
    """The newest job of this kind and key, checked for a dead worker."""
    job = session.exec(
        select(Job).where(Job.kind == kind, Job.key == key).order_by(col(Job.id).desc()).limit(1)
    ).first()
    return check_job(session, settings, job) if job is not None else None


def list_jobs(
    session: Session, kind: str | None = None, run_id: int | None = None, status: str | None = None,
    limit: int = 100,
) -> list[Job]:
    query = select(Job)
    if kind is not None:
        query = query.where(Job.kind == kind)
    if run_id is not None:
        query = query.where(Job.run_id == run_id)
    if status is not None:
        query = query.where(Job.status == status)
    return list(session.exec(query.order_by(col(Job.id).desc()).limit(limit)).all())


def heartbeat_age_s(job: Job, now: datetime) -> float | None:
    return (now - as_utc(job.heartbeat_at)).total_seconds() if job.heartbeat_at else None


def end_dead_job(session: Session, job: Job, process_alive: bool, exit_code: int | None = None) -> Job:
    """Record the end of a job whose worker is gone (or silent: then it is sent SIGTERM)."""
    session.refresh(job)  # the worker may have written its end just now
    if job.status not in WORKING:
        return job
    if process_alive and job.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(job.pid, signal.SIGTERM)
    job.status, job.error = dead_end(job.status, process_alive)
    if job.error is not None and exit_code is not None:
        job.error += f" (exit code {exit_code})"
    job.finished_at = utcnow()
    job.waiting_reason = None
    job.traceback = log_tail(job.log_path) or None
    session.add(job)
    session.commit()
    return job


def check_job(session: Session, settings: Settings, job: Job) -> Job:
    """Apply the dead-job rule now (pages and the API see a dead worker at once, not at the next tick)."""
    if job.status not in WORKING or job.id is None:
        return job
    alive = job.pid is not None and is_job_process(job.pid, job.id)
    if not job_is_dead(job.status, alive, heartbeat_age_s(job, utcnow()), settings.heartbeat_timeout_s):
        return job
    return end_dead_job(session, job, alive)


def request_cancel(session: Session, job: Job) -> bool:
    """Cancel a job: a queued one is stopped at once; a working one is asked (stopping + SIGTERM) and ends
    `stopped` by itself. False: it had already ended."""
    step = cancel_step(job.status)
    if step is None:
        return False
    job.status = step.status
    job.waiting_reason = job.waiting_for = None
    if step.finished:
        job.finished_at = utcnow()
    session.add(job)
    session.commit()
    if step.signal and job.pid is not None and job.id is not None and is_job_process(job.pid, job.id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(job.pid, signal.SIGTERM)
    return True


def playground_idle(session: Session, job: Job, default_idle_s: float, now: datetime) -> dict[str, float | None]:
    """A running playground job with no prompt to answer: {idle_s, release_in_s} (idle since it started or
    last answered; it releases itself after its `idle_s`); both None while it answers, loads or for other kinds."""
    if job.kind != "playground" or job.status != RunStatus.running.value or job.started_at is None:
        return {"idle_s": None, "release_in_s": None}
    busy = session.exec(select(Generation.id).where(
        col(Generation.status).in_((RunStatus.queued.value, RunStatus.running.value))).limit(1)).first()
    if busy is not None:
        return {"idle_s": None, "release_in_s": None}
    last = session.exec(select(func.max(Generation.finished_at)).where(Generation.job_id == job.id)).first()
    since = max(as_utc(job.started_at), as_utc(last)) if last is not None else as_utc(job.started_at)
    idle_s = max(0.0, (as_utc(now) - since).total_seconds())
    limit = float(job.params.get("idle_s", default_idle_s))
    return {"idle_s": idle_s, "release_in_s": max(0.0, limit - idle_s)}


def set_allow_while_training(session: Session, job: Job, allow: bool) -> bool:
    """The user's override for a job that has not started; False once it has."""
    if job.status != RunStatus.queued.value:
        return False
    job.allow_while_training = allow
    session.add(job)
    session.commit()
    return True


# What pages and the API show ------------------------------------------------------------------------------


def progress_view(job: Job, now: datetime | None = None) -> dict[str, Any]:
    """done/total/unit with percent, elapsed and ETA (seconds and words); a resident job's elapsed is its uptime."""
    now = now or utcnow()
    elapsed = elapsed_s(job, now)
    resident = is_resident(job.kind)
    eta = job_eta_s(job.status, job.done, job.total, elapsed, resident)
    return {"done": job.done, "total": job.total, "unit": job.unit, "resident": resident,
            "percent": min(100.0, 100.0 * job.done / job.total) if job.total else 0.0,
            "elapsed_s": elapsed, "eta_s": eta, "elapsed": format_duration(elapsed if job.started_at else None),
            "eta": format_duration(eta)}


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None


def job_json(job: Job) -> dict[str, Any]:
    progress = progress_view(job)
    return {
        "id": job.id, "kind": job.kind, "status": job.status,
        "progress": {"done": job.done, "total": job.total, "unit": job.unit}, "eta_s": progress["eta_s"],
        "run_id": job.run_id, "iteration": job.iteration, "params": job.params, "result": job.result,
        "error": job.error, "detail": job.detail, "waiting_reason": job.waiting_reason,
        "waiting_for": job.waiting_for,
        "allow_while_training": job.allow_while_training,
        "created_at": _iso(job.created_at), "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at),
    }
