"""The JSON API of a run's checkpoints, under /api: list them, download one's adapter, mark the deployment one,
note, delete."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from app.contract.paths import PathNotAllowed
from app.contract.policy import best_checkpoint
from app.deps import SessionDep, SettingsDep
from app.reports.facts import gather
from app.reports.model_card import Artefact, model_card
from app.routes.params import Iteration, RunId, content, problems, run_or_404
from app.runs.store.checkpoints import CheckpointError, delete_checkpoint, find_checkpoint, set_deployment, set_note
from app.runs.store.runs import adapter_zip, checkpoint_json, checkpoints_of
from app.tables import Checkpoint

router = APIRouter(prefix="/api", tags=["runs"])


@router.get("/runs/{run_id}/checkpoints", responses=problems(404, 422))
def get_checkpoints(session: SessionDep, run_id: RunId) -> list[dict[str, Any]]:
    run_or_404(session, run_id)
    checkpoints = checkpoints_of(session, run_id)
    best = best_checkpoint(checkpoints)
    return [checkpoint_json(c, best) for c in checkpoints]


@router.get("/runs/{run_id}/checkpoints/{iteration}/download", response_class=Response,
            responses={**content("application/zip", "the adapter (adapter_config.json and the weights) as a zip"),
                       **problems(404, 410, 422)})
def download_checkpoint(session: SessionDep, settings: SettingsDep, run_id: RunId, iteration: Iteration) -> Response:
    run = run_or_404(session, run_id)
    ckpt = checkpoint_or_404(session, run_id, iteration)
    card = model_card(gather(session, settings, run, ""), Artefact("adapter", ckpt))
    try:
        payload = adapter_zip(settings, run, ckpt, card)
    except FileNotFoundError as exc:
        raise HTTPException(status.HTTP_410_GONE, detail=f"checkpoint file is missing: {exc.filename}") from None
    except PathNotAllowed as exc:
        raise HTTPException(422, detail=str(exc)) from None
    filename = f"run-{run_id}-iter-{iteration:07d}-adapter.zip"
    return Response(payload, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


class CheckpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    is_deployment: Literal[True] | None = Field(None, description="true: make this the run's deployment checkpoint")
    note: str | None = Field(None, max_length=2000, description="a note shown in the checkpoint table")


def checkpoint_or_404(session: SessionDep, run_id: int, iteration: int) -> Checkpoint:
    ckpt = find_checkpoint(session, run_id, iteration)
    if ckpt is None:
        detail = f"run {run_id} has no checkpoint at iteration {iteration}"
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=detail)
    return ckpt


@router.patch("/runs/{run_id}/checkpoints/{iteration}", responses=problems(400, 404, 422))
def patch_checkpoint(
    session: SessionDep, run_id: RunId, iteration: Iteration, patch: CheckpointPatch
) -> dict[str, Any]:
    run_or_404(session, run_id)
    ckpt = checkpoint_or_404(session, run_id, iteration)
    if patch.is_deployment:
        set_deployment(session, run_id, ckpt)
        session.commit()
    if patch.note is not None:
        set_note(session, ckpt, patch.note)
    checkpoints = checkpoints_of(session, run_id)
    return checkpoint_json(ckpt, best_checkpoint(checkpoints))


@router.delete("/runs/{run_id}/checkpoints/{iteration}", status_code=status.HTTP_204_NO_CONTENT,
               response_class=Response, responses=problems(404, 409, 422))
def delete_checkpoint_api(
    session: SessionDep, settings: SettingsDep, run_id: RunId, iteration: Iteration,
    confirm: str = Query("", description="'yes'; 'deployment' to delete the deployment checkpoint"),
) -> Response:
    run = run_or_404(session, run_id)
    ckpt = checkpoint_or_404(session, run_id, iteration)
    try:
        delete_checkpoint(session, settings, run, ckpt, confirm)
    except CheckpointError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)
