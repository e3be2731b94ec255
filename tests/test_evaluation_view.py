"""The run page's evaluation shaping (app/evaluation/view.py): pure functions, no server."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.evaluation.requests import EvaluationRefused
from app.evaluation.results import Measured
from app.evaluation.view import (
    base_validation,
    example_fields,
    field_cell,
    form_request,
    score_band,
    table_truth,
    task_table,
    token_note,
)
from app.tables import Evaluation, ValReport

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Ckpt:
    iteration: int
    val_loss: float | None


def measured(iteration: int, loss: float, split: str = "test", task: dict[str, Any] | None = None,
             minutes: int = 0) -> Measured:
    row = Evaluation(id=iteration + 1, run_id=1, job_id=1, iteration=iteration, split=split, batches=2, loss=loss,
                     perplexity=2.0 ** loss, tokens=100, created_at=T0 + timedelta(minutes=minutes))
    return Measured(iteration, split, row, task, 1 if task else None)


def task(score: float, **fields: dict[str, Any]) -> dict[str, Any]:
    return {"format": "lines", "examples": 8, "parsed": 1.0, "complete": 0.75, "fields": fields, "exact": 0.5,
            "score": score}


def test_table_truth_shows_test_and_labels_from_the_verdict() -> None:
    checkpoints = [Ckpt(100, 1.2), Ckpt(200, 1.0), Ckpt(300, 1.005)]
    rows = [measured(0, 2.5), measured(100, 1.3), measured(200, 1.1), measured(300, 1.05),
            measured(200, 0.7, split="valid", minutes=5)]  # a newer valid measurement: test is still shown
    truth = table_truth(checkpoints, 2.4, rows)
    assert truth.split == "test" and truth.base_measured
    assert truth.figures[200].loss == 1.1 and truth.figures[0].loss == 2.5
    assert truth.verdict.best == 200 and truth.verdict.best_label == "best"
    assert truth.verdict.recommended == 300  # within 1% of the best validation loss, lower test loss
    assert truth.verdict.disagreement is not None and "iteration 300" in truth.verdict.disagreement


def test_table_truth_calls_the_pick_least_bad_when_the_base_model_was_better() -> None:
    truth = table_truth([Ckpt(100, 2.0), Ckpt(200, 1.9)], 1.5, [])
    assert truth.split is None and truth.figures == {}
    assert truth.verdict.best == 200 and truth.verdict.best_label == "least bad"
    assert truth.verdict.warning and "base model" in truth.verdict.warning
    assert truth.verdict.recommended is None


def test_the_task_score_picks_the_recommended_checkpoint() -> None:
    rows = [measured(100, 1.0, task=task(0.4)), measured(200, 1.1, task=task(0.9)),
            measured(0, 2.0, task=task(0.1))]
    truth = table_truth([Ckpt(100, 1.0), Ckpt(200, 1.005)], None, rows)
    assert truth.figures[200].score == 0.9 and truth.verdict.recommended == 200
    assert "task score" in (truth.verdict.reason or "")


def test_base_validation_is_the_first_validation_only_before_any_step() -> None:
    assert base_validation(ValReport(run_id=1, iteration=0, val_loss=2.0)) == 2.0
    assert base_validation(ValReport(run_id=1, iteration=1, val_loss=2.0)) is None
    assert base_validation(None) is None


def test_field_cells_by_kind() -> None:
    assert field_cell({"kind": "category", "accuracy": 0.625}) == "62%"
    assert field_cell({"kind": "number", "mae": 1.25, "accuracy": 0.5, "answered": 4}) == "MAE 1.25 · 50%"
    assert field_cell({"kind": "number", "mae": None, "accuracy": 0.0, "answered": 0}) == "— · 0%"
    assert field_cell({"kind": "text", "f1": 0.714}) == "F1 0.71"
    assert field_cell(None) == "—"


def test_task_table_puts_the_base_model_first_and_unions_the_fields() -> None:
    rows = [measured(200, 1.0, task=task(0.8, intent={"kind": "category", "accuracy": 0.8})),
            measured(0, 2.0, task=task(0.2, intent={"kind": "category", "accuracy": 0.25},
                                       amount={"kind": "number", "mae": 3.0, "accuracy": 0.0, "answered": 2})),
            measured(100, 1.5)]  # no task there: no row
    table = task_table(rows, "test")
    assert table is not None
    assert [r.iteration for r in table.rows] == [0, 200]
    assert table.columns == [("intent", "category"), ("amount", "number")]
    assert table.rows[0].label == "base model" and table.rows[0].cells == ["25%", "MAE 3 · 0%"]
    assert table.rows[1].cells == ["80%", "—"] and table.rows[1].complete == "75%"
    assert task_table(rows, "valid") is None and task_table(rows, None) is None


def test_form_request_reads_the_form() -> None:
    body = form_request("chosen", ["300", "100"], False, "valid", "4", True, "8", "48")
    assert body.checkpoints == [100, 300] and not body.include_base and body.split == "valid"
    assert body.batches == 4 and body.task is not None and body.task.max_examples == 8
    assert form_request("all", ["100"], True, "test", "-1", False, "0", "x").task is None  # task fields unused


@pytest.mark.parametrize(("args", "field", "words"), [
    (("all", [], True, "test", "-1", True, "0", "48"), "max_examples", "max examples: max_examples must be at least 1"),
    (("all", [], True, "test", "-1", True, "ten", "48"), "max_examples", "max examples must be a whole number"),
    (("all", [], True, "test", "0", False, "8", "48"), "batches", "batches: batches must be -1 (all) or at least 1"),
    (("all", [], True, "test", "-1", True, "8", "0"), "max_tokens", "max new tokens: Input should be greater"),
    (("chosen", [], False, "test", "-1", False, "8", "48"), "checkpoints", "nothing to evaluate"),
    (("all", [], True, "nope", "-1", False, "8", "48"), "split", "split: Input should be 'test', 'valid'"),
])
def test_form_request_refuses_bad_fields_by_name(args: tuple[Any, ...], field: str, words: str) -> None:
    with pytest.raises(EvaluationRefused) as refused:
        form_request(*args)
    assert refused.value.loc == (field,)
    assert words in str(refused.value)


def test_token_note_follows_mask_prompt() -> None:
    assert "only the completion's tokens count" in token_note(True)
    assert "every token counts" in token_note(False)


def test_example_fields_mark_the_wrong_ones() -> None:
    rows = example_fields({"intent": {"kind": "category", "expected": "refund", "got": "refund", "score": 1.0,
                                      "correct": True},
                           "amount": {"kind": "number", "expected": "12", "got": "15", "score": 0.0, "error": 3.0}})
    assert [(r["name"], r["wrong"]) for r in rows] == [("intent", False), ("amount", True)]
    assert rows[1]["error"] == 3.0


def test_score_bands_colour_an_answer_by_how_much_of_it_is_right() -> None:
    assert [score_band(s) for s in (1.0, 0.8, 0.5, 0.49, 0.01, 0.0)] == [
        "right", "partly", "partly", "poor", "poor", "wrong"]
