"""The queue of runs waiting to train: its order, moving a run in it, cancelling runs from it.

Queued runs start in queue order: by `queue_position` (a run never moved has none and waits
behind those that have one), then oldest first. Moving a run renumbers the whole queue 1..n.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from sqlalchemy import update
from sqlmodel import Session, col, select

from app.tables import Run, RunStatus, utcnow

QueueMove = Literal["top", "bottom", "up", "down"]
QUEUE_MOVES: tuple[str, ...] = get_args(QueueMove)
CANCELLED_REASON = "cancelled while queued"


class NotQueuedError(ValueError):
    """The run is not waiting in the queue (it has started or ended)."""


def queue_order() -> tuple[Any, ...]:
    """ORDER BY terms of the queue: positioned runs first, by position, then the rest oldest first."""
    return (col(Run.queue_position).is_(None), col(Run.queue_position), col(Run.id))


def queued_runs(session: Session, limit: int | None = None) -> list[Run]:
    """The queued runs in the order they will start."""
    query = select(Run).where(Run.status == RunStatus.queued.value).order_by(*queue_order())
    if limit is not None:
        query = query.limit(limit)
    return list(session.exec(query).all())


def moved(order: list[int], run_id: int, move: str) -> list[int]:
    """The queue order with run_id moved to the top or bottom, or one place up or down.

    A run already at the end it is moved towards stays where it is.
    """
    if run_id not in order:
        raise NotQueuedError(f"run {run_id} is not in the queue")
    if move not in QUEUE_MOVES:
        raise ValueError(f"unknown move {move!r}: expected one of {', '.join(QUEUE_MOVES)}")
    rest = [other for other in order if other != run_id]
    index = order.index(run_id)
    target = {"top": 0, "bottom": len(rest), "up": max(index - 1, 0), "down": min(index + 1, len(rest))}[move]
    return [*rest[:target], run_id, *rest[target:]]


def move_in_queue(session: Session, run: Run, move: str) -> list[int]:
    """Move a queued run; every queued run gets its new position. Returns the new order (run ids).

    Each position is one statement that only touches a run still queued: a run that another request cancelled,
    started or deleted since the queue was read keeps what that request did, and leaves the order."""
    assert run.id is not None
    session.refresh(run)
    if run.status != RunStatus.queued.value:
        raise NotQueuedError(f"run {run.id} is {run.status.replace('_', ' ')}, not queued: only a queued run "
                             "can be moved in the queue")
    order = moved([queued.id for queued in queued_runs(session) if queued.id is not None], run.id, move)
    placed: list[int] = []
    for position, run_id in enumerate(order, start=1):
        result = session.exec(  # type: ignore[call-overload]
            update(Run).where(col(Run.id) == run_id, col(Run.status) == RunStatus.queued.value)
            .values(queue_position=position).returning(Run.id))
        if result.first() is not None:
            placed.append(run_id)
    session.commit()
    session.expire_all()
    if run.id not in placed:
        raise NotQueuedError(f"run {run.id} left the queue while it was being moved")
    return placed


def cancel_queued(session: Session, run_ids: list[int] | None = None) -> list[int]:
    """End queued runs as `stopped` (all of them, or those of run_ids that are still queued): one
    statement that only touches rows still queued, so a run that has just started is left alone."""
    query = select(Run.id).where(Run.status == RunStatus.queued.value)
    if run_ids is not None:
        query = query.where(col(Run.id).in_(run_ids))
    ids = [run_id for run_id in session.exec(query).all() if run_id is not None]
    if not ids:
        return []
    result = session.exec(  # type: ignore[call-overload]
        update(Run)
        .where(col(Run.id).in_(ids), Run.status == RunStatus.queued.value)
        .values(status=RunStatus.stopped.value, stop_requested=True, finished_at=utcnow(),
                stop_reason=CANCELLED_REASON, queue_position=None)
        .returning(Run.id)
    )
    cancelled = sorted(row[0] for row in result.all())
    session.commit()
    session.expire_all()
    return cancelled
