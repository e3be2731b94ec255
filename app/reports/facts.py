"""A run's true numbers for its report: read from the database and the data folder (gather), shaped by pure
functions (the dataclasses and helpers below gather)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlmodel import Session, select

from app import json_text
from app.contract.paths import run_dir
from app.contract.policy import best_checkpoint, overfitting_spans
from app.contract.settings import Settings
from app.datasets.token_stats import (
    LengthSummary,
    job_or_start,
    latest_stats,
    merge_counts,
    split_counts,
    summarize,
)
from app.datasets.validation import SPLITS, FeatureKeys, line_format
from app.evaluation.view import TableTruth, read_table_truth
from app.jobs.jobs import LIVE
from app.reports.labels import val_statuses
from app.runs.store.checkpoints import usage_commands
from app.runs.store.runs import checkpoints_of, metrics_json
from app.runs.store.summary import run_summary
from app.tables import Checkpoint, Dataset, Job, Run, utcnow

if TYPE_CHECKING:
    from app.jobs.supervisor import Supervisor

TokenState = Literal["done", "computing", "failed", "uncounted", "unavailable"]


@dataclass(frozen=True)
class TokenFacts:
    """Token lengths of the run's training splits under its model's tokenizer (the token statistics job)."""

    state: TokenState
    job_id: int | None = None
    error: str | None = None
    splits: dict[str, LengthSummary] = field(default_factory=dict)
    overall: LengthSummary | None = None


@dataclass(frozen=True)
class DatasetFacts:
    path: str
    name: str | None  # the registered dataset's name, when the folder is registered
    format: str | None  # text, chat, completions or tools (from the first training line)
    counts: dict[str, int]  # examples (non-empty lines) per split file present


@dataclass(frozen=True)
class RunFacts:
    run: Run
    config: dict[str, Any]
    hardware: dict[str, Any] | None
    train: list[dict[str, Any]]  # every train report: TRAIN_FIELDS
    val: list[tuple[int, float]]
    statuses: list[str]  # one per val point (labels.val_statuses)
    spans: list[tuple[int, int]]  # overfitting stretches
    checkpoints: list[Checkpoint]
    best: Checkpoint | None
    truth: TableTruth
    summary: dict[str, Any]  # app.runs.store.summary.run_summary
    dataset: DatasetFacts
    tokens: TokenFacts
    commands: dict[str, str] | None  # usage_commands of the deployment checkpoint, else the best
    command_checkpoint: Checkpoint | None
    folder: str  # the run's adapter folder
    generated_at: datetime


# Pure ---------------------------------------------------------------------------------------------------


def token_facts(job: Job | None, splits: tuple[str, ...], max_seq_length: int) -> TokenFacts:
    """What the report says of token lengths, from the token statistics job (None: not counted yet)."""
    if job is None:
        return TokenFacts("uncounted")
    if job.status in LIVE:
        return TokenFacts("computing", job.id)
    counts = {name: lengths for name, lengths in split_counts(job).items() if name in splits}
    if not counts:
        return TokenFacts("failed", job.id, job.error or f"the token statistics job ended {job.status}")
    return TokenFacts("done", job.id, None, {name: summarize(c, max_seq_length) for name, c in counts.items()},
                      summarize(merge_counts(*counts.values()), max_seq_length))


def command_checkpoint(checkpoints: list[Checkpoint], best: Checkpoint | None) -> Checkpoint | None:
    """The checkpoint whose commands the report gives: the deployment one, else the best."""
    return next((c for c in checkpoints if c.is_deployment), best)


def hardware_of(run: Run) -> dict[str, Any] | None:
    return json.loads(run.hardware_json) if run.hardware_json else None


# Reading ------------------------------------------------------------------------------------------------


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def _first_format(path: Path, keys: FeatureKeys) -> str | None:
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                try:
                    example = json_text.loads(line)
                except ValueError:
                    return None
                return line_format(example, keys) if isinstance(example, dict) else None
    return None


def dataset_facts(session: Session, config: dict[str, Any]) -> DatasetFacts:
    folder = Path(str(config.get("data", "")))
    registered = session.exec(select(Dataset).where(Dataset.path == str(folder))).first()
    counts: dict[str, int] = {}
    fmt = None
    if folder.is_dir():
        for split in SPLITS:
            file = folder / f"{split}.jsonl"
            if file.is_file():
                counts[split] = _count_lines(file)
        if (folder / "train.jsonl").is_file():
            fmt = _first_format(folder / "train.jsonl", FeatureKeys.from_config(config))
    return DatasetFacts(str(folder), registered.name if registered else None, fmt, counts)


def _token_inputs(config: dict[str, Any]) -> tuple[Path, str] | None:
    """(data folder, model) whose token statistics the report shows; None when the data is gone."""
    folder = Path(str(config.get("data", "")))
    model = str(config.get("model", ""))
    return (folder, model) if (folder / "train.jsonl").is_file() and model else None


def read_tokens(session: Session, settings: Settings, config: dict[str, Any]) -> TokenFacts:
    """The token statistics of the run's data under its model, as far as they have been counted (reading a report
    starts nothing: count_tokens does, from a POST)."""
    inputs = _token_inputs(config)
    if inputs is None:
        return TokenFacts("unavailable", error=f"the data folder {config.get('data', '')} is gone")
    job = latest_stats(session, settings, *inputs)
    return token_facts(job, ("train", "valid"), int(config.get("max_seq_length", 2048)))


def count_tokens(session: Session, settings: Settings, supervisor: Supervisor, run: Run) -> Job | None:
    """Start the token statistics of the run's data under its model (the latest job when there is one already);
    None when the data is gone."""
    inputs = _token_inputs(run.config)
    return job_or_start(session, settings, supervisor, *inputs) if inputs is not None else None


def gather(session: Session, settings: Settings, run: Run, base_url: str) -> RunFacts:
    """Everything the report shows of one run."""
    assert run.id is not None
    config = run.config
    metrics = metrics_json(session, run.id, None)
    train = metrics["train"]
    val = [(p["iteration"], p["val_loss"]) for p in metrics["val"]]
    spans = overfitting_spans([(p["iteration"], p["train_loss"]) for p in train], val)
    checkpoints = checkpoints_of(session, run.id)
    best = best_checkpoint(checkpoints)
    shown = command_checkpoint(checkpoints, best)
    return RunFacts(
        run=run, config=config, hardware=hardware_of(run), train=train, val=val,
        statuses=val_statuses(val, spans), spans=spans, checkpoints=checkpoints, best=best,
        truth=read_table_truth(session, run.id, checkpoints), summary=run_summary(session, run),
        dataset=dataset_facts(session, config), tokens=read_tokens(session, settings, config),
        commands=usage_commands(base_url, run, shown) if shown else None, command_checkpoint=shown,
        folder=str(run_dir(settings, run.id)),
        generated_at=utcnow(),
    )
