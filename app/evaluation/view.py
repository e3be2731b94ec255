"""Shaping evaluation figures for the run page: the checkpoint table's measured columns and labels, the
evaluate card's task table and form, and the examples page. Functions whose names start with `read_` touch the
database or the disk; the rest are pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, select

from app.contract.kinds import TaskRequest
from app.contract.policy import HasValLoss
from app.evaluation.requests import KIND, EvaluationRefused, EvaluationRequest
from app.evaluation.results import BASE, Measured, by_iteration, measurements, shown_split
from app.evaluation.verdict import Verdict, checkpoint_verdict
from app.jobs.jobs import LIVE
from app.tables import Job, ValReport

SPLITS = ("test", "valid", "train")
FORM_LABELS = {"max_examples": "max examples", "max_tokens": "max new tokens", "batches": "batches",
               "checkpoints": "checkpoints", "split": "split", "include_base": "include the base model",
               "task": "task"}


@dataclass(frozen=True)
class Figures:
    """One model's measured loss on the shown split (None where not measured) and its task score."""

    loss: float | None = None
    perplexity: float | None = None
    score: float | None = None


@dataclass(frozen=True)
class TableTruth:
    """What the checkpoint table adds to its rows: the measured split, figures by iteration (0: the base model),
    the base model's validation loss (when validated before the first step) and the verdict."""

    split: str | None
    figures: dict[int, Figures]
    base_val: float | None
    verdict: Verdict
    base_measured: bool = field(default=False)


def figures_of(measured: Mapping[int, Measured]) -> dict[int, Figures]:
    """Pure: each measured model's loss, perplexity and task score."""
    out = {}
    for iteration, m in measured.items():
        score = m.task.get("score") if m.task else None
        out[iteration] = Figures(m.loss.loss, m.loss.perplexity, float(score) if score is not None else None)
    return out


def table_truth(checkpoints: Sequence[HasValLoss], base_val: float | None, measured: list[Measured]) -> TableTruth:
    """Pure: the checkpoint table's measured columns and its labels (checkpoint_verdict) from the measurements."""
    split = shown_split(measured)
    figures = figures_of(by_iteration(measured, split)) if split else {}
    test_loss = {it: f.loss for it, f in figures.items() if it != BASE and f.loss is not None}
    scores = {it: f.score for it, f in figures.items() if it != BASE and f.score is not None}
    verdict = checkpoint_verdict(base_val, checkpoints, test_loss, scores, split or "test")
    return TableTruth(split, figures, base_val, verdict, BASE in figures)


def base_validation(first: ValReport | None) -> float | None:
    """Pure: the base model's validation loss: the first validation, when it was made before any step."""
    return first.val_loss if first is not None and first.iteration == 0 else None


def read_table_truth(session: Session, run_id: int, checkpoints: Sequence[HasValLoss]) -> TableTruth:
    first = session.exec(select(ValReport).where(ValReport.run_id == run_id)
                         .order_by(col(ValReport.iteration)).limit(1)).first()
    return table_truth(checkpoints, base_validation(first), measurements(session, run_id))


# The task table -------------------------------------------------------------------------------------------------


def percent(share: float | None) -> str:
    return "—" if share is None or not math.isfinite(share) else f"{100 * share:.0f}%"


def field_cell(figures: Mapping[str, Any] | None) -> str:
    """Pure: one field's figures in a table cell: category accuracy, number MAE and accuracy, text F1."""
    if not figures:
        return "—"
    kind = figures.get("kind")
    if kind == "number":
        mae = figures.get("mae")
        return f"MAE {mae:,.3g} · {percent(figures.get('accuracy'))}" if mae is not None else (
            f"— · {percent(figures.get('accuracy'))}")
    if kind == "text":
        f1 = figures.get("f1")
        return f"F1 {f1:.2f}" if f1 is not None else "—"
    return percent(figures.get("accuracy"))


@dataclass(frozen=True)
class TaskRow:
    iteration: int
    label: str
    examples: int
    parsed: str
    complete: str
    cells: list[str]
    score: float


@dataclass(frozen=True)
class TaskTable:
    split: str
    columns: list[tuple[str, str]]  # (field name, kind)
    rows: list[TaskRow]


def task_table(measured: list[Measured], split: str | None) -> TaskTable | None:
    """Pure: one row per model with a task result on `split` (the base model first, then by iteration), one column
    per field seen in any of them (in the order first seen); None when no task was measured there."""
    if split is None:
        return None
    with_task = [m for m in sorted(by_iteration(measured, split).values(), key=lambda m: m.iteration) if m.task]
    if not with_task:
        return None
    columns: dict[str, str] = {}
    for m in with_task:
        for name, figures in (m.task or {}).get("fields", {}).items():
            columns.setdefault(name, str(figures.get("kind", "")))
    rows = []
    for m in with_task:
        task = m.task or {}
        fields = task.get("fields", {})
        rows.append(TaskRow(m.iteration, "base model" if m.iteration == BASE else f"{m.iteration:,}",
                            int(task.get("examples", 0)), percent(task.get("parsed")), percent(task.get("complete")),
                            [field_cell(fields.get(name)) for name in columns], float(task.get("score", 0.0))))
    return TaskTable(split, list(columns.items()), rows)


# The form -------------------------------------------------------------------------------------------------------


def token_note(mask_prompt: bool) -> str:
    if mask_prompt:
        return "Perplexity is exp(mean loss per token); with mask_prompt only the completion's tokens count."
    return "Perplexity is exp(mean loss per token); every token counts (the run trained without mask_prompt)."


def read_splits(data: str) -> list[str]:
    """The splits present in a data folder, in the form's order."""
    folder = Path(data) if data else None
    return [s for s in SPLITS if folder is not None and (folder / f"{s}.jsonl").is_file()]


def _whole(value: str, name: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise EvaluationRefused((name,), f"{FORM_LABELS[name]} must be a whole number, got {value.strip()!r}") \
            from None


def form_request(checkpoints: str, chosen: Sequence[str], include_base: bool, split: str, batches: str,
                 task: bool, max_examples: str, max_tokens: str) -> EvaluationRequest:
    """Pure: the evaluate form's fields as an EvaluationRequest, or EvaluationRefused naming the field."""
    try:
        body: dict[str, Any] = {"include_base": include_base, "split": split, "batches": _whole(batches, "batches")}
        if checkpoints == "all":
            body["checkpoints"] = "all"
        else:
            body["checkpoints"] = [_whole(it, "checkpoints") for it in chosen]
            if not body["checkpoints"] and not include_base:
                raise EvaluationRefused(("checkpoints",), "nothing to evaluate: choose a checkpoint or include the "
                                                          "base model")
        if task:
            body["task"] = TaskRequest(max_examples=_whole(max_examples, "max_examples"),
                                       max_tokens=_whole(max_tokens, "max_tokens"))
        return EvaluationRequest.model_validate(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        name = str(error["loc"][-1]) if error["loc"] else "task"
        label = FORM_LABELS.get(name, name)
        raise EvaluationRefused((name,), f"{label}: {str(error['msg']).removeprefix('Value error, ')}") from None


def read_live_job(session: Session, run_id: int) -> Job | None:
    """The newest evaluation of the run that is queued or working."""
    return session.exec(select(Job).where(Job.kind == KIND, Job.run_id == run_id, col(Job.status).in_(LIVE))
                        .order_by(col(Job.id).desc()).limit(1)).first()


def read_last_job(session: Session, run_id: int) -> Job | None:
    return session.exec(select(Job).where(Job.kind == KIND, Job.run_id == run_id)
                        .order_by(col(Job.id).desc()).limit(1)).first()



# The examples page ----------------------------------------------------------------------------------------------


def example_fields(fields: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pure: an example's per-field outcome as table rows; a field is wrong when it scored below 1."""
    rows = []
    for name, outcome in fields.items():
        score = float(outcome.get("score", 0.0))
        rows.append({"name": name, "kind": outcome.get("kind", ""), "expected": outcome.get("expected"),
                     "got": outcome.get("got"), "score": score, "wrong": score < 1.0,
                     "error": outcome.get("error")})
    return rows


# An answer's score (the mean of its fields' scores) in words, as the examples page colours it.
SCORE_BANDS = ((1.0, "right"), (0.5, "partly"), (1e-9, "poor"))


def score_band(score: float) -> str:
    """Pure: right (every field), partly (at least half), poor (some), wrong (none): one colour per band."""
    return next((band for floor, band in SCORE_BANDS if score >= floor), "wrong")
