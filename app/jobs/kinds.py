"""The kinds of job. A kind adds its parameters (a pydantic model), its worker function (named in
worker/job.py's registry) and its view: the result in one line and what the job concerns (a link).

needs_model_memory: the job loads the model (evaluate, generate, fuse, serve do); it waits while a
run trains or another such job runs (app/jobs/jobs.waiting_reason). token_stats only tokenizes.
resident: the job keeps a model loaded until it is released (the playground, a server): it waits for a
training run like any memory job, a run waits for it, but other jobs neither wait for it nor make it wait.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel
from sqlmodel import Session

from app.contract.kinds import (
    EvaluateParams,
    FuseParams,
    GgufParams,
    PlaygroundParams,
    QuantizeParams,
    ServeParams,
    TokenStatsParams,
)
from app.datasets import token_stats
from app.evaluation import requests as evaluation
from app.evaluation.results import result_summary as evaluation_summary
from app.models import gguf
from app.models import requests as model_jobs
from app.playground import kind as playground
from app.serving import requests as serving
from app.tables import Job


@dataclass(frozen=True)
class JobKind:
    name: str  # the job table's `kind`, and the worker registry's key
    label: str  # in words, for pages
    params: type[BaseModel]
    needs_model_memory: bool
    summary: Callable[[Job], str]  # a completed job's result in one line
    subject: Callable[[Session, Job], tuple[str, str | None]]  # (words, link) of what it concerns
    resident: bool = False  # stays loaded until released (playground, serve)


def run_subject(_session: Session, job: Job) -> tuple[str, str | None]:
    """A job about a run (or one of its checkpoints): the run's page."""
    if job.run_id is None:
        return "", None
    what = f"run {job.run_id}" + (f", checkpoint {job.iteration:,}" if job.iteration is not None else "")
    return what, f"/runs/{job.run_id}"


KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind(token_stats.KIND, "token statistics", TokenStatsParams, needs_model_memory=False,
                summary=token_stats.result_summary, subject=token_stats.subject),
        JobKind(evaluation.KIND, "evaluation", EvaluateParams, needs_model_memory=True,
                summary=evaluation_summary, subject=run_subject),
        JobKind(playground.KIND, "playground", PlaygroundParams, needs_model_memory=True,
                summary=playground.result_summary, subject=playground.subject, resident=True),
        JobKind(serving.KIND, "server", ServeParams, needs_model_memory=True, resident=True,
                summary=serving.result_summary, subject=serving.subject),
        JobKind(model_jobs.FUSE_KIND, "fuse", FuseParams, needs_model_memory=True,
                summary=model_jobs.result_summary, subject=model_jobs.subject),
        JobKind(model_jobs.QUANTIZE_KIND, "quantize", QuantizeParams, needs_model_memory=True,
                summary=model_jobs.result_summary, subject=model_jobs.subject),
        JobKind(gguf.KIND, "GGUF export", GgufParams, needs_model_memory=True,
                summary=gguf.result_summary, subject=gguf.subject),
    )
}


def kind_of(job: Job) -> JobKind | None:
    return KINDS.get(job.kind)


def needs_memory(job: Job) -> bool:
    """A job of an unknown kind is taken to need the model's memory (the safe side)."""
    kind = KINDS.get(job.kind)
    return kind.needs_model_memory if kind is not None else True


def is_resident(job: Job) -> bool:
    kind = KINDS.get(job.kind)
    return kind.resident if kind is not None else False


def describe(session: Session, job: Job) -> dict[str, str | None]:
    """label, what it concerns (words and link) and the result's line, for the jobs page."""
    kind = KINDS.get(job.kind)
    if kind is None:
        return {"label": job.kind, "subject": None, "link": None, "summary": ""}
    words, link = kind.subject(session, job)
    if not words and job.run_id is not None:
        words, link = run_subject(session, job)
    summary = kind.summary(job) if job.status == "completed" else ""
    return {"label": kind.label, "subject": words or None, "link": link, "summary": summary}
