"""A run's recorded estimate beside what it measured: the columns written when it is created (app/runs/duration/
estimate.py) and when it ends (worker/throughput.py), as the run page and GET /api/runs/{id} show them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.contract.policy import format_duration
from app.tables import TERMINAL, Run, RunStatus

if TYPE_CHECKING:
    from app.runs.duration.estimate import RunEstimate


def record_estimate(run: Run, estimate: RunEstimate | None) -> None:
    """The estimate's figures on the run row (committed by its creator)."""
    if estimate is None or estimate.stats != "ready":
        return
    run.estimated_useful_share = estimate.useful_share
    run.estimated_wall_s = estimate.wall.seconds if estimate.wall else None
    run.estimate_basis = estimate.wall.basis if estimate.wall else estimate.no_speed


def measured_wall_s(run: Run) -> float | None:
    """Seconds from the worker's start to the run's end, once it ended."""
    if run.started_at is None or run.finished_at is None or RunStatus(run.status) not in TERMINAL:
        return None
    return (run.finished_at - run.started_at).total_seconds()


def estimate_json(run: Run) -> dict[str, Any]:
    """The estimate recorded at creation and, once the run ended, the measured figures beside it."""
    measured = measured_wall_s(run)
    estimated = run.estimated_wall_s
    return {
        "wall_s": estimated, "useful_token_share": run.estimated_useful_share, "basis": run.estimate_basis,
        "measured_wall_s": measured,
        "wall_ratio": measured / estimated if measured is not None and estimated else None,
        "positions_per_s": run.positions_per_s,
        "position_params_per_s": run.positions_per_s * run.total_params if run.positions_per_s and run.total_params
        else None,
        "train_positions": run.train_positions, "train_seconds": run.train_seconds,
    }


def estimate_view(run: Run) -> dict[str, Any] | None:
    """The run page's estimate card: texts for the estimate and, once ended, the measurement; None without one."""
    facts = estimate_json(run)
    if facts["wall_s"] is None and facts["useful_token_share"] is None:
        return None
    wall = facts["wall_s"]
    measured = facts["measured_wall_s"]
    return {**facts, "wall_text": format_duration(wall) if wall is not None else None,
            "measured_text": format_duration(measured) if measured is not None else None}
