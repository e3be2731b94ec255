"""Path and query parameters shared by the routers, the rows they name (or a 404), and the error responses the API
documents.

Every integer that reaches the database is bounded to SQLite's 64-bit range: a larger one is
answered 422 (it names the parameter and the bound) instead of failing inside the query.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Query, status
from pydantic import BaseModel, Field
from sqlmodel import Session

from app.deps import SessionDep, SettingsDep
from app.jobs.jobs import check_job
from app.runs.store.checkpoints import find_checkpoint
from app.tables import Checkpoint, Dataset, Job, PromptSet, Run

MAX_ID = 2**63 - 1  # SQLite's largest integer
MIN_INT = -(2**63)

RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="the run's id")]
DatasetId = Annotated[int, Path(ge=1, le=MAX_ID, description="the dataset's id")]
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="the job's id")]
Iteration = Annotated[int, Path(ge=0, le=MAX_ID, description="the checkpoint's iteration")]
ModelName = Annotated[str, Path(max_length=100, description="the model's folder name under the models folder")]
ServedModelName = Annotated[str, Path(min_length=1, max_length=128, description="a model folder's name under the "
                                                                                "models folder")]
PromptSetId = Annotated[int, Path(ge=1, le=MAX_ID, description="the prompt set's id")]
FolderId = Annotated[int, Path(ge=1, le=MAX_ID, description="the allowed folder's id")]


def run_or_404(session: Session, run_id: int) -> Run:
    """The run, or a 404 that names the id."""
    run = session.get(Run, run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no run with id {run_id}")
    return run


def bounded_query(default: Any = None, description: str = "") -> Any:
    """A query integer within SQLite's range."""
    return Query(default, ge=MIN_INT, le=MAX_ID, description=description)


class Problem(BaseModel):
    """An error: `detail` is one sentence, or a list of {loc, msg, type} naming each bad field."""

    detail: str | list[dict[str, Any]] | dict[str, Any] = Field(
        description="what was wrong: a sentence, or one entry per bad field (loc, msg, type)"
    )


_DESCRIPTIONS: dict[int, str] = {
    400: "the request cannot be read (a body that is not JSON, a missing confirmation)",
    404: "no such run, checkpoint, dataset or job",
    409: "the resource is not in a state that allows this (e.g. a run that is still live, or has ended)",
    410: "the resource's file is gone from disk",
    413: "the upload is larger than allowed",
    415: "the body's content type is not the one expected",
    422: "a parameter or body field is invalid: each problem names its field",
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of an operation: these error codes, each with the Problem body."""
    return {code: {"model": Problem, "description": _DESCRIPTIONS[code]} for code in codes}


def stream_problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` of an event stream: its errors are answered as JSON before any event is sent."""
    json_body = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    return {code: {**answer, "content": json_body} for code, answer in problems(*codes).items()}


def content(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    """A 200 answered with a body that is not JSON (a zip, a YAML file)."""
    return {200: {"description": description, "content": {media_type: {}}}}


def run_checkpoint_or_404(session: Session, run_id: int, iteration: int) -> tuple[Run, Checkpoint]:
    """The run and its checkpoint at this iteration, or a 404 that names what is missing."""
    run = run_or_404(session, run_id)
    ckpt = find_checkpoint(session, run_id, iteration)
    if ckpt is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"run {run_id} has no checkpoint at iteration "
                                                              f"{iteration:,}")
    return run, ckpt


def existing_job(job_id: JobId, session: SessionDep, settings: SettingsDep) -> Job:
    """The job (checked for a dead worker), or 404."""
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job with id {job_id}")
    return check_job(session, settings, job)


JobDep = Annotated[Job, Depends(existing_job)]


def dataset_or_404(session: Session, dataset_id: int) -> Dataset:
    """The registered dataset, or a 404 that names the id."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no dataset with id {dataset_id}")
    return dataset


def prompt_set_or_404(session: Session, prompt_set_id: int) -> PromptSet:
    """The prompt set, or a 404 that names the id."""
    prompt_set = session.get(PromptSet, prompt_set_id)
    if prompt_set is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no prompt set with id {prompt_set_id}")
    return prompt_set
