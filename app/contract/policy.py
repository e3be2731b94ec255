"""Pure decisions over recorded numbers (no I/O): best checkpoint, progress and ETA."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar


class HasValLoss(Protocol):
    iteration: int
    val_loss: float | None


T = TypeVar("T", bound=HasValLoss)


def best_checkpoint(checkpoints: Sequence[T]) -> T | None:
    """Lowest validation loss; on a tie the later iteration wins (more data seen, same loss)."""
    best: T | None = None
    for ckpt in checkpoints:
        if ckpt.val_loss is None:
            continue
        if best is None or best.val_loss is None or ckpt.val_loss < best.val_loss or (
            ckpt.val_loss == best.val_loss and ckpt.iteration > best.iteration
        ):
            best = ckpt
    return best


def eta_seconds(iteration: int, total: int, elapsed_s: float) -> float | None:
    """Remaining seconds at the average pace so far; None before there is a pace."""
    if iteration <= 0 or elapsed_s <= 0 or total <= iteration:
        return None if total > iteration else 0.0
    return elapsed_s / iteration * (total - iteration)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def rough_duration(seconds: float) -> str:
    """A duration as a person says it in passing: "40 s", "2 min", "1 h 5 min"."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


@dataclass(frozen=True)
class EarlyStopDecision:
    stop: bool
    best_iteration: int | None
    best_loss: float | None
    evaluations_since_best: int

    def reason(self, stopped_at: int) -> str:
        evals = "evaluation" if self.evaluations_since_best == 1 else "evaluations"
        return (
            f"validation loss has not improved on {self.best_loss:.3f} (iteration {self.best_iteration:,}) "
            f"for {self.evaluations_since_best} {evals}; stopped at iteration {stopped_at:,}"
        )


def early_stop_decision(
    val_losses: Sequence[tuple[int, float]], *, patience: int, min_delta: float
) -> EarlyStopDecision:
    """Whether to stop, given (iteration, val loss) pairs in order of evaluation.

    An evaluation counts as an improvement when it is at least `min_delta` below the best so
    far; with min_delta 0 a tie counts too, so the later of two equal losses is the reference
    (more data seen at the same loss). Stop once `patience` evaluations in a row did not improve.
    """
    best_iteration: int | None = None
    best_loss: float | None = None
    since = 0
    for iteration, loss in val_losses:
        if loss != loss:  # NaN never improves
            since += 1
            continue
        if best_loss is None or loss <= best_loss - min_delta:
            best_iteration, best_loss, since = iteration, loss, 0
        else:
            since += 1
    return EarlyStopDecision(since >= patience and best_loss is not None, best_iteration, best_loss, since)


def overfitting_spans(
    train: Sequence[tuple[int, float]], val: Sequence[tuple[int, float]], min_rise: float = 0.01
) -> list[tuple[int, int]]:
    """Stretches between evaluations where validation loss rose while train loss fell.

    A rise counts when it is more than `min_rise` (relative: 0.01 is 1%), so the noise of a
    sampled validation loss is not called overfitting. Train loss at an evaluation is the last
    one reported at or before it (both series sorted by iteration). Adjacent stretches merge;
    each is (start iteration, end iteration).
    """
    train_at: list[float | None] = []
    i, last = 0, None
    for iteration, _ in val:  # one merge pass: O(len(train) + len(val))
        while i < len(train) and train[i][0] <= iteration:
            last = train[i][1]
            i += 1
        train_at.append(last)
    spans: list[tuple[int, int]] = []
    for k in range(1, len(val)):
        (it0, v0), (it1, v1), t0, t1 = val[k - 1], val[k], train_at[k - 1], train_at[k]
        if v1 > v0 * (1 + min_rise) and t0 is not None and t1 is not None and t1 < t0:
            if spans and spans[-1][1] == it0:
                spans[-1] = (spans[-1][0], it1)
            else:
                spans.append((it0, it1))
    return spans


def divergence(kind: str, loss: float, iteration: int, learning_rate: float | None) -> str | None:
    """Why a run must stop because a loss is not a finite number (NaN or infinite), or None."""
    if math.isfinite(loss):
        return None
    advice = f"lower the learning rate (now {learning_rate:g})" if learning_rate else "lower the learning rate"
    return (f"{kind} loss became {loss} at iteration {iteration}: training diverged; {advice}, "
            "add warm-up, or continue from an earlier checkpoint")
