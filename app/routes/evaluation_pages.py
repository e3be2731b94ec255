"""The run page's evaluation (HTML): the evaluate card and its form, the note under the loss chart, and the page
of generated examples.

`GET /runs/{id}/evaluation` the card (it reloads itself when its job ends); `POST /runs/{id}/evaluations` the form
(starts the job, or shows the refusal in the card); `GET /runs/{id}/evaluation/chart-note` the line under the chart;
`GET /runs/{id}/evaluations/examples` the examples page (same data as the JSON API).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse

from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.evaluation.requests import EvaluationRefused, start_evaluation
from app.evaluation.results import BASE, examples, measurements, shown_split
from app.evaluation.view import (
    example_fields,
    form_request,
    read_last_job,
    read_live_job,
    read_splits,
    read_table_truth,
    task_table,
    token_note,
)
from app.jobs.jobs import LIVE, check_job
from app.routes.jobs import row
from app.routes.params import MAX_ID, RunId, run_or_404
from app.runs.store.runs import checkpoints_of
from app.tables import Job, Run

router = APIRouter(include_in_schema=False)
DEFAULT_FORM: dict[str, Any] = {"checkpoints": "all", "chosen": [], "include_base": True, "split": "test",
                                "batches": "-1", "task": False, "max_examples": "100", "max_tokens": "128"}




def card_context(session: SessionDep, settings: SettingsDep, run: Run, error: str | None = None,
                 values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The evaluate card: the form (or the live job's progress), the refusal, the task table."""
    assert run.id is not None
    live = read_live_job(session, run.id)
    if live is not None:
        live = check_job(session, settings, live)
    last = live or read_last_job(session, run.id)
    measured = measurements(session, run.id)
    splits = read_splits(str(run.config.get("data", "")))
    form = {**DEFAULT_FORM, **(values or {})}
    if form["split"] not in splits and splits:
        form["split"] = splits[0]
    return {
        "run": run, "evaluation_error": error, "form": form, "splits": splits,
        "iterations": [c.iteration for c in checkpoints_of(session, run.id)],
        "token_note": token_note(bool(run.config.get("mask_prompt"))),
        "job_item": row(session, live) if live is not None and live.status in LIVE else None,
        "last_job": last, "task": task_table(measured, shown_split(measured)),
    }


@router.get("/runs/{run_id}/evaluation", response_class=HTMLResponse)
def evaluation_card(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep, run_id: RunId,
) -> HTMLResponse:
    run = run_or_404(session, run_id)
    return templates.TemplateResponse(request, "_evaluation.html", card_context(session, settings, run))


@router.post("/runs/{run_id}/evaluations", response_class=HTMLResponse)
def evaluate_from_page(
    request: Request, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
    templates: TemplatesDep, run_id: RunId,
    checkpoints: Annotated[str, Form()] = "all",
    iteration: Annotated[list[str] | None, Form()] = None,
    include_base: Annotated[str | None, Form()] = None,
    split: Annotated[str, Form()] = "test",
    batches: Annotated[str, Form()] = "-1",
    task: Annotated[str | None, Form()] = None,
    max_examples: Annotated[str, Form()] = "100",
    max_tokens: Annotated[str, Form()] = "128",
) -> HTMLResponse:
    """Start an evaluation from the card's form; a refusal is shown in the card (no job is created)."""
    run = run_or_404(session, run_id)
    values = {"checkpoints": checkpoints, "chosen": iteration or [], "include_base": include_base is not None,
              "split": split, "batches": batches, "task": task is not None, "max_examples": max_examples,
              "max_tokens": max_tokens}
    try:
        body = form_request(checkpoints, iteration or [], include_base is not None, split, batches,
                            task is not None, max_examples, max_tokens)
        start_evaluation(session, settings, run, body)
    except EvaluationRefused as exc:
        context = card_context(session, settings, run, str(exc), values)
        return templates.TemplateResponse(request, "_evaluation.html", context)  # htmx swaps 200s only
    supervisor.start_queued_now(session)
    return templates.TemplateResponse(request, "_evaluation.html", card_context(session, settings, run, None, values))


@router.get("/runs/{run_id}/evaluation/chart-note", response_class=HTMLResponse)
def chart_note(request: Request, session: SessionDep, templates: TemplatesDep, run_id: RunId) -> HTMLResponse:
    """The line under the loss chart: where the measured split's minimum is not the validation pick."""
    run = run_or_404(session, run_id)
    assert run.id is not None
    truth = read_table_truth(session, run.id, checkpoints_of(session, run.id))
    return templates.TemplateResponse(request, "_evaluation_note.html", {"run": run, "truth": truth})


@router.get("/runs/{run_id}/evaluations/examples", response_class=HTMLResponse)
def examples_page(
    request: Request, session: SessionDep, templates: TemplatesDep, run_id: RunId,
    iteration: Annotated[int, Query(ge=0, le=MAX_ID, description="the checkpoint (0: the base model)")],
    order: Annotated[Literal["worst", "best"], Query(description="lowest scores first, or highest")] = "worst",
    limit: Annotated[int, Query(ge=1, le=500, description="at most this many examples")] = 20,
) -> HTMLResponse:
    """The generated answers at one checkpoint, worst or best first, beside the base model's answer."""
    run = run_or_404(session, run_id)
    found = examples(session, run_id, iteration, order, limit)
    if found is None:
        what = "the base model" if iteration == BASE else f"iteration {iteration:,}"
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"Run {run_id} has no scored answers for {what}: evaluate it with \"also score "
                                   "answers\" checked on the run page first.")
    for item in found["examples"]:
        item["field_rows"] = example_fields(item.get("fields") or {})
    job = session.get(Job, found["job_id"])
    return templates.TemplateResponse(request, "evaluation_examples.html", {
        "run": run, "found": found, "order": order, "limit": limit, "job": job,
        "label": "base model" if iteration == BASE else f"checkpoint {iteration:,}",
    })
