"""Pure: the checkpoint table's verdict, and which evaluation rows a page shows (hand-made numbers)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.evaluation.results import newest_per_checkpoint
from app.evaluation.verdict import base_was_better, checkpoint_verdict
from app.tables import Evaluation


@dataclass(frozen=True)
class Ckpt:
    iteration: int
    val_loss: float | None


CKPTS = [Ckpt(100, 2.0), Ckpt(200, 1.5), Ckpt(300, 1.51), Ckpt(400, 1.8)]


def test_the_best_is_the_lowest_validation_loss_and_a_tie_goes_to_the_later() -> None:
    verdict = checkpoint_verdict(3.0, CKPTS, {}, {})
    assert (verdict.best, verdict.best_label, verdict.warning) == (200, "best", None)
    assert checkpoint_verdict(3.0, [Ckpt(100, 1.0), Ckpt(200, 1.0)], {}, {}).best == 200


def test_no_validation_loss_gives_no_best_and_no_recommendation() -> None:
    verdict = checkpoint_verdict(None, [Ckpt(100, None)], {}, {})
    assert (verdict.best, verdict.recommended, verdict.reason, verdict.warning) == (None, None, None, None)


def test_without_test_figures_the_validation_pick_is_recommended_and_test_is_suggested() -> None:
    verdict = checkpoint_verdict(3.0, CKPTS, {}, {})
    assert verdict.recommended == 200
    assert verdict.reason is not None and "lowest validation loss (1.500)" in verdict.reason
    assert "evaluate the checkpoints on the test split" in verdict.reason


def test_within_one_percent_the_best_task_score_wins() -> None:
    # 300 is within 1% of 200's validation loss and answers better; 100 answers best but is far behind
    verdict = checkpoint_verdict(3.0, CKPTS, {200: 1.4, 300: 1.45}, {100: 0.9, 200: 0.5, 300: 0.6})
    assert (verdict.best, verdict.recommended) == (200, 300)
    assert verdict.reason == ("iteration 300: the highest task score (0.600) among the 2 checkpoints within 1% of "
                              "the best validation loss (1.500 at 200)")


def test_a_pick_alone_within_one_percent_is_said_as_such() -> None:
    alone = [Ckpt(100, 2.0), Ckpt(200, 1.5), Ckpt(300, 1.8)]
    scored = checkpoint_verdict(3.0, alone, {200: 1.4}, {200: 0.422, 300: 0.9})
    assert scored.reason == ("iteration 200: the lowest validation loss (1.500); no other checkpoint is within 1% "
                             "of it, and a task score of 0.422")
    tested = checkpoint_verdict(3.0, alone, {200: 1.4, 300: 1.2}, {}, split="valid")
    assert tested.reason == ("iteration 200: the lowest validation loss (1.500); no other checkpoint is within 1% "
                             "of it, and a valid loss of 1.400")


def test_within_one_percent_without_scores_the_lowest_test_loss_wins() -> None:
    verdict = checkpoint_verdict(3.0, CKPTS, {100: 1.0, 200: 1.45, 300: 1.41}, {})
    assert verdict.recommended == 300
    assert verdict.reason is not None and verdict.reason.startswith("iteration 300: the lowest test loss (1.410)")


def test_a_test_minimum_away_from_the_validation_pick_is_said() -> None:
    verdict = checkpoint_verdict(3.0, CKPTS, {100: 1.0, 200: 1.45, 300: 1.41}, {})
    assert verdict.test_best == 100
    assert verdict.disagreement == ("test loss is lowest at iteration 100 (1.000), not at the validation pick 200 "
                                    "(1.450)")
    agreeing = checkpoint_verdict(3.0, CKPTS, {100: 1.6, 200: 1.4}, {})
    assert (agreeing.test_best, agreeing.disagreement) == (200, None)
    unmeasured = checkpoint_verdict(3.0, CKPTS, {100: 1.0}, {}, split="valid")  # the pick was not measured
    assert (unmeasured.test_best, unmeasured.disagreement) == (100, None)


def test_a_base_model_better_than_every_checkpoint_gives_least_bad_and_no_recommendation() -> None:
    assert base_was_better(1.4, CKPTS) and not base_was_better(1.5, CKPTS) and not base_was_better(None, CKPTS)
    verdict = checkpoint_verdict(1.4, CKPTS, {200: 1.3}, {200: 0.9})
    assert (verdict.best, verdict.best_label, verdict.recommended) == (200, "least bad", None)
    assert verdict.warning is not None and verdict.warning.startswith(
        "no checkpoint improved on the base model (val 1.400 at iteration 0)")
    assert verdict.reason == "none recommended: the base model has the lowest validation loss"


T0 = datetime(2026, 1, 1, 12, 0, 0)


def row(row_id: int, iteration: int, loss: float, minutes: int, split: str = "test",
        score: float | None = None) -> Evaluation:
    task = json.dumps({"score": score}) if score is not None else None
    return Evaluation(id=row_id, run_id=1, job_id=row_id, iteration=iteration, split=split, batches=4, loss=loss,
                      perplexity=2.0, tokens=10, task_json=task, created_at=T0 + timedelta(minutes=minutes))


def test_newest_per_checkpoint_keeps_the_newest_loss_and_the_newest_task() -> None:
    rows = [
        row(1, 100, 2.0, 0, score=0.4),
        row(2, 100, 1.9, 5),  # a later loss-only evaluation: its loss, the earlier task
        row(3, 0, 3.0, 0, score=0.1),
        row(4, 0, 2.9, 1, score=0.2),  # newer task replaces the older
        row(5, 100, 1.8, 2, split="valid"),
    ]
    measured = newest_per_checkpoint(list(reversed(rows)))
    assert [(m.split, m.iteration) for m in measured] == [("test", 0), ("test", 100), ("valid", 100)]
    by_key = {(m.split, m.iteration): m for m in measured}
    assert by_key["test", 100].loss.loss == 1.9 and by_key["test", 100].task == {"score": 0.4}
    assert by_key["test", 100].task_job_id == 1
    assert by_key["test", 0].loss.loss == 2.9 and by_key["test", 0].task == {"score": 0.2}
    assert by_key["valid", 100].task is None and by_key["valid", 100].task_job_id is None
    assert by_key["test", 100].as_json()["loss"] == 1.9


def test_newest_per_checkpoint_breaks_a_time_tie_by_id() -> None:
    measured = newest_per_checkpoint([row(7, 100, 1.0, 0), row(8, 100, 1.2, 0)])
    assert len(measured) == 1 and measured[0].loss.id == 8
    assert newest_per_checkpoint([]) == []
