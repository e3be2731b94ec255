"""Jobs (JSON, under /api): the list, one job, cancel, change, its progress stream."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.sse import ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.contract.kinds import KINDS
from app.contract.settings import Settings
from app.contract.status import RunStatus
from app.deps import SessionDep, SettingsDep, SupervisorDep
from app.jobs.jobs import LIVE, check_job, job_json, list_jobs
from app.routes.params import JobDep, bounded_query, problems, stream_problems
from app.sse import STREAM_DOC, EventStream, event_stream
from app.tables import Job

router = APIRouter(prefix="/api")
POLL_S = 0.5  # how often the event stream looks at the job


def _kind_filter(kind: str | None) -> str | None:
    if kind is not None and kind not in KINDS:
        raise HTTPException(422, detail=[{"loc": ["query", "kind"], "type": "value_error",
                                          "msg": f"unknown job kind {kind!r}; expected one of "
                                                 f"{', '.join(sorted(KINDS))}"}])
    return kind


def _status_filter(value: str | None) -> str | None:
    if value is not None and value not in RunStatus.__members__:
        raise HTTPException(422, detail=[{"loc": ["query", "status"], "type": "value_error",
                                          "msg": f"unknown status {value!r}; expected one of "
                                                 f"{', '.join(s.value for s in RunStatus)}"}])
    return value


@router.get("/jobs", tags=["jobs"], responses=problems(422))
def get_jobs(
    session: SessionDep,
    kind: Annotated[str | None, Query(description="only jobs of this kind, e.g. token_stats")] = None,
    run_id: int | None = bounded_query(None, "only jobs about this run"),
    job_status: Annotated[str | None, Query(alias="status", description="only jobs in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many, newest first")] = 100,
) -> list[dict[str, Any]]:
    """Jobs, newest first: kind, status, progress (done/total/unit), ETA, what they concern, result or error."""
    jobs = list_jobs(session, _kind_filter(kind), run_id, _status_filter(job_status), limit)
    return [job_json(job) for job in jobs]


@router.get("/jobs/{job_id}", tags=["jobs"], responses=problems(404, 422))
def get_job(job: JobDep) -> dict[str, Any]:
    """One job, checked for a dead worker (it is then `interrupted`)."""
    return job_json(job)


@router.post("/jobs/{job_id}/cancel", tags=["jobs"], status_code=status.HTTP_202_ACCEPTED,
             responses=problems(404, 409, 422))
def cancel_job(job: JobDep, session: SessionDep, supervisor: SupervisorDep) -> dict[str, Any]:
    """Cancel: a queued job is stopped at once; a working one is `stopping` and ends `stopped` shortly."""
    if not supervisor.cancel_job(session, job):
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job.id} has already ended ({job.status})")
    return job_json(job)


class JobChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow_while_training: bool = Field(
        description="Let a job that needs the model's memory start beside a training run (it may run short of "
                    "memory) instead of waiting for the run to finish.")


@router.patch("/jobs/{job_id}", tags=["jobs"], responses=problems(400, 404, 409, 422))
def patch_job(job: JobDep, body: JobChange, session: SessionDep, supervisor: SupervisorDep) -> dict[str, Any]:
    """Change a job that has not started: `allow_while_training` (it then starts as soon as the rule allows)."""
    if not supervisor.allow_while_training(session, job, body.allow_while_training):
        raise HTTPException(status.HTTP_409_CONFLICT,
                            detail=f"job {job.id} has already started ({job.status}): it can no longer wait or not")
    return job_json(job)


def _read(engine: Engine, settings: Settings, job_id: int) -> dict[str, Any] | None:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        return job_json(check_job(session, settings, job)) if job is not None else None


@router.get("/jobs/{job_id}/events", tags=["jobs"], response_class=EventStream,
            responses={**STREAM_DOC, **stream_problems(404, 422)})
async def job_events(
    request: Request, job: JobDep, settings: SettingsDep,
    max_s: Annotated[float | None, Query(gt=0, le=86_400, description="end the stream after so many seconds")]
    = None,
) -> EventStream:
    """`text/event-stream` of one job: `progress` (the job, as in GET /api/jobs/{id}) whenever its status,
    progress or waiting reason changes, then `end` (the job, with its result or error) once it has ended."""
    assert job.id is not None
    return event_stream(_job_events(request, settings, job.id, max_s))


async def _job_events(
    request: Request, settings: Settings, job_id: int, max_s: float | None,
) -> AsyncGenerator[ServerSentEvent, None]:
    engine: Engine = request.app.state.engine
    stopping: threading.Event | None = getattr(request.app.state, "stopping", None)
    deadline = time.monotonic() + max_s if max_s is not None else None
    last: tuple[Any, ...] | None = None
    while True:
        answer = await asyncio.to_thread(_read, engine, settings, job_id)
        if answer is None:  # deleted with its run
            return
        if answer["status"] not in LIVE:
            yield ServerSentEvent(event="end", data=answer, id=str(answer["progress"]["done"]))
            return
        seen = (answer["status"], answer["progress"]["done"], answer["progress"]["total"], answer["waiting_reason"])
        if seen != last:
            last = seen
            yield ServerSentEvent(event="progress", data=answer, id=str(answer["progress"]["done"]))
        if (stopping is not None and stopping.is_set()) or await request.is_disconnected() or (
                deadline is not None and time.monotonic() > deadline):
            return
        await asyncio.sleep(POLL_S)
