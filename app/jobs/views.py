"""The app's view of every job kind: one JobView per kind of the contract (app/contract/kinds.py), each built by
its domain module, listed here once; and what a page shows of one job (templates/_job_progress.html's item).

tests/test_jobs.py checks that every contract kind has exactly one view here.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from app.contract.settings import Settings
from app.contract.status import RunStatus
from app.datasets import demo_data, token_stats
from app.evaluation import results as evaluation
from app.jobs.job_view import JobView
from app.jobs.jobs import LIVE, progress_view
from app.models import gguf, smollm2
from app.models import requests as model_jobs
from app.playground import kind as playground
from app.serving import requests as serving
from app.tables import Job

VIEWS: tuple[JobView, ...] = (token_stats.JOB_VIEW, evaluation.JOB_VIEW, playground.JOB_VIEW, serving.JOB_VIEW,
                              model_jobs.FUSE_VIEW, model_jobs.QUANTIZE_VIEW, gguf.JOB_VIEW, demo_data.JOB_VIEW,
                              smollm2.JOB_VIEW)


def view_of(kind: str) -> JobView | None:
    """The view of a kind by its name; None for a kind this app does not know (a row of a newer version)."""
    return next((view for view in VIEWS if view.kind.name == kind), None)


def describe(session: Session, job: Job) -> dict[str, str | None]:
    """label, what it concerns (words and link) and the result's line, for the jobs page."""
    view = view_of(job.kind)
    if view is None:
        return {"label": job.kind, "subject": None, "link": None, "summary": ""}
    return view.describe(session, job)


def finish_completed(session: Session, job_ids: list[int] | None = None, *, settings: Settings) -> None:
    """Run each kind's completion step (JobView.on_completed) for these completed jobs, or for every completed
    job of a kind that has one (at start-up: jobs that completed while no app was watching)."""
    hooked = {view.kind.name: view.on_completed for view in VIEWS if view.on_completed is not None}
    query = select(Job).where(col(Job.kind).in_(hooked), Job.status == RunStatus.completed.value)
    if job_ids is not None:
        query = query.where(col(Job.id).in_(job_ids))
    for job in session.exec(query.order_by(col(Job.id))).all():
        hooked[job.kind](session, settings, job)


def is_live(job: Job) -> bool:
    """Whether pages keep polling the job: it has not ended, or it completed and the app's completion step for
    its kind has not run yet (its result is not shown before that)."""
    if job.status in LIVE:
        return True
    view = view_of(job.kind)
    return job.status == RunStatus.completed.value and view is not None and view.finishing is not None \
        and view.finishing(job)


def progress_item(session: Session, job: Job) -> dict[str, Any]:
    """What the progress partial shows of a job."""
    return {"job": job, "progress": progress_view(job), "info": describe(session, job), "live": is_live(job)}
