"""The deployment marker set for a run that another stop ended: "Stop and keep best" asked too late for the worker."""

from __future__ import annotations

from sqlmodel import Session, col, select

from app.contract.policy import best_checkpoint
from app.tables import Checkpoint, Run, RunStatus


def deploy_best_once_stopped(session: Session, run: Run) -> bool:
    """A stopped run with no deployment checkpoint gets its best one marked (the caller commits). Whether one was.

    The worker marks it when the keep-best request is recorded before the run ends; a second stop that asked for
    it while the first was ending finds the run stopped and marks it here."""
    if run.id is None or run.status != RunStatus.stopped.value:
        return False
    checkpoints = session.exec(select(Checkpoint).where(col(Checkpoint.run_id) == run.id)).all()
    best = best_checkpoint(checkpoints)
    if best is None or any(c.is_deployment for c in checkpoints):
        return False
    best.is_deployment = True
    session.add(best)
    return True
