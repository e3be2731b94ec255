"""The checkpoint table of a run's page (templates/_checkpoints.html): its rows, the best checkpoint, and what
evaluations measured of each. The run page and the table's own partial show the same table."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from app.contract.policy import best_checkpoint
from app.evaluation.view import read_table_truth
from app.runs.store.checkpoints import table_rows
from app.runs.store.runs import checkpoints_of, first_val_loss
from app.tables import Run


def table_context(session: Session, run: Run, base_url: str, error: str | None = None) -> dict[str, Any]:
    """Everything the checkpoint table shows; `error` is the refusal of the action just tried, if any."""
    assert run.id is not None
    checkpoints = checkpoints_of(session, run.id)
    return {
        "run": run,
        "rows": table_rows(session, run, first_val_loss(session, run.id), base_url),
        "best": best_checkpoint(checkpoints),
        "checkpoint_error": error,
        "truth": read_table_truth(session, run.id, checkpoints),
    }
