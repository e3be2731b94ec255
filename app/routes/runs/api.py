"""The JSON API of runs (API.md), under /api: create, list, read, change, delete and stop runs, their metrics and
chart marks, and the queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.catalog.hub import hub_model_problem
from app.contract.paths import data_roots
from app.contract.run_config import EarlyStopping, RunConfig
from app.datasets.registry import dataset_problem
from app.deps import SessionDep, SettingsDep, SupervisorDep
from app.routes.params import RunId, bounded_query, problems, run_or_404
from app.runs.cluster.checks import distributed_problems
from app.runs.duration.estimate import estimate_for_config
from app.runs.store.listing import (
    NAME_MAX,
    NOTES_MAX,
    ConfirmMissingError,
    RunGoneError,
    RunLiveError,
    clean_name,
    clean_notes,
    delete_run,
    update_run_text,
)
from app.runs.store.queue import NotQueuedError, QueueMove, move_in_queue
from app.runs.store.runs import (
    annotations_json,
    list_runs,
    metrics_json,
    queue_run,
    resume_problem,
    run_json,
    set_early_stopping,
)
from app.runs.store.summary import val_figures

router = APIRouter(prefix="/api", tags=["runs"])


def validate_config(payload: dict[str, Any], settings: SettingsDep, session: SessionDep) -> RunConfig:
    """RunConfig from a JSON body, resolved; a 422 naming every bad field otherwise."""
    try:
        config = RunConfig.model_validate(payload).resolved(settings)
    except ValidationError as exc:
        errors = [
            {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False)
        ]
        raise HTTPException(422, detail=errors) from None
    data_problem = dataset_problem(Path(config.data), config.mask_prompt, config.model_dump(), session,
                                   data_roots(settings))
    for key, problem in (("model", hub_model_problem(config.model, settings)), ("data", data_problem),
                         ("resume_from", resume_problem(session, settings, config))):
        if problem:
            raise HTTPException(422, detail=[{"loc": ["body", key], "msg": problem, "type": "value_error"}])
    spread = distributed_problems(  # ssh to the other hosts: before any row exists
        config, shared=[str(settings.database_path), str(settings.adapters_dir)])
    if spread:
        raise HTTPException(422, detail=[{"loc": ["body", *key.split(".")], "msg": msg, "type": "value_error"}
                                         for key, msg in spread.items()])
    return config


@router.post("/runs", status_code=status.HTTP_201_CREATED, responses=problems(400, 422))
def post_run(
    session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
    payload: dict[str, Any] = Body(default_factory=dict),
) -> dict[str, Any]:
    config = validate_config(payload, settings, session)
    estimate = estimate_for_config(session, settings, config)
    return run_json(session, queue_run(session, config, supervisor.tick, estimate))


@router.get("/runs")
def get_runs(session: SessionDep) -> list[dict[str, Any]]:
    runs = list_runs(session)
    vals = val_figures(session, [run.id for run in runs if run.id is not None])
    return [run_json(session, run, vals) for run in runs]


@router.get("/runs/{run_id}", responses=problems(404, 422))
def get_run(session: SessionDep, run_id: RunId) -> dict[str, Any]:
    return run_json(session, run_or_404(session, run_id))


class RunPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    early_stopping: EarlyStopping | None = Field(
        None, description="the new early-stopping rule (null: off); applied at the run's next evaluation"
    )
    name: str | None = Field(None, description=f"a new name for the run (1 to {NAME_MAX} characters)")
    notes: str | None = Field(None, description=f"the run's notes ('' clears them; at most {NOTES_MAX:,} characters)")

    @field_validator("name")
    @classmethod
    def _clean_name(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("name cannot be null")
        return clean_name(value)

    @field_validator("notes")
    @classmethod
    def _clean_notes(cls, value: str | None) -> str:
        return clean_notes(value or "")


@router.patch("/runs/{run_id}", responses=problems(400, 404, 409, 422))
def patch_run(session: SessionDep, run_id: RunId, patch: RunPatch) -> dict[str, Any]:
    run = run_or_404(session, run_id)
    fields = patch.model_fields_set
    if "early_stopping" in fields and run.is_terminal:  # checked before anything is written
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"run {run_id} has ended ({run.status})")
    if fields & {"name", "notes"}:
        update_run_text(session, run, patch.name if "name" in fields else None,
                        patch.notes if "notes" in fields else None)
    if "early_stopping" in fields:
        set_early_stopping(session, run, patch.early_stopping)
    return run_json(session, run)


@router.delete("/runs/{run_id}", responses=problems(400, 404, 409, 422))
def delete_run_api(
    session: SessionDep, settings: SettingsDep, run_id: RunId,
    confirm: str = Query("", description="'yes': the run's checkpoints, reports and folder go for good"),
) -> dict[str, Any]:
    """Delete a run that has ended, with its reports, checkpoints and adapters folder (409 while it is live)."""
    run = run_or_404(session, run_id)
    try:
        deleted = delete_run(session, settings, run, confirm)
    except RunLiveError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    except RunGoneError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    except ConfirmMissingError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    return {
        "deleted": deleted.run_id,
        "checkpoints": deleted.checkpoints,
        "reports": deleted.reports,
        "continued_by": deleted.continued_by,
        "leftover_folder": str(deleted.leftover) if deleted.leftover else None,
    }


@router.get("/runs/{run_id}/metrics", responses=problems(404, 422))
def get_metrics(
    session: SessionDep, run_id: RunId, after: int | None = bounded_query(None, "only iterations > after"),
    include_parent: bool = Query(False, description="a continued run: start with the earlier run's points"),
    start: int | None = bounded_query(None, "only iterations >= start"),
    end: int | None = bounded_query(None, "only iterations <= end"),
    max_points: int | None = Query(None, ge=3, le=100_000, description="LTTB-downsample each series to this many"),
) -> dict[str, Any]:
    run_or_404(session, run_id)
    return metrics_json(session, run_id, after, include_parent, start, end, max_points)


@router.get("/runs/{run_id}/annotations", responses=problems(404, 422))
def get_annotations(session: SessionDep, run_id: RunId) -> dict[str, Any]:
    """Chart marks: checkpoints, validation minimum, early-stop point, overfitting stretches."""
    return annotations_json(session, run_or_404(session, run_id))


@router.post("/runs/{run_id}/stop", status_code=status.HTTP_202_ACCEPTED, responses=problems(404, 422))
def stop_run(
    session: SessionDep, supervisor: SupervisorDep, run_id: RunId,
    keep_best: bool = Query(False, description="when the run has ended, mark its best checkpoint as deployment"),
) -> dict[str, Any]:
    run = run_or_404(session, run_id)
    supervisor.request_stop(session, run, keep_best=keep_best)
    session.expunge(run)  # read it afresh: it may have ended, or been deleted, meanwhile
    return run_json(session, run_or_404(session, run_id))


@router.post("/runs/queue/cancel")
def cancel_queue(session: SessionDep, supervisor: SupervisorDep) -> dict[str, Any]:
    """End every queued run as `stopped` before it starts (runs already training are left alone)."""
    cancelled = supervisor.cancel_queued(session)
    return {"cancelled": cancelled, "count": len(cancelled)}


class QueueMoveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    position: QueueMove = Field(description="where the run goes: the top or bottom of the queue, or one place up "
                                            "or down")


@router.post("/runs/{run_id}/queue", responses=problems(400, 404, 409, 422))
def move_queued_run(session: SessionDep, run_id: RunId, body: QueueMoveBody) -> dict[str, Any]:
    """Move a queued run in the queue (409 once it has started or ended); answers the new order of the queue."""
    run = run_or_404(session, run_id)
    try:
        order = move_in_queue(session, run, body.position)
    except NotQueuedError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    return {"queue": order}
