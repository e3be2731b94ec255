"""The `playground` job kind as the pages show it: its result in one line and its page (app/jobs/views.py lists it;
the kind itself is declared in app/contract/kinds.py)."""

from __future__ import annotations

from sqlmodel import Session

from app.contract.kinds import PLAYGROUND
from app.jobs.job_view import JobView
from app.tables import Job

KIND = PLAYGROUND.name
UNIT = "prompts"


def result_summary(job: Job) -> str:
    result = job.result or {}
    count = int(result.get("generations", 0)) if isinstance(result, dict) else 0
    return f"answered {count:,} prompt{'' if count == 1 else 's'}"


def subject(_session: Session, _job: Job) -> tuple[str, str | None]:
    return "the playground", "/playground"


JOB_VIEW = JobView(PLAYGROUND, summary=result_summary, subject=subject)
