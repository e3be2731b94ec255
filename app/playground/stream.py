"""Reading a generation as the playground worker writes it: the event stream (one event per token per column, per
column its figures, then the end) and the whole answer for a caller that waits.

The worker commits a column's tokens before the column's end, and every column's end before the generation's; so
reading the generation, then its columns, then its tokens never shows an end whose tokens are not there yet.
A generation whose worker died is failed here; one left queued with no playground job to answer it (released
before it started) is stopped, so that no stream waits forever.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from fastapi.sse import ServerSentEvent
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.contract.settings import Settings
from app.contract.status import TERMINAL, RunStatus
from app.jobs.jobs import as_utc, check_job
from app.playground.requests import live_job
from app.tables import Generation, GenerationColumn, GenerationToken, Job, utcnow

POLL_S = 0.05  # how often a stream looks for new tokens
WAIT_POLL_S = 0.1  # how often a caller that waits for the whole answer looks
TOKENS_PER_READ = 2000
ORPHAN_GRACE_S = 5.0  # a queued generation is given this long for its playground job to be created


def is_ended(status: str) -> bool:
    return RunStatus(status) in TERMINAL


def settle(session: Session, settings: Settings, generation: Generation) -> Generation:
    """Fail a generation whose worker is gone, stop one nobody will answer; the same row, refreshed."""
    if generation.status == RunStatus.running.value and generation.job_id is not None:
        job = session.get(Job, generation.job_id)
        if job is not None:
            job = check_job(session, settings, job)
        if job is None or job.is_terminal:
            ended = f"{job.status}: {job.error}" if job is not None and job.error else (job.status if job else "gone")
            _end(session, generation, RunStatus.running.value, RunStatus.failed.value,
                 f"the playground worker ended ({ended}) before this answer was finished")
    elif generation.status == RunStatus.queued.value:
        old = utcnow() - as_utc(generation.created_at) > timedelta(seconds=ORPHAN_GRACE_S)
        if old and live_job(session, settings) is None:
            _end(session, generation, RunStatus.queued.value, RunStatus.stopped.value,
                 "the playground was released before this prompt was answered")
    session.refresh(generation)
    return generation


def _end(session: Session, generation: Generation, was: str, status: str, error: str) -> None:
    """End the generation unless the worker changed it meanwhile (compare and set)."""
    session.execute(update(Generation).where(col(Generation.id) == generation.id, col(Generation.status) == was)
                    .values(status=status, error=error, finished_at=utcnow()))
    session.commit()


def column_json(column: GenerationColumn) -> dict[str, Any]:
    return {"column": column.column_index, "run_id": column.run_id, "iteration": column.iteration,
            "text": column.text, "tokens": column.tokens, "prompt_tokens": column.prompt_tokens,
            "tokens_per_second": column.tokens_per_second, "first_token_s": column.first_token_s,
            "finish_reason": column.finish_reason, "done": column.done}


def columns_of(session: Session, generation_id: int) -> list[GenerationColumn]:
    return list(session.exec(select(GenerationColumn).where(GenerationColumn.generation_id == generation_id)
                             .order_by(col(GenerationColumn.column_index))).all())


@dataclass
class Snapshot:
    """What a stream has not sent yet."""

    status: str
    error: str | None
    reason: str | None  # why it waits (the playground job's waiting reason), while queued
    job_id: int | None
    columns: list[dict[str, Any]]
    tokens: list[dict[str, Any]] = field(default_factory=list)  # {"id", "column", "seq", "text"}
    more: bool = False  # more tokens than one read takes: read again before ending anything


def read_snapshot(engine: Engine, settings: Settings, generation_id: int, after_token: int) -> Snapshot | None:
    """The generation, its columns and its tokens after `after_token` (in that order; see the module's note)."""
    with Session(engine) as session:
        generation = session.get(Generation, generation_id)
        if generation is None:
            return None
        generation = settle(session, settings, generation)
        reason, job_id = None, generation.job_id
        if generation.status == RunStatus.queued.value:
            job = live_job(session, settings)
            if job is not None:
                reason, job_id = job.waiting_reason, job.id
        columns = [column_json(c) for c in columns_of(session, generation_id)]
        rows = session.exec(select(GenerationToken).where(GenerationToken.generation_id == generation_id,
                                                          col(GenerationToken.id) > after_token)
                            .order_by(col(GenerationToken.id)).limit(TOKENS_PER_READ)).all()
        tokens = [{"id": t.id, "column": t.column_index, "seq": t.seq, "text": t.text} for t in rows]
        return Snapshot(generation.status, generation.error, reason, job_id, columns, tokens,
                        more=len(rows) == TOKENS_PER_READ)


def _figures(column: dict[str, Any]) -> dict[str, Any]:
    keys = ("column", "text", "tokens", "tokens_per_second", "first_token_s", "finish_reason")
    return {key: column[key] for key in keys}


async def generation_events(
    engine: Engine, settings: Settings, generation_id: int, *, after_token: int = 0,
    stopping: threading.Event | None = None, disconnected: Callable[[], Any] | None = None,
    max_s: float | None = None,
) -> AsyncIterator[ServerSentEvent]:
    """`token` {column, seq, text} per token (its id is the token's), `column` {column, text, tokens,
    tokens_per_second, first_token_s, finish_reason} when a column ends, `waiting` {reason, job_id} while the
    playground waits for memory, then `done` {generation_id, status, error}."""
    deadline = time.monotonic() + max_s if max_s is not None else None
    sent_columns: set[int] = set()
    last_reason: str | None = None
    while True:
        snap = await asyncio.to_thread(read_snapshot, engine, settings, generation_id, after_token)
        if snap is None:  # deleted (with its prompt set)
            yield ServerSentEvent(event="done", data={"generation_id": generation_id, "status": "deleted",
                                                      "error": "the generation was deleted"})
            return
        for token in snap.tokens:
            after_token = token["id"]
            yield ServerSentEvent(event="token", id=str(token["id"]),
                                  data={"column": token["column"], "seq": token["seq"], "text": token["text"]})
        if snap.more:
            continue
        for column in snap.columns:
            if column["done"] and column["column"] not in sent_columns:
                sent_columns.add(column["column"])
                yield ServerSentEvent(event="column", data=_figures(column))
        if is_ended(snap.status):
            yield ServerSentEvent(event="done", data={"generation_id": generation_id, "status": snap.status,
                                                      "error": snap.error})
            return
        if snap.status == RunStatus.queued.value and snap.reason and snap.reason != last_reason:
            yield ServerSentEvent(event="waiting", data={"reason": snap.reason, "job_id": snap.job_id})
        last_reason = snap.reason if snap.status == RunStatus.queued.value else None
        if (stopping is not None and stopping.is_set()) or (deadline is not None and time.monotonic() > deadline):
            return
        if disconnected is not None and await disconnected():
            return
        await asyncio.sleep(POLL_S)


def wait_for_end(engine: Engine, settings: Settings, generation_id: int,
                 stopping: threading.Event | None = None) -> tuple[Generation, list[GenerationColumn]]:
    """Poll until the generation has ended (or the server stops); the generation and its columns."""
    while True:
        with Session(engine) as session:
            generation = session.get(Generation, generation_id)
            if generation is None:
                raise LookupError(f"generation {generation_id} was deleted")
            generation = settle(session, settings, generation)
            if is_ended(generation.status) or (stopping is not None and stopping.is_set()):
                return generation, columns_of(session, generation_id)
        time.sleep(WAIT_POLL_S)


def outputs(columns: list[GenerationColumn]) -> list[dict[str, Any]]:
    """The non-streamed answer: one entry per column, in order."""
    return [{"text": c.text, "tokens": c.tokens, "tokens_per_second": c.tokens_per_second,
             "first_token_s": c.first_token_s, "finish_reason": c.finish_reason} for c in columns]
