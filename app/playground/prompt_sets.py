"""Prompt sets: named lists of prompts kept for a run, answered again by later checkpoints, their outputs side by
side (per prompt, the newest answer of every model and checkpoint it was run on)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlmodel import Session, col, select

from app.contract.safe_text import check_text
from app.contract.settings import Settings
from app.playground.requests import (
    MAX_COLUMNS,
    MAX_ID,
    ColumnRef,
    PlaygroundRefused,
    Sampling,
    column_label,
    ensure_job,
    plan_columns,
    write_generations,
)
from app.playground.stream import is_ended
from app.tables import Generation, GenerationColumn, GenerationToken, PromptSet, Run

if TYPE_CHECKING:
    from app.jobs.supervisor import Supervisor

MAX_PROMPTS = 100


class PromptItem(BaseModel):
    """One prompt of a set."""

    model_config = ConfigDict(extra="forbid")

    system: str | None = Field(None, max_length=200_000, description="The system prompt, if any.")
    prompt: str = Field(max_length=200_000, description="The user message.")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt is empty: write something for the model to answer")
        return value


class PromptSetCreate(BaseModel):
    """The body of POST /api/prompt-sets."""

    model_config = ConfigDict(extra="forbid")

    run_id: int = Field(ge=1, le=MAX_ID, description="The run the set belongs to.")
    name: str = Field(max_length=100, description="A name, unique among the run's prompt sets.")
    prompts: list[PromptItem] = Field(min_length=1, max_length=MAX_PROMPTS, description="The prompts, in order.")
    settings: Sampling | None = Field(None, description="The settings to answer them with (temperature, top_p, "
                                                        "seed, max_tokens); kept with the set.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("name is empty: give the prompt set a name")
        return check_text(value, "name")


class PromptSetRun(Sampling):
    """The body of POST /api/prompt-sets/{id}/run: every prompt answered by these columns."""

    columns: list[ColumnRef | None] = Field(
        min_length=1, max_length=MAX_COLUMNS,
        description="The columns: null for the base model, or {run_id, iteration} of a checkpoint.")
    model: str | None = Field(None, max_length=4096,
                              description="The base model; default: the model the set's run was trained on.")


def prompt_set_json(prompt_set: PromptSet) -> dict[str, Any]:
    return {"id": prompt_set.id, "run_id": prompt_set.run_id, "name": prompt_set.name,
            "prompts": prompt_set.prompts, "settings": json.loads(prompt_set.settings_json),
            "created_at": prompt_set.created_at.isoformat()}


def create_prompt_set(session: Session, body: PromptSetCreate) -> PromptSet:
    """A new prompt set; 422 for a missing run, 409 for a name the run's sets already use."""
    if session.get(Run, body.run_id) is None:
        raise PlaygroundRefused(("run_id",), f"there is no run {body.run_id}")
    taken = session.exec(select(PromptSet).where(PromptSet.run_id == body.run_id, PromptSet.name == body.name)).first()
    if taken is not None:
        raise PlaygroundRefused(("name",), f"run {body.run_id} already has a prompt set named {body.name!r} "
                                           f"(prompt set {taken.id}): choose another name", status=409)
    prompts = [{"system": p.system if p.system and p.system.strip() else None, "prompt": p.prompt}
               for p in body.prompts]
    prompt_set = PromptSet(run_id=body.run_id, name=body.name, prompts_json=json.dumps(prompts, ensure_ascii=False),
                           settings_json=json.dumps(body.settings.as_request() if body.settings else {}))
    session.add(prompt_set)
    session.commit()
    session.refresh(prompt_set)
    return prompt_set


def list_prompt_sets(session: Session, run_id: int | None = None) -> list[PromptSet]:
    query = select(PromptSet)
    if run_id is not None:
        query = query.where(PromptSet.run_id == run_id)
    return list(session.exec(query.order_by(col(PromptSet.id).desc())).all())


def chat_of(item: dict[str, Any]) -> list[dict[str, str]]:
    system = item.get("system")
    return [*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": item["prompt"]}]


def run_prompt_set(session: Session, settings: Settings, supervisor: Supervisor, prompt_set: PromptSet,
                   body: PromptSetRun) -> list[int]:
    """One queued generation per prompt, answered by the columns; their ids, in prompt order."""
    model = body.model
    if not (model and model.strip()) and all(c is None for c in body.columns) and prompt_set.run_id is not None:
        run = session.get(Run, prompt_set.run_id)
        model = str(run.config.get("model", "")) if run is not None else None
    plan = plan_columns(session, settings, model, body.columns)
    requests = [{"messages": chat_of(item), **body.as_request(), "prompt_index": index}
                for index, item in enumerate(prompt_set.prompts)]
    generations = write_generations(session, plan, requests, prompt_set_id=prompt_set.id)
    ensure_job(session, settings, supervisor)
    return [g.id for g in generations if g.id is not None]


def column_from_form(value: str) -> ColumnRef | None:
    """A column picker's value: "base", or "<run id>:<iteration>"."""
    if value == "base":
        return None
    run_id, _, iteration = value.partition(":")
    if not (run_id.isdigit() and iteration.isdigit()):
        raise ValueError(f"pick the base model or a checkpoint (run:iteration), got {value[:40]!r}")
    return ColumnRef(run_id=int(run_id), iteration=int(iteration))


def saved_sampling(prompt_set: PromptSet) -> dict[str, Any]:
    """The temperature, top_p and seed the set was saved with (max_tokens is asked each time)."""
    saved = json.loads(prompt_set.settings_json) or {}
    return {key: saved[key] for key in ("temperature", "top_p", "seed") if key in saved}


def _key(column: GenerationColumn) -> tuple[int, int, int]:
    return (0, 0, 0) if column.run_id is None else (1, column.run_id, column.iteration or 0)


def outputs(session: Session, prompt_set: PromptSet) -> dict[str, Any]:
    """Per prompt, the newest answer of every model/checkpoint it was run on (text so far while it streams)."""
    generations = {g.id: g for g in session.exec(select(Generation).where(Generation.prompt_set_id == prompt_set.id)
                                                 .order_by(col(Generation.id))).all()}
    columns = session.exec(select(GenerationColumn).where(col(GenerationColumn.generation_id).in_(list(generations)))
                           .order_by(col(GenerationColumn.generation_id))).all() if generations else []
    running = [gid for gid, g in generations.items() if not is_ended(g.status)]
    partial: dict[tuple[int, int], str] = {}
    if running:
        for token in session.exec(select(GenerationToken).where(col(GenerationToken.generation_id).in_(running))
                                  .order_by(col(GenerationToken.id))).all():
            key = (token.generation_id, token.column_index)
            partial[key] = partial.get(key, "") + token.text
    cells: dict[tuple[int, tuple[int, int, int]], dict[str, Any]] = {}
    heads: dict[tuple[int, int, int], dict[str, Any]] = {}
    for column in columns:
        generation = generations[column.generation_id]
        if generation.prompt_index is None:
            continue
        key = _key(column)
        heads[key] = {"run_id": column.run_id, "iteration": column.iteration,
                      "label": column_label(column.run_id, column.iteration)}
        text = column.text if column.done else partial.get((column.generation_id, column.column_index), "")
        cells[(generation.prompt_index, key)] = {
            "generation_id": generation.id, "status": generation.status, "error": generation.error,
            "done": column.done, "text": text, "tokens": column.tokens,
            "tokens_per_second": column.tokens_per_second, "first_token_s": column.first_token_s,
            "finish_reason": column.finish_reason, "run_id": column.run_id, "iteration": column.iteration}
    order = sorted(heads)
    rows = [{"index": index, "system": item.get("system"), "prompt": item["prompt"],
             "cells": [cells.get((index, key)) for key in order]} for index, item in enumerate(prompt_set.prompts)]
    return {"columns": [heads[key] for key in order], "rows": rows, "live": bool(running)}


def prompt_set_detail(session: Session, prompt_set: PromptSet) -> dict[str, Any]:
    """GET /api/prompt-sets/{id}: the set and its outputs (per prompt, per model/checkpoint, the newest)."""
    table = outputs(session, prompt_set)
    flat = [{"prompt_index": row["index"], **cell} for row in table["rows"] for cell in row["cells"] if cell]
    return {**prompt_set_json(prompt_set), "columns": table["columns"], "outputs": flat, "live": table["live"]}
