"""Serving a checkpoint or a fused model through mlx-lm's OpenAI-compatible server (JSON, under /api).

`POST /api/runs/{id}/checkpoints/{iteration}/serve` and `POST /api/models/{name}/serve` → 201
{"job_id", "base_url", "model"}; the server is stopped with the job's cancel (`POST /api/jobs/{id}/cancel`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from sqlmodel import Session

from app.contract.settings import Settings
from app.deps import SessionDep, SettingsDep, SupervisorDep
from app.jobs.supervisor import Supervisor
from app.routes.params import Iteration, RunId, ServedModelName, problems
from app.serving.requests import ServeRefused, Target
from app.serving.start import start
from app.tables import Job

router = APIRouter(prefix="/api")


def started(job: Job) -> dict[str, Any]:
    params = job.params
    return {"job_id": job.id, "base_url": params["base_url"], "model": params["client_model"]}


def api_start(session: Session, settings: Settings, supervisor: Supervisor, target: Target) -> dict[str, Any]:
    try:
        return started(start(session, settings, supervisor, target))
    except ServeRefused as exc:
        raise HTTPException(exc.status, detail=exc.detail()) from None


@router.post("/runs/{run_id}/checkpoints/{iteration}/serve", tags=["serve"], status_code=201,
             responses=problems(404, 409, 422))
def serve_checkpoint(
    run_id: RunId, iteration: Iteration, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
) -> dict[str, Any]:
    """Serve the checkpoint (the run's base model with its adapter) through `mlx_lm server` on a free loopback
    port. Clients call `{base_url}/v1/chat/completions` with `"model": model`; the openai client takes
    `base_url + "/v1"`. It waits while a run trains. 409 when the checkpoint is served already (the message names
    that job and its URL); stop it with the job's cancel."""
    return api_start(session, settings, supervisor, Target(run_id=run_id, iteration=iteration))


@router.post("/models/{name}/serve", tags=["serve"], status_code=201, responses=problems(404, 409, 422))
def serve_model(name: ServedModelName, session: SessionDep, settings: SettingsDep,
                supervisor: SupervisorDep) -> dict[str, Any]:
    """Serve a model folder under the models folder (a fused model) through `mlx_lm server`, as for a
    checkpoint."""
    return api_start(session, settings, supervisor, Target(model_name=name))
