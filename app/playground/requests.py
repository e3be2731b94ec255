"""Asking the playground for an answer: the request (GenerateRequest), every check made before a row is written,
writing the Generation and its columns in one transaction, and making sure one playground job is there to answer.

A request names up to four columns (the base model, or a checkpoint of a run), the prompt (plain, with an optional
system prompt, or chat messages) and the sampling settings. It is refused, with a sentence naming the field and
nothing written, when a run or checkpoint does not exist, a checkpoint's file is gone, a column's run was trained on
another base model than the one asked for, or the model cannot be found.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlmodel import Session, col, select

from app.catalog.info import HUB_ID, ModelInfoError, locate_model
from app.contract.kinds import PlaygroundParams
from app.contract.paths import MODEL_DIRS_SETTING, PathNotAllowed, checkpoint_files, confine, model_roots, run_dir
from app.contract.run_config import looks_like_path
from app.contract.settings import Settings
from app.contract.status import RunStatus
from app.jobs.jobs import Candidate, check_job, create_job, waiting_reason
from app.playground.kind import KIND, UNIT
from app.runs.store.runs import checkpoints_of
from app.tables import Generation, GenerationColumn, Job, Run

if TYPE_CHECKING:
    from app.jobs.supervisor import Supervisor

MAX_ID = 2**63 - 1  # SQLite's largest integer
MAX_COLUMNS = 4
ALIVE = (RunStatus.queued.value, RunStatus.starting.value, RunStatus.running.value)  # a job that will answer


class ColumnRef(BaseModel):
    """One checkpoint of a run, answering as one column."""

    model_config = ConfigDict(extra="forbid")

    run_id: int = Field(ge=1, le=MAX_ID, description="The run whose checkpoint answers.")
    iteration: int = Field(ge=1, le=MAX_ID, description="The checkpoint's iteration.")


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"] = Field(description="Who speaks: system, user or assistant.")
    content: str = Field(max_length=200_000, description="What is said.")


class Sampling(BaseModel):
    """How the answers are sampled (the same for every column, so that a comparison is fair)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(256, ge=1, le=4096, description="Stop each answer after this many new tokens.")
    temperature: float = Field(0.0, ge=0, le=100, allow_inf_nan=False,
                               description="Sampling temperature; 0 is greedy (the same answer every time).")
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False,
                         description="Sample from the smallest set of tokens whose probability reaches top_p.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Random seed of each column's sampler.")

    def as_request(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed}


class GenerateRequest(Sampling):
    """The body of POST /api/generate (and POST /api/generations, which only queues it)."""

    model: str | None = Field(None, max_length=4096, description="The base model (folder or hub id); default: "
                              "the model the columns' runs were trained on, or the embedded model.")
    adapters: list[ColumnRef | None] = Field(
        default_factory=lambda: [None], min_length=1, max_length=MAX_COLUMNS,
        description="The columns, left to right: null for the base model, or {run_id, iteration} of a checkpoint.")
    messages: list[Message] | None = Field(None, min_length=1, max_length=200,
                                           description="The conversation so far (give this or prompt).")
    prompt: str | None = Field(None, max_length=200_000, description="A user message (give this or messages).")
    system: str | None = Field(None, max_length=200_000, description="A system prompt put before `prompt`.")
    stream: bool = Field(True, description="Answer with server-sent events as tokens come; false: wait and "
                                           "answer the whole texts as JSON.")

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give either messages or prompt (one of them, not both)")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("prompt is empty: write something for the model to answer")
        if self.messages is not None:
            if self.system is not None:
                raise ValueError("system goes with prompt; with messages, make it the first message "
                                 "({'role': 'system', ...})")
            if not any(m.role == "user" and m.content.strip() for m in self.messages):
                raise ValueError("messages has no user message with text: the model has nothing to answer")
        return self

    def chat(self) -> list[dict[str, str]]:
        """The prompt as chat messages (a plain prompt is one user message, after the system prompt if any)."""
        if self.messages is not None:
            return [{"role": m.role, "content": m.content} for m in self.messages]
        chat = [{"role": "system", "content": self.system}] if self.system and self.system.strip() else []
        return [*chat, {"role": "user", "content": self.prompt or ""}]


class PlaygroundRefused(ValueError):
    """A request that cannot be answered: `loc` names the field, the message says what is wrong."""

    def __init__(self, loc: Sequence[str | int], message: str, status: int = 422) -> None:
        super().__init__(message)
        self.loc = tuple(loc)
        self.status = status

    def detail(self) -> list[dict[str, Any]] | str:
        if self.status != 422:
            return str(self)
        return [{"loc": ["body", *self.loc], "msg": str(self), "type": "value_error"}]


@dataclass(frozen=True)
class Plan:
    """What will be written: the base model every column loads and the columns, left to right."""

    model: str
    columns: list[tuple[int | None, int | None]]  # (run_id, iteration); (None, None) is the base model


# Pure rules ------------------------------------------------------------------------------------------------


def same_model(a: str, b: str) -> bool:
    """Whether two model names are the same base model: folders by their resolved path, hub ids as written."""
    if looks_like_path(a) and looks_like_path(b):
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    return a.strip() == b.strip()


def column_label(run_id: int | None, iteration: int | None) -> str:
    return "base model" if run_id is None else f"run {run_id} · iteration {iteration:,}"


# Checks ---------------------------------------------------------------------------------------------------


def _checked_column(session: Session, settings: Settings, index: int, ref: ColumnRef) -> Run:
    """The run of a checkpoint column whose files are all there."""
    run = session.get(Run, ref.run_id)
    if run is None:
        raise PlaygroundRefused(("adapters", index, "run_id"), f"there is no run {ref.run_id}")
    saved = [c.iteration for c in checkpoints_of(session, ref.run_id)]
    if ref.iteration not in saved:
        have = f"it has {', '.join(f'{it:,}' for it in saved)}" if saved else "it has none"
        raise PlaygroundRefused(("adapters", index, "iteration"),
                                f"run {ref.run_id} has no checkpoint at iteration {ref.iteration:,} ({have})")
    weights = checkpoint_files(settings, ref.run_id, ref.iteration)[0]
    config = run_dir(settings, ref.run_id) / "adapter_config.json"
    for needed in (weights, config):
        if not needed.is_file():
            raise PlaygroundRefused(("adapters", index), f"checkpoint file is missing: {needed} (checkpoint "
                                                         f"{ref.iteration:,} of run {ref.run_id} is gone from disk)")
    return run


def checked_model(settings: Settings, model: str, loc: Sequence[str | int] = ("model",)) -> str:
    """A model the worker can load: a folder inside the model folders holding config.json, or a hub id that is in
    the local cache (or may be downloaded). Folders come back resolved."""
    model = model.strip()
    if looks_like_path(model):
        try:
            folder = confine(model, model_roots(settings), "model folder", MODEL_DIRS_SETTING)
        except PathNotAllowed as exc:
            raise PlaygroundRefused(loc, str(exc)) from None
        if not (folder / "config.json").is_file():
            what = "does not exist" if not folder.exists() else "has no config.json (not a model folder)"
            raise PlaygroundRefused(loc, f"model folder {folder} {what}")
        return str(folder)
    if not HUB_ID.match(model):
        raise PlaygroundRefused(loc, f"'{model}' is neither a model folder nor a Hugging Face model id (org/name)")
    try:
        locate_model(model, settings)
    except ModelInfoError as exc:
        if settings.hf_offline:
            raise PlaygroundRefused(loc, str(exc)) from None
    return model


def plan_columns(session: Session, settings: Settings, model: str | None,
                 adapters: Sequence[ColumnRef | None]) -> Plan:
    """The base model and the columns, every one checked; PlaygroundRefused before anything is written."""
    if not 1 <= len(adapters) <= MAX_COLUMNS:
        raise PlaygroundRefused(("adapters",), f"give 1 to {MAX_COLUMNS} columns, got {len(adapters)}")
    trained: list[tuple[int, int, str]] = []  # (column, run id, its base model)
    for index, ref in enumerate(adapters):
        if ref is not None:
            run = _checked_column(session, settings, index, ref)
            trained.append((index, ref.run_id, str(run.config.get("model", ""))))
    if model is not None and model.strip():
        base = checked_model(settings, model)
        for index, run_id, run_model in trained:
            if not same_model(run_model, base):
                raise PlaygroundRefused(("adapters", index), f"run {run_id} was trained on {run_model}, not on the "
                                        f"requested model {base}: an adapter only fits its own base model")
    elif trained:
        first_run, base = trained[0][1], trained[0][2]
        for index, run_id, run_model in trained[1:]:
            if not same_model(run_model, base):
                raise PlaygroundRefused(("adapters", index), f"run {run_id} was trained on {run_model}, but run "
                                        f"{first_run} on {base}: the columns must share one base model")
        base = checked_model(settings, base, ("adapters", trained[0][0]))
    else:
        base = checked_model(settings, str(settings.default_model_dir))
    columns = [(None, None) if ref is None else (ref.run_id, ref.iteration) for ref in adapters]
    return Plan(base, columns)


# Writing --------------------------------------------------------------------------------------------------


def write_generations(session: Session, plan: Plan, requests: Sequence[dict[str, Any]],
                      prompt_set_id: int | None = None) -> list[Generation]:
    """Queued generations (one per request: {"messages", "max_tokens", ...}, with "prompt_index" for a prompt
    set) and their columns, in one transaction."""
    written = []
    for request in requests:
        index = request.pop("prompt_index", None)
        generation = Generation(model=plan.model, request_json=_json(request), prompt_set_id=prompt_set_id,
                                prompt_index=index)
        session.add(generation)
        session.flush()
        assert generation.id is not None
        for column, (run_id, iteration) in enumerate(plan.columns):
            session.add(GenerationColumn(generation_id=generation.id, column_index=column, run_id=run_id,
                                         iteration=iteration))
        written.append(generation)
    session.commit()
    for generation in written:
        session.refresh(generation)
    return written


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# The playground job ----------------------------------------------------------------------------------------


def live_job(session: Session, settings: Settings) -> Job | None:
    """The playground job that will answer queued generations (queued, starting or running; not stopping)."""
    jobs = session.exec(select(Job).where(Job.kind == KIND, col(Job.status).in_(ALIVE))
                        .order_by(col(Job.id).desc())).all()
    for job in jobs:
        if check_job(session, settings, job).status in ALIVE:
            return job
    return None


def would_wait(session: Session, settings: Settings, supervisor: Supervisor) -> str | None:
    """Why a prompt asked now would wait (a training run holds the memory), or None: it is answered at once."""
    job = live_job(session, settings)
    if job is not None and job.status != RunStatus.queued.value:
        return None
    allow = job.allow_while_training if job is not None else False
    reason = waiting_reason(Candidate(KIND, True, allow, resident=True), supervisor.holders(session),
                            settings.max_concurrent_runs)
    return reason


def ensure_job(session: Session, settings: Settings, supervisor: Supervisor) -> Job:
    """The live playground job, created (and started, when the memory is free) if there is none."""
    with supervisor.locked(session):
        job = live_job(session, settings)
        if job is None:
            job = create_job(session, KIND, PlaygroundParams(idle_s=settings.playground_idle_s), unit=UNIT)
    supervisor.start_queued_now(session)
    session.refresh(job)
    return job


def queue_generation(session: Session, settings: Settings, supervisor: Supervisor,
                     request: GenerateRequest, refuse_waiting: bool = False) -> tuple[Generation, Job]:
    """Check, write and hand the request to the playground job. refuse_waiting: a request that would wait for a
    training run is refused (409 with the reason) instead of queued."""
    plan = plan_columns(session, settings, request.model, request.adapters)
    if refuse_waiting:
        reason = would_wait(session, settings, supervisor)
        if reason is not None:
            raise PlaygroundRefused((), f"the playground {reason}: ask again when it has ended, or stream the "
                                        "answer (it starts by itself then)", status=409)
    generation = write_generations(session, plan, [{"messages": request.chat(), **request.as_request()}])[0]
    return generation, ensure_job(session, settings, supervisor)
