"""Figures of runs from grouped SQL aggregates: the run page's summary cards and the runs list's columns.

One query per kind of report answers for any number of runs (no per-report Python loops, no query per run),
so the runs list stays quick when every run has hundreds of thousands of reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func
from sqlmodel import Session, col, select

from app.contract.policy import format_duration
from app.runs.duration.recorded import estimate_view
from app.tables import Run, TrainReport, ValReport, utcnow


@dataclass(frozen=True)
class TrainFigures:
    """Aggregates over one run's training reports."""

    reports: int
    avg_tokens_per_second: float | None
    avg_iterations_per_second: float | None
    total_tokens: int | None
    peak_memory: float | None


@dataclass(frozen=True)
class ValFigures:
    """One run's first and best validation (the best: lowest loss, the later iteration on a tie)."""

    first_iteration: int
    first_loss: float
    best_iteration: int
    best_loss: float


def train_figures(session: Session, run_ids: Sequence[int]) -> dict[int, TrainFigures]:
    """Average speeds, tokens trained and peak memory per run, in one grouped query."""
    if not run_ids:
        return {}
    query = (
        select(
            TrainReport.run_id, func.count(), func.avg(TrainReport.tokens_per_second),
            func.avg(TrainReport.iterations_per_second), func.max(TrainReport.trained_tokens),
            func.max(TrainReport.peak_memory),
        )
        .where(col(TrainReport.run_id).in_(run_ids))
        .group_by(TrainReport.run_id)
    )
    return {
        run_id: TrainFigures(count, tps, its, tokens, memory)
        for run_id, count, tps, its, tokens, memory in session.exec(query).all()
    }


def val_figures(session: Session, run_ids: Sequence[int]) -> dict[int, ValFigures]:
    """First and best validation per run: two grouped queries, each joined back for its iteration or loss."""
    if not run_ids:
        return {}
    in_runs = col(ValReport.run_id).in_(run_ids)
    first_iter = (
        select(ValReport.run_id, func.min(ValReport.iteration).label("iteration"))
        .where(in_runs).group_by(ValReport.run_id).subquery()
    )
    first_query = (
        select(ValReport.run_id, ValReport.iteration, ValReport.val_loss)
        .join(first_iter, and_(ValReport.run_id == first_iter.c.run_id, ValReport.iteration == first_iter.c.iteration))
        .order_by(col(ValReport.id).desc())  # two reports at the first iteration: the earlier one wins
    )
    best_loss = (
        select(ValReport.run_id, func.min(ValReport.val_loss).label("val_loss"))
        .where(in_runs).group_by(ValReport.run_id).subquery()
    )
    best_query = (
        select(ValReport.run_id, func.max(ValReport.iteration), best_loss.c.val_loss)
        .join(best_loss, and_(ValReport.run_id == best_loss.c.run_id, ValReport.val_loss == best_loss.c.val_loss))
        .group_by(ValReport.run_id)
    )
    firsts = {run_id: (iteration, loss) for run_id, iteration, loss in session.exec(first_query).all()}
    figures = {}
    for run_id, best_iteration, best in session.exec(best_query).all():
        if run_id not in firsts:  # its first validation landed between the two reads: counted at the next one
            continue
        first_iteration, first = firsts[run_id]
        figures[run_id] = ValFigures(first_iteration, first, best_iteration, best)
    return figures


def improvement(first_loss: float | None, best_loss: float | None) -> tuple[float, float | None] | None:
    """(absolute drop, drop as a fraction of the first) from the first validation to the best one.

    None without both losses; the fraction is None when the first loss is not positive.
    """
    if first_loss is None or best_loss is None:
        return None
    drop = first_loss - best_loss
    return drop, (drop / first_loss if first_loss > 0 else None)


def as_utc(moment: datetime) -> datetime:
    """A stored time as aware UTC (SQLite keeps no zone: a naive time is UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def wall_seconds(started_at: datetime | None, finished_at: datetime | None, now: datetime) -> float | None:
    """Seconds from the start to the end (or to now while the run lasts); None before it started."""
    if started_at is None:
        return None
    end = as_utc(finished_at) if finished_at is not None else as_utc(now)
    return max(0.0, (end - as_utc(started_at)).total_seconds())


def summary_view(
    train: TrainFigures | None, val: ValFigures | None, wall_s: float | None, test_loss: float | None,
    useful_token_share: float | None = None,
) -> dict[str, Any]:
    """The summary cards' figures (numbers; None where there is nothing to show yet)."""
    gain = improvement(val.first_loss if val else None, val.best_loss if val else None)
    return {
        "best_val_loss": val.best_loss if val else None,
        "best_val_iteration": val.best_iteration if val else None,
        "first_val_loss": val.first_loss if val else None,
        "first_val_iteration": val.first_iteration if val else None,
        "improvement_abs": gain[0] if gain else None,
        "improvement_pct": 100.0 * gain[1] if gain and gain[1] is not None else None,
        "avg_tokens_per_second": train.avg_tokens_per_second if train else None,
        "avg_iterations_per_second": train.avg_iterations_per_second if train else None,
        "total_tokens": train.total_tokens if train else None,
        "peak_memory": train.peak_memory if train else None,
        "reports": train.reports if train else 0,
        "wall_seconds": wall_s,
        "wall_time": format_duration(wall_s),
        "test_loss": test_loss,
        "useful_token_share": useful_token_share,
    }


def run_summary(session: Session, run: Run) -> dict[str, Any]:
    """The figures of the run page's summary cards (its own reports; a continued run's parent is not counted)."""
    assert run.id is not None
    return {**summary_view(
        train_figures(session, [run.id]).get(run.id),
        val_figures(session, [run.id]).get(run.id),
        wall_seconds(run.started_at, run.finished_at, utcnow()),
        getattr(run, "test_loss", None),
        getattr(run, "useful_token_share", None),
    ), "estimate": estimate_view(run)}
