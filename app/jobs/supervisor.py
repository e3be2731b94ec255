"""Spawn, stop and watch worker processes: training runs and jobs. The database is the only channel to them.

A worker runs in its own process session (it survives the app restarting). Every tick marks runs and
jobs whose worker is gone without having recorded an end `interrupted`, then starts what is queued,
oldest first, under one capacity rule (app/jobs/jobs.waiting_reason): a queued job that must wait
says why.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.contract.db_writes import WriteFailure, gone_worker_end
from app.contract.distributed import Distributed
from app.contract.kinds import is_resident, needs_model_memory
from app.contract.paths import run_dir
from app.contract.pids import is_job_process, is_worker, pid_alive
from app.contract.settings import Settings
from app.contract.status import ACTIVE
from app.jobs.jobs import (
    WORKING,
    Candidate,
    Holder,
    as_utc,
    blocker,
    end_dead_job,
    heartbeat_age_s,
    holder_ref,
    job_is_dead,
    playground_idle,
    request_cancel,
    set_allow_while_training,
    to_release_for,
    waits_for,
)
from app.jobs.process import WorkerProcess, launch_args, log_tail, spawn_worker, worker_env
from app.runs.store.deployment import deploy_best_once_stopped
from app.runs.store.queue import cancel_queued, queued_runs
from app.tables import TERMINAL, Job, Run, RunStatus, utcnow

__all__ = ["Supervisor", "is_worker", "is_worker_process", "jobs_dir", "log_tail", "pid_alive",
           "worker_env"]

PROBE_EVERY_S = 5.0  # while workers write, the supervisor checks it can write too (check_writable)


def is_worker_process(pid: int, run_id: int) -> bool:
    """Whether pid is still the training worker of run_id."""
    return is_worker(pid, "train", run_id)


def jobs_dir(settings: Settings) -> Path:
    """Where job workers' logs go."""
    return settings.database_path.parent / "jobs"


RELEASED_FOR_IT = ": it was idle, so it is being released for this run"  # said until the run starts


def record_wait(session: Session, row: Run | Job, reason: str | None, waiting_for: str | None) -> None:
    """A queued run's or job's reason to wait and what it waits for, written only when they changed."""
    if (reason, waiting_for) != (row.waiting_reason, row.waiting_for):
        row.waiting_reason, row.waiting_for = reason, waiting_for
        session.add(row)
        session.commit()


def commit_or_abandon(session: Session, process: WorkerProcess, children: dict[int, WorkerProcess],
                      key: int) -> None:
    """Record a worker's start; when the database refuses, end the worker at once (it has done nothing yet) and
    raise: its run or job is still queued, and a later tick starts it again (never twice)."""
    try:
        session.commit()
    except BaseException:
        children.pop(key, None)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its own session (spawn_worker): its ranks too
        process.wait()
        raise


@dataclass
class Supervisor:
    settings: Settings
    engine: Engine
    children: dict[int, WorkerProcess] = field(default_factory=dict)
    job_children: dict[int, WorkerProcess] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    write_failure: WriteFailure | None = None  # the last refused write, until one works again (the pages' banner)
    probed_at: float = 0.0  # monotonic time of check_writable's last write
    writable_again_at: datetime | None = None  # when the last recorded write failure ended
    on_jobs_ended: Callable[[Session, list[int]], None] | None = None  # the app's step for jobs that just ended
    working_job_ids: set[int] = field(default_factory=set)  # jobs started or working at the last tick

    def spawn(self, session: Session, run: Run) -> None:
        assert run.id is not None
        folder = run_dir(self.settings, run.id)
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / "worker.log"
        launch = None
        spec = run.config.get("distributed")
        if spec:  # several processes: mlx.launch starts them (worker/distributed.py)
            group = Distributed.model_validate(spec)
            launch = launch_args(group, group.hosts or ["127.0.0.1"], worker_env(self.settings), sys.executable)
        process = spawn_worker(["train", "--run-id", str(run.id)], self.settings, log_path, launch)
        self.children[run.id] = process
        run.pid = process.pid
        run.status = RunStatus.starting.value
        run.waiting_reason = run.waiting_for = None
        run.started_at = utcnow()
        run.heartbeat_at = utcnow()
        run.log_path = str(log_path)
        session.add(run)
        commit_or_abandon(session, process, self.children, run.id)

    def spawn_job(self, session: Session, job: Job) -> None:
        """Start `python -m worker job --job-id N` in its own session; the worker sets it running."""
        assert job.id is not None
        folder = jobs_dir(self.settings)
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / f"job-{job.id}.log"
        process = spawn_worker(["job", "--job-id", str(job.id)], self.settings, log_path)
        self.job_children[job.id] = process
        self.working_job_ids.add(job.id)
        job.pid = process.pid
        job.status = RunStatus.starting.value
        job.waiting_reason = job.waiting_for = None
        job.started_at = utcnow()
        job.heartbeat_at = utcnow()
        job.log_path = str(log_path)
        session.add(job)
        commit_or_abandon(session, process, self.job_children, job.id)

    def holders(self, session: Session) -> list[Holder]:
        """The active runs and jobs, oldest first: what a queued one may have to wait for."""
        runs = session.exec(select(Run).where(col(Run.status).in_(ACTIVE)).order_by(col(Run.id))).all()
        jobs = session.exec(select(Job).where(col(Job.status).in_(WORKING)).order_by(col(Job.id))).all()
        now = utcnow()
        return [Holder("run", run.id or 0, run.status, memory=True) for run in runs] + [
            Holder(job.kind, job.id or 0, job.status, memory=needs_model_memory(job.kind),
                   shares=job.allow_while_training, resident=is_resident(job.kind),
                   **playground_idle(session, job, self.settings.playground_idle_s, now))
            for job in jobs
        ]

    def start_queued(self, session: Session) -> None:
        """Start queued runs and jobs, oldest first, as far as the capacity rule lets them; a job that must
        wait is told why. The queue is read before what holds the memory: a row committed with its holder in one
        transaction (a queued job and the run it must wait for) is never seen without that holder."""
        runs = queued_runs(session)  # in queue order (app/runs/store/queue.py)
        jobs = session.exec(select(Job).where(Job.status == RunStatus.queued.value)).all()
        active = self.holders(session)
        queue: list[tuple[datetime, Run | Job]] = sorted(
            [(as_utc(run.created_at), run) for run in runs] + [(as_utc(job.created_at), job) for job in jobs],
            key=lambda pair: (pair[0], isinstance(pair[1], Job), pair[1].id or 0),
        )
        in_queue_order = iter(runs)  # runs keep their turns among the jobs, and take them in queue order
        queue = [(at, next(in_queue_order) if isinstance(item, Run) else item) for at, item in queue]
        for _, item in queue:
            if isinstance(item, Run):
                self.start_or_wait(session, item, active)
                continue
            memory = needs_model_memory(item.kind)
            resident = is_resident(item.kind)
            holder = blocker(Candidate(item.kind, memory, item.allow_while_training, resident), active,
                             self.settings.max_concurrent_runs)
            if holder is None:
                self.spawn_job(session, item)
                active.append(Holder(item.kind, item.id or 0, item.status, memory, item.allow_while_training,
                                     resident))
            else:
                record_wait(session, item, waits_for(holder), holder_ref(holder))

    def start_or_wait(self, session: Session, run: Run, active: list[Holder]) -> None:
        """Start a queued run, or record what it waits for: an idle playground that alone holds it back is
        released for it (the reason says so); active gains the run, or the released playground as stopping."""
        candidate = Candidate("run", True)
        limit = self.settings.max_concurrent_runs
        released = to_release_for(candidate, active, limit)
        for holder in released:
            job = session.get(Job, holder.id)
            if job is not None and request_cancel(session, job):
                active[active.index(holder)] = replace(holder, status=RunStatus.stopping.value, idle_s=None,
                                                       release_in_s=None)
        holder = blocker(candidate, active, limit)
        if holder is None:
            self.spawn(session, run)
            active.append(Holder("run", run.id or 0, run.status, memory=True))
            return
        kept = run.waiting_for == holder_ref(holder) and (run.waiting_reason or "").endswith(RELEASED_FOR_IT)
        reason = waits_for(holder) + (RELEASED_FOR_IT if released or kept else "")
        record_wait(session, run, reason, holder_ref(holder))

    @contextlib.contextmanager
    def locked(self, session: Session | None) -> Iterator[None]:
        """The lock, taken only once the caller's session holds no pooled connection (its transaction is
        committed first). The holder may need a connection from the same pool: a request that waited here
        holding one would, with enough of them at once, leave it none (each waits for the other until the
        pool's timeout)."""
        if session is not None:
            session.commit()
        with self.lock:
            yield

    def cancel_queued(self, session: Session, run_ids: list[int] | None = None) -> list[int]:
        """End queued runs (all, or those of run_ids) before they start; never one being started right now."""
        with self.locked(session):
            return cancel_queued(session, run_ids)

    def allow_while_training(self, session: Session, job: Job, allow: bool) -> bool:
        """Set the user's override on a queued job and start it if it may now; False: it has started."""
        with self.locked(session):
            session.refresh(job)
            if not set_allow_while_training(session, job, allow):
                return False
            self.start_queued(session)
            session.refresh(job)
            return True

    def start_queued_now(self, caller: Session | None) -> None:
        """Start what may start without waiting for the next tick (a cheap job is asked for by a page).

        caller: the request's session, committed before the lock is waited for (see `locked`)."""
        with self.locked(caller), Session(self.engine) as session:
            self.start_queued(session)

    def request_stop(self, session: Session, run: Run, keep_best: bool = False) -> None:
        """Ask the worker to save and end (database flag, then SIGTERM); a queued run just ends.

        keep_best: when the run has ended, its best checkpoint becomes the deployment one.
        """
        if run.is_terminal:
            return
        # one statement that only touches the row in the state it was read in: a worker that recorded its end
        # (or a supervisor that started the queued run) since then is never overwritten
        was = run.status
        values: dict[str, object] = {"stop_requested": True, "deploy_best_on_end": run.deploy_best_on_end or keep_best}
        if was == RunStatus.queued.value:
            values |= {"status": RunStatus.stopped.value, "finished_at": utcnow(),
                       "stop_reason": "stopped before it started"}
        else:
            values["status"] = RunStatus.stopping.value
        result = session.exec(  # type: ignore[call-overload]
            update(Run).where(col(Run.id) == run.id, col(Run.status) == was).values(**values).returning(Run.id))
        changed = result.first() is not None
        session.commit()
        session.refresh(run)
        if not changed and run.is_terminal:  # it ended meanwhile: a keep-best came too late for its worker
            if keep_best and deploy_best_once_stopped(session, run):
                session.commit()
            return
        if not changed:  # it moved on meanwhile (started, or stopping): ask again in its new state
            self.request_stop(session, run, keep_best)
            return
        if run.pid is not None and run.id is not None and is_worker_process(run.pid, run.id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.pid, signal.SIGTERM)

    def reap(self) -> None:
        for children in (self.children, self.job_children):
            for key, process in list(children.items()):
                if process.poll() is not None:
                    del children[key]

    def worker_gone(self, run: Run) -> bool:
        assert run.id is not None
        child = self.children.get(run.id)
        if child is not None:
            return child.poll() is not None
        if run.pid is None:
            return True
        stale = run.heartbeat_at is None or (
            (utcnow() - run.heartbeat_at).total_seconds() > self.settings.heartbeat_timeout_s
        )
        return not pid_alive(run.pid) or (stale and not is_worker_process(run.pid, run.id))

    def mark_interrupted(self, session: Session) -> None:
        """A run whose worker vanished without recording an end is interrupted."""
        for run in session.exec(select(Run).where(col(Run.status).in_(ACTIVE))).all():
            if not self.worker_gone(run):
                continue
            session.refresh(run)  # the worker may have written its end just now
            if RunStatus(run.status) in TERMINAL:
                continue
            code = self.children[run.id].returncode if run.id in self.children else None
            tail = log_tail(run.log_path)
            status, run.error = gone_worker_end(code, tail)  # failed: it gave up on an unwritable database
            run.status = status.value
            run.finished_at = utcnow()
            run.traceback = tail or None
            session.add(run)
            session.commit()

    def mark_dead_jobs(self, session: Session) -> None:
        """A job whose worker vanished (or went silent past the heartbeat timeout) is interrupted; one that
        was being cancelled is stopped."""
        for job in session.exec(select(Job).where(col(Job.status).in_(WORKING))).all():
            assert job.id is not None
            child = self.job_children.get(job.id)
            code = child.poll() if child is not None else None
            alive = code is None and job.pid is not None and is_job_process(job.pid, job.id)
            silent_s = heartbeat_age_s(job, utcnow())
            if silent_s is not None and self.writable_again_at is not None:  # no worker could write before then
                silent_s = min(silent_s, (utcnow() - self.writable_again_at).total_seconds())
            if job_is_dead(job.status, alive, silent_s, self.settings.heartbeat_timeout_s):
                end_dead_job(session, job, alive, code)

    def finish_ended_jobs(self, session: Session) -> None:
        """Hand the jobs that ended since the last tick (whatever their end) to `on_jobs_ended`."""
        working = {job_id for job_id in session.exec(select(Job.id).where(col(Job.status).in_(WORKING))).all()
                   if job_id is not None}
        ended, self.working_job_ids = sorted(self.working_job_ids - working), working
        if ended and self.on_jobs_ended is not None:
            self.on_jobs_ended(session, ended)

    def cancel_job(self, session: Session, job: Job) -> bool:
        """Cancel under the supervisor's lock (a tick may be starting it). False: it had already ended."""
        with self.locked(session):
            session.refresh(job)
            return request_cancel(session, job)

    def check_writable(self, session: Session) -> None:
        """Write to the database (its header's user_version, set to what it is) while a write failure is
        recorded, or every PROBE_EVERY_S while workers write: a refused write raises, one that works clears
        `write_failure`. The supervisor may otherwise write nothing for a long time."""
        if self.write_failure is None:
            now = time.monotonic()
            if now - self.probed_at < PROBE_EVERY_S:
                return
            self.probed_at = now
            if not self.holders(session):
                return
        connection = session.connection()
        version = connection.exec_driver_sql("PRAGMA user_version").scalar_one()
        connection.exec_driver_sql(f"PRAGMA user_version = {int(version)}")
        session.commit()
        if self.write_failure is not None:
            self.write_failure, self.writable_again_at = None, utcnow()

    def tick(self) -> None:
        """Mark what ended, start what may start. Raises what the database raised (app/main._watch retries)."""
        with self.lock, Session(self.engine) as session:
            self.check_writable(session)
            self.mark_interrupted(session)
            self.mark_dead_jobs(session)
            self.finish_ended_jobs(session)
            self.reap()
            self.start_queued(session)

    def shutdown(self) -> None:
        """Leave workers running (they survive the app); just forget the handles."""
        self.children.clear()
        self.job_children.clear()
