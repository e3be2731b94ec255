"""Pure: what the checkpoint table says about its checkpoints (no I/O).

- The best checkpoint is the one with the lowest validation loss (a tie goes to the later iteration). When the
  base model's validation loss (iteration 0, before any step) is lower than every checkpoint's, training made
  things worse: the table says so and calls that checkpoint "least bad", never plainly "best".
- The recommended checkpoint combines the evidence: among the checkpoints whose validation loss is within
  RECOMMEND_WITHIN of the best (validation loss on a few batches is noisy), the one with the best task score
  where one was measured, else the lowest test loss, else the best by validation. One sentence says why.
- Where the test loss is lowest at another checkpoint than the validation pick, it says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.contract.policy import HasValLoss, best_checkpoint

RECOMMEND_WITHIN = 0.01  # a validation loss within 1% of the best counts as equally good


@dataclass(frozen=True)
class Verdict:
    best: int | None  # the validation pick (lowest validation loss)
    best_label: str  # "best", or "least bad" when the base model beat every checkpoint
    warning: str | None  # the base model was better: what happened, and what to change
    recommended: int | None
    reason: str | None  # why recommended (or why none is), one sentence
    test_best: int | None  # the checkpoint with the lowest measured test loss
    disagreement: str | None  # the test minimum is not at the validation pick


def base_was_better(base_val: float | None, checkpoints: Sequence[HasValLoss]) -> bool:
    losses = [c.val_loss for c in checkpoints if c.val_loss is not None]
    return base_val is not None and bool(losses) and base_val < min(losses)


def _lowest(values: Mapping[int, float]) -> int | None:
    """The iteration with the lowest value (a tie: the later)."""
    return min(values, key=lambda it: (values[it], -it)) if values else None


def checkpoint_verdict(
    base_val: float | None,
    checkpoints: Sequence[HasValLoss],
    test_loss: Mapping[int, float],
    task_score: Mapping[int, float],
    split: str = "test",
) -> Verdict:
    """The table's labels and sentences; test_loss/task_score: by checkpoint iteration (the base model excluded)."""
    best = best_checkpoint(checkpoints)
    measured = {c.iteration for c in checkpoints}
    test = {it: loss for it, loss in test_loss.items() if it in measured}
    test_best = _lowest(test)
    disagreement = None
    if best is not None and test_best is not None and test_best != best.iteration and best.iteration in test:
        disagreement = (f"{split} loss is lowest at iteration {test_best:,} ({test[test_best]:.3f}), not at the "
                        f"validation pick {best.iteration:,} ({test[best.iteration]:.3f})")
    if best is None or best.val_loss is None:
        return Verdict(None, "best", None, None, None, test_best, None)
    if base_was_better(base_val, checkpoints):
        warning = (f"no checkpoint improved on the base model (val {base_val:.3f} at iteration 0); training made "
                   "validation loss worse — lower the learning rate")
        reason = "none recommended: the base model has the lowest validation loss"
        return Verdict(best.iteration, "least bad", warning, None, reason, test_best, disagreement)
    limit = best.val_loss * (1 + RECOMMEND_WITHIN) if best.val_loss > 0 else best.val_loss
    near = [c.iteration for c in checkpoints if c.val_loss is not None and c.val_loss <= limit]
    alone = (f"the lowest validation loss ({best.val_loss:.3f}); no other checkpoint is within "
             f"{RECOMMEND_WITHIN:.0%} of it")
    among = (f"among the {len(near)} checkpoints within {RECOMMEND_WITHIN:.0%} of the best validation loss "
             f"({best.val_loss:.3f} at {best.iteration:,})")
    scores = {it: task_score[it] for it in near if it in task_score}
    if scores:
        pick = max(scores, key=lambda it: (scores[it], -test.get(it, 0.0), it))
        reason = (f"{alone}, and a task score of {scores[pick]:.3f}" if len(near) == 1
                  else f"the highest task score ({scores[pick]:.3f}) {among}")
        return Verdict(best.iteration, "best", None, pick, f"iteration {pick:,}: {reason}", test_best, disagreement)
    tested = {it: test[it] for it in near if it in test}
    if tested:
        pick = _lowest(tested)
        assert pick is not None
        reason = (f"{alone}, and a {split} loss of {tested[pick]:.3f}" if len(near) == 1
                  else f"the lowest {split} loss ({tested[pick]:.3f}) {among}")
        return Verdict(best.iteration, "best", None, pick, f"iteration {pick:,}: {reason}", test_best, disagreement)
    return Verdict(best.iteration, "best", None, best.iteration,
                   f"iteration {best.iteration:,}: the lowest validation loss ({best.val_loss:.3f}); evaluate the "
                   "checkpoints on the test split to check the pick", test_best, disagreement)
