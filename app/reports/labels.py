"""Pure: the status column of the report's validation table, and the training table's sampling.

Each evaluation is labelled by these rules, first match wins:

- baseline: the first evaluation;
- best / best (tied): its loss is the lowest of the run (shared with another evaluation: tied) — the chart's
  best marker sits on the later of tied points;
- overfitting: it ends a stretch where validation loss rose while training loss fell, as
  app.contract.policy.overfitting_spans finds them (the same stretches the chart shades);
- improving: lower than the evaluation before it;
- slight increase: not lower than the one before, and at most SLIGHT_RISE (2%) above the best so far;
- degrading: more than SLIGHT_RISE above the best so far.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

SLIGHT_RISE = 0.02  # a loss at most 2% above the best so far is a slight increase; more is degrading

BASELINE = "baseline"
BEST = "best"
BEST_TIED = "best (tied)"
OVERFITTING = "overfitting"
IMPROVING = "improving"
SLIGHT = "slight increase"
DEGRADING = "degrading"

LEGEND = (
    f"{BASELINE}: the first evaluation; {BEST}: the lowest validation loss of the run ({BEST_TIED}: shared with "
    f"another evaluation); {OVERFITTING}: validation loss rose by more than 1% since the evaluation before while "
    f"training loss fell (the chart's shaded stretches); {IMPROVING}: lower than the evaluation before; {SLIGHT}: "
    f"not lower, and at most {SLIGHT_RISE:.0%} above the best so far; {DEGRADING}: more than {SLIGHT_RISE:.0%} "
    "above the best so far."
)

T = TypeVar("T")


def val_statuses(
    val: Sequence[tuple[int, float]], spans: Sequence[tuple[int, int]], slight: float = SLIGHT_RISE
) -> list[str]:
    """One status per (iteration, val loss), in order; spans: the overfitting stretches (start, end)."""
    finite = [loss for _, loss in val if math.isfinite(loss)]
    lowest = min(finite) if finite else None
    tied = sum(1 for loss in finite if loss == lowest) > 1
    statuses: list[str] = []
    best_so_far: float | None = None
    previous: float | None = None
    for index, (iteration, loss) in enumerate(val):
        if index == 0:
            status = BASELINE
        elif lowest is not None and loss == lowest:
            status = BEST_TIED if tied else BEST
        elif any(start < iteration <= end for start, end in spans):
            status = OVERFITTING
        elif previous is not None and math.isfinite(loss) and loss < previous:
            status = IMPROVING
        elif best_so_far is not None and math.isfinite(loss) and loss <= best_so_far * (1 + slight):
            status = SLIGHT
        else:
            status = DEGRADING
        statuses.append(status)
        if math.isfinite(loss):
            best_so_far = loss if best_so_far is None else min(best_so_far, loss)
        previous = loss
    return statuses


def sample_rows(rows: Sequence[T], limit: int = 15) -> list[T]:
    """At most `limit` rows, evenly spread, always keeping the first and the last."""
    if limit < 2:
        raise ValueError(f"limit must be at least 2, not {limit}")
    if len(rows) <= limit:
        return list(rows)
    last = len(rows) - 1
    picked = sorted({round(k * last / (limit - 1)) for k in range(limit)})
    return [rows[i] for i in picked]
