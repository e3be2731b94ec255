"""Evaluations of a run's checkpoints (JSON): start one, read the figures, read the generated examples.

`POST /api/runs/{id}/evaluations` → 201 {"job_id"}; `GET /api/runs/{id}/evaluations` → one row per checkpoint and
split (iteration 0 is the base model); `GET /api/runs/{id}/evaluations/examples` → the worst or best answers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status

from app.deps import SessionDep, SettingsDep, SupervisorDep
from app.evaluation.requests import EvaluationRefused, EvaluationRequest, start_evaluation
from app.evaluation.results import examples, measurements
from app.routes.params import MAX_ID, RunId, bounded_query, problems, run_or_404

router = APIRouter(prefix="/api", tags=["evaluations"])




@router.post("/runs/{run_id}/evaluations", status_code=201, responses=problems(400, 404, 422))
def create_evaluation(
    run_id: RunId, body: EvaluationRequest, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
) -> dict[str, int]:
    """Queue an evaluation job: loss and perplexity on the split for each checkpoint (and the base model), and
    with `task` the scored greedy answers. Refused (422, nothing created) when it cannot run."""
    run = run_or_404(session, run_id)
    try:
        job = start_evaluation(session, settings, run, body)
    except EvaluationRefused as exc:
        raise HTTPException(422, detail=exc.detail()) from None
    supervisor.start_queued_now(session)
    assert job.id is not None
    return {"job_id": job.id}


@router.get("/runs/{run_id}/evaluations", responses=problems(404, 422))
def list_evaluations(
    run_id: RunId, session: SessionDep,
    split: Annotated[Literal["test", "valid", "train"] | None, Query(description="only this split")] = None,
    job_id: int | None = bounded_query(None, "only what this job measured"),
) -> list[dict[str, Any]]:
    """One row per checkpoint and split, iteration 0 being the base model: the newest loss, perplexity and token
    count, and the newest task result (null where the task was not run)."""
    run_or_404(session, run_id)
    return [m.as_json() for m in measurements(session, run_id, split, job_id)]


@router.get("/runs/{run_id}/evaluations/examples", responses=problems(404, 422))
def list_examples(
    run_id: RunId, session: SessionDep,
    iteration: Annotated[int, Query(ge=0, le=MAX_ID, description="the checkpoint (0: the base model)")],
    order: Annotated[Literal["worst", "best"], Query(description="lowest scores first, or highest")] = "worst",
    limit: Annotated[int, Query(ge=1, le=500, description="at most this many examples")] = 20,
    split: Annotated[Literal["test", "valid", "train"] | None, Query(description="only this split")] = None,
) -> dict[str, Any]:
    """The newest task run's answers at this checkpoint, ranked: prompt, reference, output, the base model's
    output, the score and each field's outcome."""
    run_or_404(session, run_id)
    found = examples(session, run_id, iteration, order, limit, split)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"no task answers for run {run_id} at iteration {iteration:,}: evaluate it with "
                                   "a task first")
    return found
