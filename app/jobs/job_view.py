"""What the pages show of a kind of job: its label, the result in one line and what the job concerns (a link).

Each app domain builds the JobView of its kinds beside the code that creates their jobs (app/datasets/token_stats.py,
app/evaluation/results.py, app/playground/kind.py, app/serving/requests.py, app/models/requests.py,
app/models/gguf.py); app/jobs/views.py lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlmodel import Session

from app.contract.kinds import JobKind
from app.contract.settings import Settings
from app.tables import Job


def run_subject(_session: Session, job: Job) -> tuple[str, str | None]:
    """A job about a run (or one of its checkpoints): the run's page."""
    if job.run_id is None:
        return "", None
    what = f"run {job.run_id}" + (f", checkpoint {job.iteration:,}" if job.iteration is not None else "")
    return what, f"/runs/{job.run_id}"


@dataclass(frozen=True)
class JobView:
    """A contract kind as the pages show it."""

    kind: JobKind
    summary: Callable[[Job], str]  # a completed job's result in one line
    subject: Callable[[Session, Job], tuple[str, str | None]]  # (words, link) of what it concerns
    # what the app does once a job of this kind has completed (the supervisor calls it; it must be idempotent)
    on_completed: Callable[[Session, Settings, Job], None] | None = None
    # a completed job whose on_completed has not run yet: pages keep polling it as live until it has
    finishing: Callable[[Job], bool] | None = None

    def describe(self, session: Session, job: Job) -> dict[str, str | None]:
        """label, what the job concerns (words and link) and the result's line, for the jobs page and the cards."""
        words, link = self.subject(session, job)
        if not words and job.run_id is not None:
            words, link = run_subject(session, job)
        summary = self.summary(job) if job.status == "completed" else ""
        return {"label": self.kind.label, "subject": words or None, "link": link, "summary": summary}
