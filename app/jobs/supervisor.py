"""Spawn, stop and watch worker processes. The database is the only channel to them.

A worker runs in its own process session (it survives the app restarting).
A run whose worker is gone without having recorded an end is `interrupted`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.paths import run_dir
from app.settings import PROJECT_DIR, Settings
from app.tables import TERMINAL, Run, RunStatus, utcnow

ACTIVE = (RunStatus.starting.value, RunStatus.running.value, RunStatus.stopping.value)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_worker(pid: int, job: str, job_id: int) -> bool:
    """Whether pid is still the `python -m worker <job> ... <job_id>` process: not ended (a zombie), not a
    reused pid. Where there is no /proc, whether the pid is alive."""
    if not Path("/proc/self").exists():
        return pid_alive(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[:1] in (["Z"], ["X"]):  # ended, not yet reaped
        return False
    if args == [b""]:  # just spawned: exec has not yet laid out the new program's arguments
        return True
    return b"worker" in args and job.encode() in args and str(job_id).encode() in args


def is_worker_process(pid: int, run_id: int) -> bool:
    """Whether pid is still the training worker of run_id."""
    return is_worker(pid, "train", run_id)


def worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "LORABOARD_DATA_DIR": str(settings.data_dir),
            "LORABOARD_ADAPTERS_DIR": str(settings.adapters_dir),
            "LORABOARD_DB_PATH": str(settings.database_path),
            "LORABOARD_CACHE_DIR": str(settings.compiled_cache_dir),
            "LORABOARD_OPENBLAS": "1" if settings.openblas else "0",
            "LORABOARD_BLAS_THREADS": str(settings.blas_threads),
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    if settings.hf_offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def log_tail(path: str | None, lines: int = 20) -> str:
    if not path or not Path(path).exists():
        return ""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Supervisor:
    settings: Settings
    engine: Engine
    children: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spawn(self, session: Session, run: Run) -> None:
        assert run.id is not None
        folder = run_dir(self.settings, run.id)
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / "worker.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "worker", "train", "--run-id", str(run.id)],
                cwd=PROJECT_DIR,
                env=worker_env(self.settings),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children[run.id] = process
        run.pid = process.pid
        run.status = RunStatus.starting.value
        run.started_at = utcnow()
        run.heartbeat_at = utcnow()
        run.log_path = str(log_path)
        session.add(run)
        session.commit()

    def start_queued(self, session: Session) -> None:
        """Start queued runs, oldest first, while fewer than the limit are active."""
        active = len(session.exec(select(Run).where(col(Run.status).in_(ACTIVE))).all())
        free = self.settings.max_concurrent_runs - active
        if free <= 0:
            return
        queued = session.exec(
            select(Run).where(Run.status == RunStatus.queued.value).order_by(col(Run.id)).limit(free)
        ).all()
        for run in queued:
            self.spawn(session, run)

    def request_stop(self, session: Session, run: Run, keep_best: bool = False) -> None:
        """Ask the worker to save and end (database flag, then SIGTERM); a queued run just ends.

        keep_best: when the run has ended, its best checkpoint becomes the deployment one.
        """
        if run.is_terminal:
            return
        run.stop_requested = True
        run.deploy_best_on_end = run.deploy_best_on_end or keep_best
        if run.status == RunStatus.queued.value:
            run.status = RunStatus.stopped.value
            run.finished_at = utcnow()
            run.stop_reason = "stopped before it started"
        else:
            run.status = RunStatus.stopping.value
        session.add(run)
        session.commit()
        if run.pid is not None and run.id is not None and is_worker_process(run.pid, run.id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.pid, signal.SIGTERM)

    def reap(self) -> None:
        for run_id, process in list(self.children.items()):
            if process.poll() is not None:
                del self.children[run_id]

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
            run.status = RunStatus.interrupted.value
            run.finished_at = utcnow()
            run.error = "the worker process ended without reporting" + (
                f" (exit code {code})" if code is not None else ""
            )
            tail = log_tail(run.log_path)
            run.traceback = tail or None
            session.add(run)
            session.commit()

    def tick(self) -> None:
        with self.lock, Session(self.engine) as session:
            self.mark_interrupted(session)
            self.reap()
            self.start_queued(session)

    def shutdown(self) -> None:
        """Leave workers running (they survive the app); just forget the handles."""
        self.children.clear()
