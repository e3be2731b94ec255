"""The run page's evaluation (HTML): the evaluate card and its form, the note under the loss chart, and the page
of generated examples.

`GET /runs/{id}/evaluation` the card (it reloads itself when its job ends); `POST /runs/{id}/evaluations` the form
(starts the job, or shows the refusal in the card); `GET /runs/{id}/evaluation/chart-note` the line under the chart;
`GET /runs/{id}/evaluations/examples` the examples page (same data as the JSON API).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse

from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.evaluation.card import card_context
from app.evaluation.requests import EvaluationRefused, start_evaluation
from app.evaluation.results import BASE, examples
from app.evaluation.view import (
    example_fields,
    form_request,
    read_table_truth,
    score_band,
)
from app.routes.params import MAX_ID, RunId, run_or_404
from app.runs.store.runs import checkpoints_of
from app.tables import Job

router = APIRouter(include_in_schema=False)


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
        item["band"] = score_band(float(item["score"]))
    job = session.get(Job, found["job_id"])
    return templates.TemplateResponse(request, "evaluation_examples.html", {
        "run": run, "found": found, "order": order, "limit": limit, "job": job,
        "label": "base model" if iteration == BASE else f"checkpoint {iteration:,}",
    })
