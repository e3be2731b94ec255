"""What the playground page shows: the base models to pick from, the checkpoints of runs on the picked one, the
playground job's state, and an example of a run's data to fill the prompt from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from app import json_text
from app.catalog.info import model_choices
from app.contract.answers import split_example
from app.contract.policy import format_duration
from app.contract.settings import Settings
from app.contract.status import RunStatus
from app.datasets.validation import FeatureKeys
from app.jobs.jobs import check_job
from app.playground.kind import KIND
from app.playground.requests import MAX_COLUMNS, live_job, same_model
from app.runs.store.runs import checkpoints_of
from app.tables import Job, Run

EXAMPLE_SPLITS = ("test", "valid")


def model_label(model: str, settings: Settings) -> str:
    path = Path(model)
    if path.is_absolute():
        try:
            return path.relative_to(settings.local_models_dir.resolve()).as_posix()
        except ValueError:
            return path.name or model
    return model


def base_models(session: Session, settings: Settings) -> list[dict[str, str]]:
    """The embedded model, the models runs were trained on, and the local model folders: [{model, label}]."""
    found: list[str] = [str(settings.default_model_dir.resolve())]
    for run in session.exec(select(Run).order_by(col(Run.id).desc())).all():
        found.append(str(run.config.get("model", "")))
    found += [choice["model"] for choice in model_choices(settings) if choice["source"] == "local"]
    unique: list[str] = []
    for model in found:
        if model and not any(same_model(model, seen) for seen in unique):
            unique.append(model)
    return [{"model": m, "label": model_label(m, settings)} for m in unique]


def runs_on(session: Session, model: str) -> list[dict[str, Any]]:
    """Runs trained on `model` that have checkpoints, newest first: [{run, iterations}]."""
    found = []
    for run in session.exec(select(Run).order_by(col(Run.id).desc())).all():
        if run.id is None or not same_model(str(run.config.get("model", "")), model):
            continue
        iterations = [c.iteration for c in checkpoints_of(session, run.id)]
        if iterations:
            found.append({"run": run, "iterations": iterations})
    return found


def column_choices(prefill: tuple[int, int] | None, runs: list[dict[str, Any]]) -> list[str]:
    """The four columns' first values: the base model, then the asked checkpoint (when it is on this model)."""
    values = ["base"] + [""] * (MAX_COLUMNS - 1)
    if prefill is not None and any(r["run"].id == prefill[0] and prefill[1] in r["iterations"] for r in runs):
        values[1] = f"{prefill[0]}:{prefill[1]}"
    return values


def job_view(session: Session, settings: Settings) -> dict[str, Any]:
    """The playground job as the page shows it: the live one, else the newest that ended."""
    job = live_job(session, settings)
    if job is None:
        job = session.exec(select(Job).where(Job.kind == KIND).order_by(col(Job.id).desc()).limit(1)).first()
        if job is not None:
            job = check_job(session, settings, job)
    params = job.params if job is not None else {}
    idle_s = float(params.get("idle_s", settings.playground_idle_s))
    live = job is not None and job.status in (RunStatus.queued.value, RunStatus.starting.value,
                                              RunStatus.running.value, RunStatus.stopping.value)
    return {"job": job, "live": live, "idle": format_duration(idle_s),
            "waiting": job is not None and job.status == RunStatus.queued.value and bool(job.waiting_reason)}


@dataclass(frozen=True)
class Example:
    """A prompt taken from a line of a run's data split."""

    system: str
    prompt: str
    note: str  # where it came from, in words
    problem: str | None = None


def read_example(run: Run, split: str, line: int) -> Example:
    """The system and user message of line `line` (1-based) of the run's `split`.jsonl."""
    config = run.config
    path = Path(str(config.get("data", ""))) / f"{split}.jsonl"
    if not path.is_file():
        return Example("", "", "", f"run {run.id}'s data has no {split}.jsonl ({path})")
    number, raw = 0, None
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        for number, text in enumerate(handle, 1):
            if number == line:
                raw = text
                break
    if raw is None:
        return Example("", "", "", f"{path} has only {number} lines, not {line}")
    try:
        example = json_text.loads(raw)
    except ValueError:
        return Example("", "", "", f"{path} line {line} is not JSON")
    keys = FeatureKeys.from_config(config)
    parts = split_example(example, prompt_feature=keys.prompt, completion_feature=keys.completion,
                          chat_feature=keys.chat, text_feature=keys.text) if isinstance(example, dict) else None
    if parts is None or isinstance(parts[0], str):  # a text example's prompt is raw text, not messages
        return Example("", "", "", f"{path} line {line} has no prompt to take (a text example, or a chat without "
                                   "an assistant message)")
    messages = parts[0]
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    users = [m["content"] for m in messages if m["role"] == "user"]
    earlier = " (its earlier turns are left out)" if len(users) > 1 else ""
    return Example(system, users[-1] if users else "", f"{split}.jsonl line {line} of run {run.id}'s data{earlier}")
