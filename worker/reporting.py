"""Everything a training worker tells the database, written off the training thread.

The training loop only puts small tuples on a queue (never blocks on SQLite);
one writer thread commits them in short transactions and, after each commit,
reads the run's stop flag so a stop request reaches the loop within one report.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.checkpoints import set_deployment
from app.models import TERMINAL, Checkpoint, Run, RunStatus, TrainReport, ValReport, utcnow
from app.policy import best_checkpoint
from app.runconfig import EarlyStopping
from app.runs import checkpoints_of

Job = Callable[[Session], None]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ReportWriter:
    """A single writer thread for one run's reports."""

    engine: Engine
    run_id: int
    stop_event: threading.Event = field(default_factory=threading.Event)
    _queue: queue.Queue[Job | None] = field(default_factory=queue.Queue)
    _thread: threading.Thread | None = None
    _rule_json: str | None = None
    errors: list[str] = field(default_factory=list)
    early_stopping: EarlyStopping | None = None  # the live rule, refreshed at every commit

    def start(self) -> ReportWriter:
        self._thread = threading.Thread(target=self._loop, name="report-writer", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Flush everything queued, then stop the thread."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            jobs = [job]
            while job is not None and not self._queue.empty():  # batch what piled up
                job = self._queue.get()
                jobs.append(job)
            done = jobs[-1] is None
            work = [j for j in jobs if j is not None]
            if work:
                self._commit(work)
            if done:
                return

    def _commit(self, jobs: list[Job]) -> None:
        try:
            with Session(self.engine) as session:
                for job in jobs:
                    job(session)
                run = session.get(Run, self.run_id)
                if run is not None:
                    run.heartbeat_at = utcnow()
                    if run.stop_requested:
                        self.stop_event.set()
                    self._refresh_rule(run.early_stopping_json)
                    session.add(run)
                session.commit()
        except Exception as exc:  # a report lost is better than a training run lost
            self.errors.append(repr(exc))

    def _refresh_rule(self, rule_json: str | None) -> None:
        if rule_json != self._rule_json:
            self._rule_json = rule_json
            self.early_stopping = EarlyStopping.model_validate_json(rule_json) if rule_json else None

    # What the training side reports -------------------------------------------------

    def train_report(self, info: dict[str, Any]) -> None:
        row = TrainReport(
            run_id=self.run_id,
            iteration=int(info["iteration"]),
            train_loss=float(info["train_loss"]),
            learning_rate=float(info["learning_rate"]),
            iterations_per_second=float(info["iterations_per_second"]),
            tokens_per_second=float(info["tokens_per_second"]),
            trained_tokens=int(info["trained_tokens"]),
            peak_memory=float(info["peak_memory"]),
        )

        def job(session: Session) -> None:
            session.add(row)
            run = session.get(Run, self.run_id)
            if run is not None:
                run.iteration = max(run.iteration, row.iteration)

        self.submit(job)

    def val_report(self, iteration: int, val_loss: float, val_time: float, batches: int) -> None:
        row = ValReport(
            run_id=self.run_id, iteration=iteration, val_loss=val_loss, val_time=val_time, batches=batches
        )

        def job(session: Session) -> None:
            session.add(row)
            ckpt = session.exec(
                select(Checkpoint).where(Checkpoint.run_id == self.run_id, Checkpoint.iteration == iteration)
            ).first()
            if ckpt is not None:
                ckpt.val_loss = val_loss
                ckpt.val_full = batches == -1
                session.add(ckpt)

        self.submit(job)

    def checkpoint(self, iteration: int, path: Path) -> None:
        def job(session: Session) -> None:
            val = session.exec(
                select(ValReport).where(ValReport.run_id == self.run_id, ValReport.iteration == iteration)
            ).first()
            train = session.exec(
                select(TrainReport)
                .where(TrainReport.run_id == self.run_id, TrainReport.iteration <= iteration)
                .order_by(col(TrainReport.iteration).desc())
                .limit(1)
            ).first()
            session.add(
                Checkpoint(
                    run_id=self.run_id,
                    iteration=iteration,
                    filename=path.name,
                    size_bytes=path.stat().st_size,
                    sha256=file_sha256(path),
                    val_loss=val.val_loss if val else None,
                    val_full=val is not None and val.batches == -1,
                    train_loss=train.train_loss if train else None,
                    trained_tokens=train.trained_tokens if train else None,
                )
            )

        self.submit(job)

    def heartbeat(self) -> None:
        self.submit(lambda session: None)

    def mark_running(self, trainable_params: int, total_params: int, train_dtype: str) -> None:
        def job(session: Session) -> None:
            run = session.get(Run, self.run_id)
            if run is None:
                return
            if run.status == RunStatus.starting.value:  # a stop request keeps "stopping"
                run.status = RunStatus.running.value
            run.trainable_params = trainable_params
            run.total_params = total_params
            run.train_dtype = train_dtype
            session.add(run)

        self.submit(job)

    def set_status(self, status: RunStatus, **fields: Any) -> None:
        def job(session: Session) -> None:
            run = session.get(Run, self.run_id)
            if run is None:
                return
            run.status = status.value
            for key, value in fields.items():
                setattr(run, key, value)
            session.add(run)
            if status in TERMINAL and run.deploy_best_on_end:
                session.flush()
                best = best_checkpoint(checkpoints_of(session, self.run_id))
                if best is not None:
                    set_deployment(session, self.run_id, best)

        self.submit(job)
