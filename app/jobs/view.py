"""What a page shows of a job: its progress partial's item (templates/_job_progress.html)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from app.jobs.jobs import LIVE, progress_view
from app.jobs.kinds import describe
from app.tables import Job


def progress_item(session: Session, job: Job) -> dict[str, Any]:
    """What the progress partial shows of a job."""
    return {"job": job, "progress": progress_view(job), "info": describe(session, job), "live": job.status in LIVE}
