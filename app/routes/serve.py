"""Serving a checkpoint or a fused model through mlx-lm's OpenAI-compatible server.

JSON: `POST /api/runs/{id}/checkpoints/{iteration}/serve` and `POST /api/models/{name}/serve` → 201
{"job_id", "base_url", "model"}; the server is stopped with the job's cancel (`POST /api/jobs/{id}/cancel`).
Pages: the partial templates/_serve.html at `/runs/{id}/checkpoints/{iteration}/serve` and `/models/{name}/serve`
(GET shows, POST starts: an htmx request gets the partial, a plain form is sent to the checkpoint's page), and its
Stop and "Start anyway" buttons.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from app.contract.settings import Settings
from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.jobs.jobs import check_job
from app.jobs.supervisor import Supervisor
from app.routes.params import Iteration, JobId, RunId, problems
from app.serving.requests import KIND, ServeRefused, Target, start_serving
from app.serving.view import dom_id, serve_view
from app.tables import Job

router = APIRouter()
ModelName = Annotated[str, PathParam(min_length=1, max_length=128, description="a model folder's name under the "
                                                                             "models folder")]


def start(session: Session, settings: Settings, supervisor: Supervisor, target: Target) -> Job:
    """Check and queue under the supervisor's lock (one server per served thing), then start it if it may."""
    with supervisor.locked(session):
        job = start_serving(session, settings, target)
    supervisor.start_queued_now(session)
    session.refresh(job)
    return job


def started(job: Job) -> dict[str, Any]:
    params = job.params
    return {"job_id": job.id, "base_url": params["base_url"], "model": params["client_model"]}


def api_start(session: Session, settings: Settings, supervisor: Supervisor, target: Target) -> dict[str, Any]:
    try:
        return started(start(session, settings, supervisor, target))
    except ServeRefused as exc:
        raise HTTPException(exc.status, detail=exc.detail()) from None


# JSON API ------------------------------------------------------------------------------------------


@router.post("/api/runs/{run_id}/checkpoints/{iteration}/serve", tags=["serve"], status_code=201,
             responses=problems(404, 409, 422))
def serve_checkpoint(
    run_id: RunId, iteration: Iteration, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
) -> dict[str, Any]:
    """Serve the checkpoint (the run's base model with its adapter) through `mlx_lm server` on a free loopback
    port. Clients call `{base_url}/v1/chat/completions` with `"model": model`; the openai client takes
    `base_url + "/v1"`. It waits while a run trains. 409 when the checkpoint is served already (the message names
    that job and its URL); stop it with the job's cancel."""
    return api_start(session, settings, supervisor, Target(run_id=run_id, iteration=iteration))


@router.post("/api/models/{name}/serve", tags=["serve"], status_code=201, responses=problems(404, 409, 422))
def serve_model(name: ModelName, session: SessionDep, settings: SettingsDep,
                supervisor: SupervisorDep) -> dict[str, Any]:
    """Serve a model folder under the models folder (a fused model) through `mlx_lm server`, as for a
    checkpoint."""
    return api_start(session, settings, supervisor, Target(model_name=name))


# Pages ---------------------------------------------------------------------------------------------------


def partial(request: Request, templates: TemplatesDep, session: Session, settings: Settings, target: Target,
            error: str | None = None) -> HTMLResponse:
    return templates.TemplateResponse(request, "_serve.html", {"serve": serve_view(session, settings, target,
                                                                                   error)})


def page_start(request: Request, templates: TemplatesDep, session: Session, settings: Settings,
               supervisor: Supervisor, target: Target, page: str) -> Response:
    """htmx: the partial (a refusal shown in it); a plain form: to the page that shows the server."""
    error = None
    try:
        start(session, settings, supervisor, target)
    except ServeRefused as exc:
        if "hx-request" not in request.headers and exc.status != status.HTTP_409_CONFLICT:
            raise HTTPException(exc.status, detail=str(exc)) from None
        error = None if exc.status == status.HTTP_409_CONFLICT else str(exc)  # 409: the live one is shown
    if "hx-request" in request.headers:
        return partial(request, templates, session, settings, target, error)
    return RedirectResponse(page, status_code=status.HTTP_303_SEE_OTHER)


@router.get("/runs/{run_id}/checkpoints/{iteration}/serve", response_class=HTMLResponse, include_in_schema=False)
def checkpoint_serve_partial(request: Request, run_id: RunId, iteration: Iteration, session: SessionDep,
                             settings: SettingsDep, templates: TemplatesDep) -> HTMLResponse:
    """The checkpoint's server panel (it polls itself while its server is live)."""
    return partial(request, templates, session, settings, Target(run_id=run_id, iteration=iteration))


@router.post("/runs/{run_id}/checkpoints/{iteration}/serve", include_in_schema=False)
def checkpoint_serve_button(
    request: Request, run_id: RunId, iteration: Iteration, session: SessionDep, settings: SettingsDep,
    supervisor: SupervisorDep, templates: TemplatesDep,
) -> Response:
    """The Serve button of a checkpoint (its row, its page)."""
    target = Target(run_id=run_id, iteration=iteration)
    return page_start(request, templates, session, settings, supervisor, target,
                      f"/runs/{run_id}/checkpoints/{iteration}#{dom_id(target)}")


@router.get("/models/{name}/serve", response_class=HTMLResponse, include_in_schema=False)
def model_serve_partial(request: Request, name: ModelName, session: SessionDep, settings: SettingsDep,
                        templates: TemplatesDep) -> HTMLResponse:
    return partial(request, templates, session, settings, Target(model_name=name))


@router.post("/models/{name}/serve", include_in_schema=False)
def model_serve_button(request: Request, name: ModelName, session: SessionDep, settings: SettingsDep,
                       supervisor: SupervisorDep, templates: TemplatesDep) -> Response:
    target = Target(model_name=name)
    return page_start(request, templates, session, settings, supervisor, target, f"/models#{dom_id(target)}")


def serve_job(session: Session, settings: Settings, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.kind != KIND:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no server job with id {job_id}")
    return check_job(session, settings, job)


@router.post("/serve/jobs/{job_id}/stop", response_class=HTMLResponse, include_in_schema=False)
def stop_button(request: Request, job_id: JobId, session: SessionDep, settings: SettingsDep,
                supervisor: SupervisorDep, templates: TemplatesDep) -> HTMLResponse:
    """The panel's Stop button: the job's cancel (the server ends, no process is left)."""
    job = serve_job(session, settings, job_id)
    supervisor.cancel_job(session, job)
    return partial(request, templates, session, settings, Target.of(job))


@router.post("/serve/jobs/{job_id}/start-anyway", response_class=HTMLResponse, include_in_schema=False)
def start_anyway_button(request: Request, job_id: JobId, session: SessionDep, settings: SettingsDep,
                        supervisor: SupervisorDep, templates: TemplatesDep) -> HTMLResponse:
    """A server waiting for a training run starts beside it (both may run short of memory)."""
    job = serve_job(session, settings, job_id)
    supervisor.allow_while_training(session, job, True)
    return partial(request, templates, session, settings, Target.of(job))
