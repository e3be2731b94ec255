"""The playground: prompts answered side by side by the base model and checkpoints (app/playground/).

JSON: `POST /api/generate` (streamed events, or with "stream": false the whole texts), `POST /api/generations`
(queue only; the page streams it from `GET /api/generations/{id}/events`), `GET /api/generations/{id}`;
prompt sets: `POST /api/prompt-sets`, `GET /api/prompt-sets`, `GET /api/prompt-sets/{id}`,
`POST /api/prompt-sets/{id}/run`.
Pages: `/playground` (with ?run_id=&iteration= a column starts on that checkpoint) and its partials;
`/prompt-sets/{id}`.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Header, HTTPException, Path, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.playground import prompt_sets as sets
from app.playground.requests import (
    GenerateRequest,
    PlaygroundRefused,
    Sampling,
    column_label,
    live_job,
    queue_generation,
)
from app.playground.stream import column_json, columns_of, generation_events, outputs, settle, wait_for_end
from app.playground.view import EXAMPLE_SPLITS, Example, base_models, column_choices, job_view, read_example, runs_on
from app.routes.params import MAX_ID, bounded_query, problems, stream_problems
from app.sse import STREAM_DOC, EventStream, event_stream
from app.tables import Generation, PromptSet, Run

router = APIRouter()
GenerationId = Annotated[int, Path(ge=1, le=MAX_ID, description="the generation's id")]
PromptSetId = Annotated[int, Path(ge=1, le=MAX_ID, description="the prompt set's id")]


class ColumnOutput(BaseModel):
    text: str = Field(description="The whole answer.")
    tokens: int = Field(description="Tokens generated.")
    tokens_per_second: float | None = Field(description="Generation speed after the first token.")
    first_token_s: float | None = Field(description="Seconds from the column's start to its first token.")
    finish_reason: str | None = Field(description="stop (end of sequence) or length (max_tokens reached).")


class GenerateAnswer(BaseModel):
    outputs: list[ColumnOutput] = Field(description="One per column, in order.")
    generation_id: int
    status: str


GENERATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "with stream (the default): server-sent events `token` {column, seq, text}, `column` "
                         "{column, text, tokens, tokens_per_second, first_token_s, finish_reason}, `waiting` "
                         "{reason, job_id}, `done` {generation_id, status, error}; with \"stream\": false the "
                         "whole texts",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerateAnswer"}},
                      "text/event-stream": {}}},
    **problems(400, 409, 422),
}


def _refused(exc: PlaygroundRefused) -> HTTPException:
    return HTTPException(exc.status, detail=exc.detail())


def _stopping(request: Request) -> threading.Event | None:
    return getattr(request.app.state, "stopping", None)


# JSON API -------------------------------------------------------------------------------------------------


@router.post("/api/generate", tags=["playground"], response_model=None, responses=GENERATE_RESPONSES)
def generate(body: GenerateRequest, request: Request, session: SessionDep, settings: SettingsDep,
             supervisor: SupervisorDep) -> Response:
    """Answer a prompt with up to four columns (the base model and checkpoints of runs on it), streamed as
    server-sent events; with `"stream": false` wait and answer the whole texts (409 while the playground waits
    for a training run: stream instead, and it starts by itself when the run ends)."""
    try:
        generation, _ = queue_generation(session, settings, supervisor, body, refuse_waiting=not body.stream)
    except PlaygroundRefused as exc:
        raise _refused(exc) from None
    assert generation.id is not None
    engine = request.app.state.engine
    if body.stream:
        events = generation_events(engine, settings, generation.id, stopping=_stopping(request),
                                   disconnected=request.is_disconnected)
        return event_stream(events)
    ended, columns = wait_for_end(engine, settings, generation.id, _stopping(request))
    if ended.status == "failed":
        raise HTTPException(422, detail=f"generation {ended.id} failed: {ended.error}")
    if ended.status != "completed":
        raise HTTPException(status.HTTP_409_CONFLICT,
                            detail=f"generation {ended.id} ended {ended.status}: {ended.error or 'stopped'}")
    return JSONResponse({"outputs": outputs(columns), "generation_id": ended.id, "status": ended.status})


@router.post("/api/generations", tags=["playground"], status_code=201, responses=problems(400, 422))
def create_generation(body: GenerateRequest, session: SessionDep, settings: SettingsDep,
                      supervisor: SupervisorDep) -> dict[str, Any]:
    """Queue a prompt (as POST /api/generate takes it; `stream` is ignored) and answer at once with its id: read
    it from GET /api/generations/{id}/events."""
    try:
        generation, job = queue_generation(session, settings, supervisor, body)
    except PlaygroundRefused as exc:
        raise _refused(exc) from None
    return {"generation_id": generation.id, "job_id": job.id, "waiting_reason": job.waiting_reason,
            "columns": [{"run_id": ref.run_id if ref else None, "iteration": ref.iteration if ref else None,
                         "label": column_label(ref.run_id if ref else None, ref.iteration if ref else None)}
                        for ref in body.adapters]}


def _generation(session: Session, generation_id: int) -> Generation:
    generation = session.get(Generation, generation_id)
    if generation is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no generation with id {generation_id}")
    return generation


@router.get("/api/generations/{generation_id}", tags=["playground"], responses=problems(404, 422))
def get_generation(generation_id: GenerationId, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """One generation: status, error, the request, and each column (text and figures once it is done)."""
    generation = settle(session, settings, _generation(session, generation_id))
    return {"id": generation.id, "status": generation.status, "error": generation.error, "model": generation.model,
            "job_id": generation.job_id, "request": generation.request, "prompt_set_id": generation.prompt_set_id,
            "prompt_index": generation.prompt_index,
            "columns": [column_json(c) for c in columns_of(session, generation_id)]}


def _exists(engine: Engine, generation_id: int) -> bool:
    with Session(engine) as session:
        return session.get(Generation, generation_id) is not None


async def stream_after(
    request: Request, generation_id: GenerationId,
    last_event_id: Annotated[str | None, Header(description="set by the browser on reconnect: the last token's "
                                                            "id; tokens after it are sent")] = None,
) -> int:
    """The token id the stream starts after; a bad Last-Event-ID (400) or an unknown generation (404) fails before
    any event is sent."""
    after = 0
    if last_event_id:
        if not last_event_id.isdigit() or int(last_event_id) > MAX_ID:
            raise HTTPException(status.HTTP_400_BAD_REQUEST,
                                detail=f"Last-Event-ID must be a token id (digits), got {last_event_id[:40]!r}")
        after = int(last_event_id)
    if not await asyncio.to_thread(_exists, request.app.state.engine, generation_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no generation with id {generation_id}")
    return after


@router.get("/api/generations/{generation_id}/events", tags=["playground"], response_class=EventStream,
            responses={**STREAM_DOC, **stream_problems(400, 404, 422)})
async def generation_stream(
    request: Request, generation_id: GenerationId, settings: SettingsDep,
    after: Annotated[int, Depends(stream_after)],
    max_s: Annotated[float | None, Query(gt=0, le=86_400, description="end the stream after so many seconds")]
    = None,
) -> EventStream:
    """`text/event-stream` of one generation: `token`, `column`, `waiting` and `done` events as POST
    /api/generate streams them."""
    return event_stream(generation_events(request.app.state.engine, settings, generation_id, after_token=after,
                                          stopping=_stopping(request), disconnected=request.is_disconnected,
                                          max_s=max_s))


@router.post("/api/prompt-sets", tags=["playground"], status_code=201, responses=problems(400, 409, 422))
def create_prompt_set(body: sets.PromptSetCreate, session: SessionDep) -> dict[str, Any]:
    """Keep prompts for a run under a name (unique among the run's sets: 409 when taken)."""
    try:
        return sets.prompt_set_json(sets.create_prompt_set(session, body))
    except PlaygroundRefused as exc:
        raise _refused(exc) from None


@router.get("/api/prompt-sets", tags=["playground"], responses=problems(422))
def get_prompt_sets(session: SessionDep, run_id: int | None = bounded_query(None, "only this run's sets"),
                    ) -> list[dict[str, Any]]:
    """Prompt sets, newest first."""
    return [sets.prompt_set_json(p) for p in sets.list_prompt_sets(session, run_id)]


def _prompt_set(session: Session, prompt_set_id: int) -> PromptSet:
    prompt_set = session.get(PromptSet, prompt_set_id)
    if prompt_set is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no prompt set with id {prompt_set_id}")
    return prompt_set


@router.get("/api/prompt-sets/{prompt_set_id}", tags=["playground"], responses=problems(404, 422))
def get_prompt_set(prompt_set_id: PromptSetId, session: SessionDep) -> dict[str, Any]:
    """A prompt set with its outputs: per prompt, the newest answer of every model and checkpoint it was run on."""
    return sets.prompt_set_detail(session, _prompt_set(session, prompt_set_id))


@router.post("/api/prompt-sets/{prompt_set_id}/run", tags=["playground"], status_code=201,
             responses=problems(400, 404, 422))
def run_prompt_set(prompt_set_id: PromptSetId, body: sets.PromptSetRun, session: SessionDep, settings: SettingsDep,
                   supervisor: SupervisorDep) -> dict[str, list[int]]:
    """Answer every prompt of the set with these columns (queued generations, one per prompt)."""
    prompt_set = _prompt_set(session, prompt_set_id)
    try:
        return {"generation_ids": sets.run_prompt_set(session, settings, supervisor, prompt_set, body)}
    except PlaygroundRefused as exc:
        raise _refused(exc) from None


# Pages ------------------------------------------------------------------------------------------------------


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
    context = _set_page_context(session, _prompt_set(session, prompt_set_id))
    return templates.TemplateResponse(request, "playground_set.html", context)


@router.get("/prompt-sets/{prompt_set_id}/outputs", response_class=HTMLResponse, include_in_schema=False)
def prompt_set_outputs(request: Request, prompt_set_id: PromptSetId, session: SessionDep,
                       templates: TemplatesDep) -> HTMLResponse:
    """The outputs table (it polls itself while answers are coming)."""
    context = _set_page_context(session, _prompt_set(session, prompt_set_id))
    return templates.TemplateResponse(request, "_playground_set_outputs.html", context)


@router.post("/prompt-sets/{prompt_set_id}/run", response_class=HTMLResponse, include_in_schema=False)
def prompt_set_run_form(
    request: Request, prompt_set_id: PromptSetId, session: SessionDep, settings: SettingsDep,
    supervisor: SupervisorDep, templates: TemplatesDep, column: Annotated[str, Form()] = "",
    max_tokens: Annotated[int, Form()] = 256,
) -> HTMLResponse:
    """"Run on checkpoint N": every prompt answered by that checkpoint (or the base model); the table fills in."""
    prompt_set = _prompt_set(session, prompt_set_id)
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
