"""The playground's pages: `/playground` (with ?run_id=&iteration= a column starts on that checkpoint) and its
partials (column pickers, an example's prompt, the model's memory with Release and "Start anyway"), and a
prompt set's answers side by side at `/prompt-sets/{id}`."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from sqlmodel import Session, col, select

from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.playground import prompt_sets as sets
from app.playground.requests import Sampling, live_job
from app.playground.view import EXAMPLE_SPLITS, Example, base_models, column_choices, job_view, read_example, runs_on
from app.routes.params import MAX_ID, PromptSetId, bounded_query, prompt_set_or_404
from app.tables import PromptSet, Run

router = APIRouter()


def _columns_context(session: Session, model: str, prefill: tuple[int, int] | None) -> dict[str, Any]:
    runs = runs_on(session, model)
    return {"model": model, "runs": runs, "values": column_choices(prefill, runs),
            "example_run": prefill[0] if prefill else None}


@router.get("/playground", response_class=HTMLResponse, include_in_schema=False)
def playground_page(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep,
    run_id: int | None = bounded_query(None, "start a column on this run's checkpoint"),
    iteration: int | None = bounded_query(None, "the checkpoint's iteration"),
    model: str | None = Query(None, max_length=4096, description="the base model"),
) -> HTMLResponse:
    """Prompt box, up to four columns streaming side by side, settings, the playground job, prompt sets."""
    models = base_models(session, settings)
    run = session.get(Run, run_id) if run_id is not None else None
    chosen = str(run.config.get("model", "")) if run is not None else (model or models[0]["model"])
    prefill = (run_id, iteration) if run is not None and iteration is not None else None
    columns = _columns_context(session, chosen, prefill)
    set_run_id = run.id if run is not None else (columns["runs"][0]["run"].id if columns["runs"] else None)
    context = {"models": models, "set_run_id": set_run_id, "job": job_view(session, settings),
               "example_splits": EXAMPLE_SPLITS, "example": Example("", "", ""),
               "prompt_sets": sets.list_prompt_sets(session)[:20],
               "all_runs": session.exec(select(Run).order_by(col(Run.id).desc()).limit(200)).all(),
               "settings_defaults": Sampling().as_request(), **columns}
    return templates.TemplateResponse(request, "playground.html", context)


@router.get("/playground/columns", response_class=HTMLResponse, include_in_schema=False)
def playground_columns(request: Request, session: SessionDep, templates: TemplatesDep,
                       model: str = Query("", max_length=4096)) -> HTMLResponse:
    """The column pickers and the example picker for another base model."""
    return templates.TemplateResponse(request, "_playground_columns.html", _columns_context(session, model, None))


@router.get("/playground/job", response_class=HTMLResponse, include_in_schema=False)
def playground_job(request: Request, session: SessionDep, settings: SettingsDep,
                   templates: TemplatesDep) -> HTMLResponse:
    """The playground job's state (it polls itself while the job is live)."""
    return _job_panel(request, session, settings, templates)


def _job_panel(request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep
               ) -> HTMLResponse:
    return templates.TemplateResponse(request, "_playground_job.html", {"job": job_view(session, settings)})


@router.post("/playground/release", response_class=HTMLResponse, include_in_schema=False)
def playground_release(request: Request, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
                       templates: TemplatesDep) -> HTMLResponse:
    """"Release memory": cancel the playground job (the model is unloaded; a later prompt loads it again)."""
    job = live_job(session, settings)
    if job is not None:
        supervisor.cancel_job(session, job)
    return _job_panel(request, session, settings, templates)


@router.post("/playground/start-anyway", response_class=HTMLResponse, include_in_schema=False)
def playground_start_anyway(request: Request, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
                            templates: TemplatesDep) -> HTMLResponse:
    """"Start anyway": the waiting playground loads beside the training run."""
    job = live_job(session, settings)
    if job is not None:
        supervisor.allow_while_training(session, job, True)
    return _job_panel(request, session, settings, templates)


@router.get("/playground/example", response_class=HTMLResponse, include_in_schema=False)
def playground_example(
    request: Request, session: SessionDep, templates: TemplatesDep,
    run_id: int = Query(ge=1, le=MAX_ID), split: str = Query("test", pattern="^(test|valid)$"),
    line: int = Query(1, ge=1, le=10_000_000),
) -> HTMLResponse:
    """The prompt fields filled from line `line` of the run's test or validation split."""
    run = session.get(Run, run_id)
    example = read_example(run, split, line) if run is not None else Example("", "", "", f"there is no run {run_id}")
    return templates.TemplateResponse(request, "_playground_prompt.html", {"example": example})


def _set_page_context(session: Session, prompt_set: PromptSet) -> dict[str, Any]:
    run = session.get(Run, prompt_set.run_id) if prompt_set.run_id is not None else None
    model = str(run.config.get("model", "")) if run is not None else ""
    saved = json.loads(prompt_set.settings_json) or {}
    return {"prompt_set": prompt_set, "run": run, "table": sets.outputs(session, prompt_set),
            "runs": runs_on(session, model) if model else [], "max_tokens": saved.get("max_tokens", 256)}


@router.get("/prompt-sets/{prompt_set_id}", response_class=HTMLResponse, include_in_schema=False)
def prompt_set_page(request: Request, prompt_set_id: PromptSetId, session: SessionDep,
                    templates: TemplatesDep) -> HTMLResponse:
    """A prompt set: per prompt, the outputs of every model and checkpoint it was run on, side by side."""
    context = _set_page_context(session, prompt_set_or_404(session, prompt_set_id))
    return templates.TemplateResponse(request, "playground_set.html", context)


@router.get("/prompt-sets/{prompt_set_id}/outputs", response_class=HTMLResponse, include_in_schema=False)
def prompt_set_outputs(request: Request, prompt_set_id: PromptSetId, session: SessionDep,
                       templates: TemplatesDep) -> HTMLResponse:
    """The outputs table (it polls itself while answers are coming)."""
    context = _set_page_context(session, prompt_set_or_404(session, prompt_set_id))
    return templates.TemplateResponse(request, "_playground_set_outputs.html", context)


@router.post("/prompt-sets/{prompt_set_id}/run", response_class=HTMLResponse, include_in_schema=False)
def prompt_set_run_form(
    request: Request, prompt_set_id: PromptSetId, session: SessionDep, settings: SettingsDep,
    supervisor: SupervisorDep, templates: TemplatesDep, column: Annotated[str, Form()] = "",
    max_tokens: Annotated[int, Form()] = 256,
) -> HTMLResponse:
    """"Run on checkpoint N": every prompt answered by that checkpoint (or the base model); the table fills in."""
    prompt_set = prompt_set_or_404(session, prompt_set_id)
    error = None
    try:
        body = sets.PromptSetRun(columns=[sets.column_from_form(column)], max_tokens=max_tokens,
                                 **sets.saved_sampling(prompt_set))
        sets.run_prompt_set(session, settings, supervisor, prompt_set, body)
    except ValidationError as exc:
        error = "; ".join(str(e["msg"]) for e in exc.errors())
    except ValueError as exc:
        error = str(exc)
    context = {**_set_page_context(session, prompt_set), "error": error}
    return templates.TemplateResponse(request, "_playground_set_outputs.html", context)
