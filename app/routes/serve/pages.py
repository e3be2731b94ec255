"""The server panel (templates/_serve.html) of a checkpoint or a model folder, at
`/runs/{id}/checkpoints/{iteration}/serve` and `/models/{name}/serve` (GET shows, POST starts: an htmx request
gets the partial, a plain form is sent to the checkpoint's page), and its Stop and "Start anyway" buttons."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from app.contract.settings import Settings
from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.jobs.jobs import check_job
from app.jobs.supervisor import Supervisor
from app.routes.params import Iteration, JobId, RunId, ServedModelName
from app.serving.requests import KIND, ServeRefused, Target
from app.serving.start import start
from app.serving.view import dom_id, serve_view
from app.tables import Job

router = APIRouter()


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
def model_serve_partial(request: Request, name: ServedModelName, session: SessionDep, settings: SettingsDep,
                        templates: TemplatesDep) -> HTMLResponse:
    return partial(request, templates, session, settings, Target(model_name=name))


@router.post("/models/{name}/serve", include_in_schema=False)
def model_serve_button(request: Request, name: ServedModelName, session: SessionDep, settings: SettingsDep,
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
