"""The playground's JSON API, under /api: `POST /api/generate` (streamed events, or with "stream": false the
whole texts), `POST /api/generations` (queue only; the page streams it from `GET /api/generations/{id}/events`),
`GET /api/generations/{id}`; prompt sets: `POST /api/prompt-sets`, `GET /api/prompt-sets`,
`GET /api/prompt-sets/{id}`, `POST /api/prompt-sets/{id}/run`."""

from __future__ import annotations

import asyncio
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, status
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.deps import SessionDep, SettingsDep, SupervisorDep
from app.playground import prompt_sets as sets
from app.playground.requests import GenerateRequest, PlaygroundRefused, column_label, queue_generation
from app.playground.stream import column_json, columns_of, generation_events, outputs, settle, wait_for_end
from app.routes.params import MAX_ID, PromptSetId, bounded_query, problems, prompt_set_or_404, stream_problems
from app.sse import STREAM_DOC, EventStream, event_stream
from app.tables import Generation

router = APIRouter(prefix="/api")
GenerationId = Annotated[int, Path(ge=1, le=MAX_ID, description="the generation's id")]
GENERATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "with stream (the default): server-sent events `token` {column, seq, text}, `column` "
                         "{column, text, tokens, tokens_per_second, first_token_s, finish_reason}, `waiting` "
                         "{reason, job_id}, `done` {generation_id, status, error}; with \"stream\": false the "
                         "whole texts",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerateAnswer"}},
                      "text/event-stream": {}}},
    **problems(400, 409, 422),
}


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


def _refused(exc: PlaygroundRefused) -> HTTPException:
    return HTTPException(exc.status, detail=exc.detail())


def _stopping(request: Request) -> threading.Event | None:
    return getattr(request.app.state, "stopping", None)


@router.post("/generate", tags=["playground"], response_model=None, responses=GENERATE_RESPONSES)
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


@router.post("/generations", tags=["playground"], status_code=201, responses=problems(400, 422))
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


@router.get("/generations/{generation_id}", tags=["playground"], responses=problems(404, 422))
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


@router.get("/generations/{generation_id}/events", tags=["playground"], response_class=EventStream,
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


@router.post("/prompt-sets", tags=["playground"], status_code=201, responses=problems(400, 409, 422))
def create_prompt_set(body: sets.PromptSetCreate, session: SessionDep) -> dict[str, Any]:
    """Keep prompts for a run under a name (unique among the run's sets: 409 when taken)."""
    try:
        return sets.prompt_set_json(sets.create_prompt_set(session, body))
    except PlaygroundRefused as exc:
        raise _refused(exc) from None


@router.get("/prompt-sets", tags=["playground"], responses=problems(422))
def get_prompt_sets(session: SessionDep, run_id: int | None = bounded_query(None, "only this run's sets"),
                    ) -> list[dict[str, Any]]:
    """Prompt sets, newest first."""
    return [sets.prompt_set_json(p) for p in sets.list_prompt_sets(session, run_id)]


@router.get("/prompt-sets/{prompt_set_id}", tags=["playground"], responses=problems(404, 422))
def get_prompt_set(prompt_set_id: PromptSetId, session: SessionDep) -> dict[str, Any]:
    """A prompt set with its outputs: per prompt, the newest answer of every model and checkpoint it was run on."""
    return sets.prompt_set_detail(session, prompt_set_or_404(session, prompt_set_id))


@router.post("/prompt-sets/{prompt_set_id}/run", tags=["playground"], status_code=201,
             responses=problems(400, 404, 422))
def run_prompt_set(prompt_set_id: PromptSetId, body: sets.PromptSetRun, session: SessionDep, settings: SettingsDep,
                   supervisor: SupervisorDep) -> dict[str, list[int]]:
    """Answer every prompt of the set with these columns (queued generations, one per prompt)."""
    prompt_set = prompt_set_or_404(session, prompt_set_id)
    try:
        return {"generation_ids": sets.run_prompt_set(session, settings, supervisor, prompt_set, body)}
    except PlaygroundRefused as exc:
        raise _refused(exc) from None
