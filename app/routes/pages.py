"""HTML pages and the htmx partials they include (each partial is also served alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.models import Run
from app.policy import best_checkpoint
from app.runconfig import (
    FORM_DEFAULTS,
    RunConfig,
    dataset_problem,
    flat_values,
    form_field_specs,
    form_to_payload,
)
from app.runs import checkpoints_of, create_run, latest_train, list_runs, progress_view

router = APIRouter(include_in_schema=False)
HxRequest = Annotated[str | None, Header()]


def _run_or_404(session: SessionDep, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no run with id {run_id}")
    return run


def _status_context(session: SessionDep, run: Run) -> dict[str, Any]:
    assert run.id is not None
    return {"run": run, "latest": latest_train(session, run.id), "progress": progress_view(run)}


def _checkpoint_context(session: SessionDep, run: Run) -> dict[str, Any]:
    assert run.id is not None
    checkpoints = checkpoints_of(session, run.id)
    return {"run": run, "checkpoints": checkpoints, "best": best_checkpoint(checkpoints)}


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request, session: SessionDep, templates: TemplatesDep, hx_request: HxRequest = None) -> Response:
    runs = list_runs(session)
    context = {"runs": runs, "any_active": any(not r.is_terminal for r in runs)}
    name = "_runs_table.html" if hx_request == "true" else "index.html"
    return templates.TemplateResponse(request, name, context)


def _form_response(
    request: Request, templates: TemplatesDep, settings: SettingsDep, values: dict[str, Any],
    errors: dict[str, str], code: int = 200,
) -> Response:
    context = {
        "fields": form_field_specs(values),
        "errors": errors,
        "default_model": settings.default_model_dir,
        "default_data": settings.default_dataset_dir,
    }
    return templates.TemplateResponse(request, "new_run.html", context, status_code=code)


@router.get("/runs/new", response_class=HTMLResponse)
def new_run_form(request: Request, templates: TemplatesDep, settings: SettingsDep) -> Response:
    values = flat_values({**RunConfig().model_dump(), **FORM_DEFAULTS})
    values["model"] = str(settings.default_model_dir)
    values["data"] = str(settings.default_dataset_dir)
    return _form_response(request, templates, settings, values, {})


@router.post("/runs/new")
async def submit_run_form(
    request: Request, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
    templates: TemplatesDep,
) -> Response:
    form = {k: str(v) for k, v in (await request.form()).items()}
    errors: dict[str, str] = {}
    try:
        config = RunConfig.model_validate(form_to_payload(form)).resolved(settings)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            errors[".".join(str(p) for p in err["loc"]) or "form"] = err["msg"]
        return _form_response(request, templates, settings, form, errors, 422)
    problem = dataset_problem(Path(config.data))
    if problem:
        return _form_response(request, templates, settings, form, {"data": problem}, 422)
    run = create_run(session, config)
    supervisor.tick()
    return RedirectResponse(f"/runs/{run.id}", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, session: SessionDep, templates: TemplatesDep, run_id: int) -> Response:
    run = _run_or_404(session, run_id)
    context = {**_status_context(session, run), **_checkpoint_context(session, run)}
    return templates.TemplateResponse(request, "run.html", context)


@router.get("/runs/{run_id}/status", response_class=HTMLResponse)
def run_status_partial(request: Request, session: SessionDep, templates: TemplatesDep, run_id: int) -> Response:
    run = _run_or_404(session, run_id)
    return templates.TemplateResponse(request, "_run_status.html", _status_context(session, run))


@router.get("/runs/{run_id}/checkpoints", response_class=HTMLResponse)
def checkpoints_partial(request: Request, session: SessionDep, templates: TemplatesDep, run_id: int) -> Response:
    run = _run_or_404(session, run_id)
    return templates.TemplateResponse(request, "_checkpoints.html", _checkpoint_context(session, run))


@router.post("/runs/{run_id}/stop", response_class=HTMLResponse)
def stop_from_page(
    request: Request, session: SessionDep, supervisor: SupervisorDep, templates: TemplatesDep, run_id: int
) -> Response:
    run = _run_or_404(session, run_id)
    supervisor.request_stop(session, run)
    session.refresh(run)
    return templates.TemplateResponse(request, "_run_status.html", _status_context(session, run))
