"""Reading what evaluate jobs measured: one row per checkpoint and split for the API and pages, and the
generated examples (worst or best first) beside the base model's answer to the same prompt.

Every job keeps its own rows. What a page shows for a checkpoint on a split is the newest measurement of its
loss, and the newest task result (a later loss-only evaluation does not hide an earlier task result).
The `evaluate` kind's view (JOB_VIEW) is its result in one line and the run it concerns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlmodel import Session, col, select

from app.contract.answers import rank_examples
from app.contract.kinds import EVALUATE
from app.jobs.job_view import JobView, run_subject
from app.tables import Evaluation, EvaluationExample

BASE = 0  # the base model's iteration


@dataclass(frozen=True)
class Measured:
    """A checkpoint's (or the base model's) figures on one split: the newest loss and the newest task result."""

    iteration: int
    split: str
    loss: Evaluation
    task: dict[str, Any] | None
    task_job_id: int | None

    def as_json(self) -> dict[str, Any]:
        row = self.loss
        return {"iteration": self.iteration, "split": self.split, "loss": row.loss, "perplexity": row.perplexity,
                "tokens": row.tokens, "batches": row.batches, "mask_prompt": row.mask_prompt, "task": self.task,
                "job_id": row.job_id, "task_job_id": self.task_job_id,
                "created_at": row.created_at.isoformat()}


def newest_per_checkpoint(rows: list[Evaluation]) -> list[Measured]:
    """Pure: rows (any order) to one Measured per (split, iteration), sorted by split then iteration."""
    ordered = sorted(rows, key=lambda r: (r.created_at, r.id or 0), reverse=True)
    loss: dict[tuple[str, int], Evaluation] = {}
    task: dict[tuple[str, int], Evaluation] = {}
    for row in ordered:
        key = (row.split, row.iteration)
        loss.setdefault(key, row)
        if row.task_json:
            task.setdefault(key, row)
    measured = []
    for key in sorted(loss):
        with_task = task.get(key)
        measured.append(Measured(key[1], key[0], loss[key], with_task.task if with_task else None,
                                 with_task.job_id if with_task else None))
    return measured


def measurements(session: Session, run_id: int, split: str | None = None,
                 job_id: int | None = None) -> list[Measured]:
    query = select(Evaluation).where(Evaluation.run_id == run_id)
    if split is not None:
        query = query.where(Evaluation.split == split)
    if job_id is not None:
        query = query.where(Evaluation.job_id == job_id)
    return newest_per_checkpoint(list(session.exec(query).all()))


def by_iteration(measured: list[Measured], split: str) -> dict[int, Measured]:
    return {m.iteration: m for m in measured if m.split == split}


def shown_split(measured: list[Measured]) -> str | None:
    """The split pages show: test when it was measured, else the one measured most recently."""
    if not measured:
        return None
    if any(m.split == "test" for m in measured):
        return "test"
    return max(measured, key=lambda m: (m.loss.created_at, m.loss.id or 0)).split


def examples(
    session: Session, run_id: int, iteration: int, order: Literal["worst", "best"], limit: int,
    split: str | None = None,
) -> dict[str, Any] | None:
    """The examples of the newest task run at `iteration` (on `split`, or any), ranked, each with the base
    model's answer to the same line when that job (or an earlier one on the split) generated it; None when no
    task was run there."""
    query = select(EvaluationExample.job_id, EvaluationExample.split).where(
        EvaluationExample.run_id == run_id, EvaluationExample.iteration == iteration)
    if split is not None:
        query = query.where(EvaluationExample.split == split)
    newest = session.exec(query.order_by(col(EvaluationExample.job_id).desc()).limit(1)).first()
    if newest is None:
        return None
    job_id, split_name = newest
    rows = list(session.exec(select(EvaluationExample).where(
        EvaluationExample.job_id == job_id, EvaluationExample.iteration == iteration)).all())
    chosen = rank_examples(rows, lambda r: r.score, lambda r: r.line, order, limit)
    base = base_answers(session, run_id, split_name, job_id, [r.line for r in chosen]) if iteration != BASE else {}
    return {
        "run_id": run_id, "iteration": iteration, "split": split_name, "job_id": job_id, "order": order,
        "examples": [{"line": r.line, "prompt": r.prompt, "reference": r.reference, "output": r.output,
                      "base_output": base.get(r.line), "score": r.score, **r.outcome} for r in chosen],
        "total": len(rows),
    }


def base_answers(session: Session, run_id: int, split: str, job_id: int, lines: list[int]) -> dict[int, str]:
    """The base model's answers to these lines: from the same job, else the newest earlier job on the split."""
    query = select(EvaluationExample).where(
        EvaluationExample.run_id == run_id, EvaluationExample.iteration == BASE, EvaluationExample.split == split,
        col(EvaluationExample.job_id) <= job_id, col(EvaluationExample.line).in_(lines),
    ).order_by(col(EvaluationExample.job_id).desc())
    answers: dict[int, str] = {}
    for row in session.exec(query).all():
        answers.setdefault(row.line, row.output)
    return answers


def result_summary(job: Any) -> str:
    """A completed evaluate job's result in one line (the jobs page)."""
    result = job.result or {}
    split = result.get("split", "test")
    losses = {int(it): loss for it, loss in (result.get("losses") or {}).items()}
    scores = {int(it): score for it, score in (result.get("scores") or {}).items()}
    parts = []
    if BASE in losses:
        parts.append(f"base {losses[BASE]:.3f}")
    trained = {it: loss for it, loss in losses.items() if it != BASE}
    if trained:
        best = min(trained, key=lambda it: (trained[it], -it))
        parts.append(f"best {trained[best]:.3f} at iteration {best:,}")
    line = f"{split} loss: " + ", ".join(parts) if parts else ""
    trained_scores = {it: s for it, s in scores.items() if it != BASE}
    if trained_scores:
        top = max(trained_scores, key=lambda it: (trained_scores[it], it))
        line += f" · task score {trained_scores[top]:.2f} at {top:,}"
        if BASE in scores:
            line += f" (base {scores[BASE]:.2f})"
    return line


JOB_VIEW = JobView(EVALUATE, summary=result_summary, subject=run_subject)
