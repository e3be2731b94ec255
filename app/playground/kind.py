"""The `playground` job kind: its parameters and its view (app/jobs/kinds.py registers it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from app.tables import Job

KIND = "playground"
UNIT = "prompts"


class PlaygroundParams(BaseModel):
    """What the playground worker is given."""

    model_config = ConfigDict(extra="forbid")

    idle_s: float = Field(600.0, gt=0, description="Release the model after this many seconds without a prompt.")


def result_summary(job: Job) -> str:
    result = job.result or {}
    count = int(result.get("generations", 0)) if isinstance(result, dict) else 0
    return f"answered {count:,} prompt{'' if count == 1 else 's'}"


def subject(_session: Session, _job: Job) -> tuple[str, str | None]:
    return "the playground", "/playground"
