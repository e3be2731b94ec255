"""Asking for an evaluation: what the user may ask (EvaluationRequest), what the worker is given
(EvaluateParams), and every check made before a job row exists.

A request names checkpoints ("all" or iterations), whether the base model is measured too, a split of the run's
data folder, how many batches, and optionally the task (greedy answers scored against the references). It is
refused, with one sentence naming the problem and no job left behind, when the run has no checkpoints, a named
checkpoint does not exist or its file was deleted, the split file is missing, invalid or smaller than one batch,
or the task is asked of data that has no prompts (text format whose texts hold no assistant marker).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlmodel import Session

from app import json_text
from app.contract.answers import ASSISTANT_MARKER
from app.contract.kinds import EVALUATE, EvaluateParams, Split, TaskRequest
from app.contract.paths import run_dir
from app.contract.settings import Settings
from app.datasets.validation import FeatureKeys, IssueLog, SplitSummary, validate_split
from app.jobs.jobs import create_job
from app.runs.store.runs import checkpoints_of
from app.tables import Job, Run

KIND = EVALUATE.name
UNIT = "steps"  # a loss batch, or one generated answer


class EvaluationRequest(BaseModel):
    """What to evaluate (the body of POST /api/runs/{id}/evaluations)."""

    model_config = ConfigDict(extra="forbid")

    checkpoints: Literal["all"] | list[int] = Field(
        "all", description="'all' the run's checkpoints, or a list of their iterations.")
    include_base: bool = Field(True, description="Also measure the base model (no adapter), shown as iteration 0.")
    split: Split = Field("test", description="Which file of the run's data folder: test, valid or train.")
    batches: int = Field(-1, description="Batches of the split to measure the loss on; -1 uses every batch.")
    task: TaskRequest | None = Field(None, description="Also generate answers and score them (task accuracy).")

    @field_validator("batches")
    @classmethod
    def _batches(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError(f"batches must be -1 (all) or at least 1, got {value}")
        return value

    @field_validator("checkpoints")
    @classmethod
    def _iterations(cls, value: Literal["all"] | list[int]) -> Literal["all"] | list[int]:
        if isinstance(value, list):
            bad = [it for it in value if it < 1 or it > 2**62]
            if bad:
                raise ValueError(f"checkpoint iterations are at least 1 (the base model is include_base), got {bad[0]}")
            return sorted(set(value))
        return value


class EvaluationRefused(ValueError):
    """A request that cannot start: `loc` names the field, the message says what is wrong."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc

    def detail(self) -> list[dict[str, Any]]:
        return [{"loc": ["body", *self.loc], "msg": str(self), "type": "value_error"}]


def chosen_iterations(session: Session, settings: Settings, run: Run, request: EvaluationRequest) -> list[int]:
    """The checkpoints to measure, each present in the table and on disk."""
    assert run.id is not None
    saved = {ckpt.iteration: ckpt for ckpt in checkpoints_of(session, run.id)}
    if not saved:
        raise EvaluationRefused(("checkpoints",), f"run {run.id} has no checkpoints to evaluate")
    wanted = sorted(saved) if request.checkpoints == "all" else list(request.checkpoints)
    if not wanted and not request.include_base:
        raise EvaluationRefused(("checkpoints",), "nothing to evaluate: name a checkpoint or include the base model")
    folder = run_dir(settings, run.id)
    for iteration in wanted:
        ckpt = saved.get(iteration)
        if ckpt is None:
            have = ", ".join(f"{it:,}" for it in sorted(saved))
            raise EvaluationRefused(("checkpoints",), f"run {run.id} has no checkpoint at iteration {iteration:,} "
                                                      f"(it has {have})")
        if not (folder / ckpt.filename).is_file():
            raise EvaluationRefused(("checkpoints",), f"the file of checkpoint {iteration:,} ({ckpt.filename}) was "
                                                      f"deleted from {folder}")
    if wanted and not (folder / "adapter_config.json").is_file():
        raise EvaluationRefused(("checkpoints",), f"{folder} has no adapter_config.json: the adapters cannot be "
                                                  "rebuilt")
    return wanted


def check_split(config: dict[str, Any], request: EvaluationRequest) -> Path:
    """The split file, valid and holding at least one batch (and prompts, when the task is asked)."""
    data = Path(str(config.get("data", "")))
    path = data / f"{request.split}.jsonl"
    if not path.is_file():
        raise EvaluationRefused(("split",), f"{path} does not exist: the run's data folder has no "
                                            f"{request.split}.jsonl")
    summary = SplitSummary(request.split)
    errors, warnings = IssueLog(3), IssueLog(0)
    keys = FeatureKeys.from_config(config)
    validate_split(path, summary, errors, warnings, bool(config.get("mask_prompt")), keys)
    if errors.count:
        more = f" (and {errors.count - len(errors.issues)} more)" if errors.count > len(errors.issues) else ""
        raise EvaluationRefused(("split",), f"{path.parent}/" + "; ".join(str(i) for i in errors.issues) + more)
    batch_size = int(config.get("batch_size", 4))
    if summary.examples < batch_size:
        raise EvaluationRefused(("split",), f"{path} has {summary.examples} examples, fewer than one batch "
                                            f"(the run's batch_size is {batch_size})")
    if request.task is not None and summary.format == "text" and not marks_answers(path, keys.text):
        raise EvaluationRefused(("task",), f"{path} is text format with no {ASSISTANT_MARKER} in its texts: task "
                                           "accuracy needs prompts and answers (chat or prompt/completion examples, "
                                           f"or texts that put {ASSISTANT_MARKER} before the answer)")
    return path


def marks_answers(path: Path, text_key: str) -> bool:
    """Whether some text example of the split holds the assistant marker, where its prompt ends and its answer
    begins (answers.split_example): the file read until the first one."""
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        for raw in handle:
            if ASSISTANT_MARKER not in raw:
                continue
            try:
                example = json_text.loads(raw)
            except ValueError:
                continue
            if isinstance(example, dict) and ASSISTANT_MARKER in str(example.get(text_key, "")):
                return True
    return False


def plan(session: Session, settings: Settings, run: Run, request: EvaluationRequest) -> EvaluateParams:
    """The job's parameters, or EvaluationRefused before anything is written."""
    assert run.id is not None
    config = run.config
    iterations = chosen_iterations(session, settings, run, request)
    check_split(config, request)
    model = str(config.get("model", ""))
    if model.startswith("/") and not Path(model).is_dir():
        raise EvaluationRefused(("checkpoints",), f"the run's model folder {model} does not exist any more")
    return EvaluateParams(
        run_id=run.id, model=model, data=str(config["data"]), split=request.split,
        adapter_dir=str(run_dir(settings, run.id)), iterations=iterations, include_base=request.include_base,
        batches=request.batches, config=config, task=request.task,
    )


def start_evaluation(session: Session, settings: Settings, run: Run, request: EvaluationRequest) -> Job:
    """Check the request, then queue the job (the supervisor starts it when the model's memory is free)."""
    params = plan(session, settings, run, request)
    return create_job(session, KIND, params, unit=UNIT, run_id=run.id)
