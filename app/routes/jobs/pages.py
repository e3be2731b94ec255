"""Jobs on pages: `/jobs` (running and recent jobs) and the progress partial every kind uses, polling itself
while the job is live, with its Cancel and "Run beside training" buttons."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.jobs.jobs import check_job, list_jobs
from app.jobs.views import is_live, progress_item
from app.routes.params import JobDep
from app.tables import Job

router = APIRouter()


def progress_partial(
    request: Request, templates: TemplatesDep, session: Session, job: Job, response_headers: dict[str, str]
) -> HTMLResponse:
    return templates.TemplateResponse(request, "_job_progress.html", {"item": progress_item(session, job)},
                                      headers=response_headers)


@router.get("/jobs", response_class=HTMLResponse, include_in_schema=False)
def jobs_page(request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep) -> HTMLResponse:
    """Running and recent jobs with their progress, ETA, waiting reason and what they concern."""
    jobs = [check_job(session, settings, job) for job in list_jobs(session, limit=200)]
    live = [progress_item(session, job) for job in jobs if is_live(job)]
    ended = [progress_item(session, job) for job in jobs if not is_live(job)][:50]
    return templates.TemplateResponse(request, "jobs.html", {"live": live, "ended": ended})


@router.get("/jobs/{job_id}/progress", response_class=HTMLResponse, include_in_schema=False)
def job_progress(request: Request, job: JobDep, session: SessionDep, templates: TemplatesDep) -> HTMLResponse:
    """The progress partial: it polls itself while the job is live; an ended job's answer carries no trigger
    and fires `job-ended` (a page that shows the job's result reloads it then)."""
    headers = {} if is_live(job) else {"HX-Trigger": "job-ended"}
    return progress_partial(request, templates, session, job, headers)


@router.post("/jobs/{job_id}/allow-while-training", response_class=HTMLResponse, include_in_schema=False)
def job_allow_button(
    request: Request, job: JobDep, session: SessionDep, supervisor: SupervisorDep, templates: TemplatesDep,
) -> HTMLResponse:
    """The partial's "Run beside training" button on a job waiting for memory."""
    supervisor.allow_while_training(session, job, True)
    return progress_partial(request, templates, session, job, {})


@router.post("/jobs/{job_id}/cancel", response_class=HTMLResponse, include_in_schema=False)
def job_cancel_button(
    request: Request, job: JobDep, session: SessionDep, supervisor: SupervisorDep, templates: TemplatesDep,
) -> HTMLResponse:
    """The partial's Cancel button (an ended job just shows its end)."""
    supervisor.cancel_job(session, job)
    headers = {} if is_live(job) else {"HX-Trigger": "job-ended"}
    return progress_partial(request, templates, session, job, headers)
