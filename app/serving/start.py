"""Starting a server, from the API or a page alike: checked and queued under the supervisor's lock (one live server
per checkpoint or model folder), then started at once when the capacity rule allows."""

from __future__ import annotations

from sqlmodel import Session

from app.contract.settings import Settings
from app.jobs.supervisor import Supervisor
from app.serving.requests import Target, start_serving
from app.tables import Job


def start(session: Session, settings: Settings, supervisor: Supervisor, target: Target) -> Job:
    """Check and queue under the supervisor's lock (one server per served thing), then start it if it may."""
    with supervisor.locked(session):
        job = start_serving(session, settings, target)
    supervisor.start_queued_now(session)
    session.refresh(job)
    return job
