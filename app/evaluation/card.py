"""The run page's evaluate card: the form (or the live evaluation's progress), the refusal, the task table."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from app.contract.settings import Settings
from app.evaluation.results import measurements, shown_split
from app.evaluation.view import read_last_job, read_live_job, read_splits, task_table, token_note
from app.jobs.jobs import LIVE, check_job
from app.jobs.views import progress_item
from app.runs.store.runs import checkpoints_of
from app.tables import Run

DEFAULT_FORM: dict[str, Any] = {"checkpoints": "all", "chosen": [], "include_base": True, "split": "test",
                                "batches": "-1", "task": False, "max_examples": "100", "max_tokens": "128"}


def card_context(session: Session, settings: Settings, run: Run, error: str | None = None,
                 values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The evaluate card: the form (or the live job's progress), the refusal, the task table."""
    assert run.id is not None
    live = read_live_job(session, run.id)
    if live is not None:
        live = check_job(session, settings, live)
    last = live or read_last_job(session, run.id)
    measured = measurements(session, run.id)
    splits = read_splits(str(run.config.get("data", "")))
    form = {**DEFAULT_FORM, **(values or {})}
    if form["split"] not in splits and splits:
        form["split"] = splits[0]
    return {
        "run": run, "evaluation_error": error, "form": form, "splits": splits,
        "iterations": [c.iteration for c in checkpoints_of(session, run.id)],
        "token_note": token_note(bool(run.config.get("mask_prompt"))),
        "job_item": progress_item(session, live) if live is not None and live.status in LIVE else None,
        "last_job": last, "task": task_table(measured, shown_split(measured)),
    }
