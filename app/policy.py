"""Pure decisions over recorded numbers (no I/O): best checkpoint, progress and ETA."""

from __future__ import annotations

from collections.abc import Sequence
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
