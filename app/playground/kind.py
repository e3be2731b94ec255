"""The `playground` job kind: its parameters and its view (app/jobs/kinds.py registers it)."""

from __future__ import annotations

from sqlmodel import Session

from app.tables import Job

KIND = "playground"
UNIT = "prompts"


def result_summary(job: Job) -> str:
    result = job.result or {}
    count = int(result.get("generations", 0)) if isinstance(result, dict) else 0
    return f"answered {count:,} prompt{'' if count == 1 else 's'}"


def subject(_session: Session, _job: Job) -> tuple[str, str | None]:
    return "the playground", "/playground"
