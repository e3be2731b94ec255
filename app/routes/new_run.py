"""The new-run form: show it, check it, start the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from app.datasets import dataset_problem
from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.modelinfo import model_choices
from app.models import Run
from app.runconfig import FORM_DEFAULTS, RunConfig, flat_values, form_field_specs, form_to_payload
from app.runs import create_run, resume_problem

router = APIRouter(include_in_schema=False)


def _form_response(
    request: Request, templates: TemplatesDep, settings: SettingsDep, values: dict[str, Any],
    errors: dict[str, str], code: int = 200,
) -> Response:
    context = {
        "fields": form_field_specs(values),
        "errors": errors,
        "default_model": settings.default_model_dir,
        "default_data": settings.default_dataset_dir,
        "model_choices": model_choices(settings),
    }
    return templates.TemplateResponse(request, "new_run.html", context, status_code=code)


@router.get("/runs/new", response_class=HTMLResponse)
def new_run_form(
    request: Request, session: SessionDep, templates: TemplatesDep, settings: SettingsDep,
    from_run: int | None = None, resume_iteration: int | None = None,
) -> Response:
    """The form: small defaults for the embedded model, or a copy of an earlier run (to continue it)."""
    values = flat_values({**RunConfig().model_dump(), **FORM_DEFAULTS})
    values["model"] = str(settings.default_model_dir)
    values["data"] = str(settings.default_dataset_dir)
    source = session.get(Run, from_run) if from_run is not None else None
    if source is not None:
        values = flat_values({**source.config, "name": "", "resume_from": None})
        values["early_stopping.enabled"] = bool(source.config.get("early_stopping"))
        if resume_iteration is not None:
            values["resume_from.run_id"] = source.id
            values["resume_from.iteration"] = resume_iteration
            values["iters"] = max(source.total_iters, resume_iteration * 2)
            values["name"] = f"{source.name} (continued from {resume_iteration})"
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
    for key, problem in (("data", dataset_problem(Path(config.data))),
                         ("resume_from", resume_problem(session, settings, config))):
        if problem:
            return _form_response(request, templates, settings, form, {key: problem}, 422)
    run = create_run(session, config)
    supervisor.tick()
    return RedirectResponse(f"/runs/{run.id}", status_code=status.HTTP_303_SEE_OTHER)
