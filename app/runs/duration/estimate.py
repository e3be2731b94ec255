"""A run's pre-start estimate: the useful-token share of its batches and its wall time, for the new-run form's panel
and recorded on the run when it is created.

The lengths come from the data's token statistics under the run's model (app/datasets/token_stats.py: a job the
panel offers to start; the app never tokenizes). The speed comes from the newest completed run that recorded one
(worker/throughput.py): of the same model, on the same backend as the newest timed run, where there is one; else of
the same model; else another model's, scaled by parameter counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, select

from app.catalog.info import ModelInfoError, model_info
from app.catalog.requests import confined_model
from app.contract.policy import format_duration
from app.contract.run_config import RunConfig
from app.contract.settings import Settings
from app.contract.status import RunStatus
from app.datasets.token_stats import NO_RESULT, TokenStatsInputError, latest_stats, resolve_inputs, split_counts
from app.jobs.jobs import LIVE, as_utc
from app.runs.duration.padding import LengthCounts, epoch_batches, training_plan, validation_positions
from app.runs.duration.wall_time import Speed, WallEstimate, expected_wall
from app.runs.form.fields import FormProblem, form_to_payload
from app.tables import Run, ValReport

NO_EARLIER_RUN = "no earlier run on this machine to time it by"
CANDIDATE_RUNS = 50  # the newest timed runs looked at for a reference


@dataclass(frozen=True)
class RunEstimate:
    """What the panel shows and the run records. `stats`: 'ready', 'missing', 'counting' or 'failed'."""

    stats: str
    data: str
    model: str
    grouping: str = "length"
    useful_share: float | None = None
    file_order_share: float | None = None
    train_positions: float | None = None
    val_positions: float | None = None
    wall: WallEstimate | None = None
    no_speed: str | None = None  # why there is no wall time although the lengths are known

    @property
    def wall_text(self) -> str | None:
        return f"≈ {format_duration(self.wall.seconds)} ({self.wall.basis})" if self.wall else None

    def to_json(self) -> dict[str, Any]:
        wall = self.wall
        return {"stats": self.stats, "data": self.data, "model": self.model, "useful_share": self.useful_share,
                "file_order_share": self.file_order_share,
                "grouping": self.grouping, "train_positions": self.train_positions,
                "val_positions": self.val_positions, "wall_s": wall.seconds if wall else None,
                "wall_text": self.wall_text, "basis": wall.basis if wall else self.no_speed,
                "speed_run_id": wall.run_id if wall else None, "same_model": wall.same_model if wall else None}


def valid_positions_measured(session: Session, run: Run, valid: LengthCounts) -> float | None:
    """Positions the run's recorded validations computed (from the valid split's lengths), None if unknown."""
    config = run.config
    batch, seq = int(config.get("batch_size", 4)), int(config.get("max_seq_length", 2048))
    if not valid or sum(count for _, count in valid) < batch:
        return None
    epoch = epoch_batches(valid, batch, seq, "file_order")
    reports = session.exec(select(ValReport).where(ValReport.run_id == run.id)).all()
    return sum(epoch.positions if r.batches == -1 else epoch.positions_per_batch * min(r.batches, epoch.batches)
               for r in reports) or None


def speed_of(session: Session, settings: Settings, run: Run) -> Speed | None:
    """What a completed run measured: training speed, validation speed (when its lengths are known), the rest."""
    if not run.positions_per_s or not run.train_seconds or not run.started_at or not run.finished_at:
        return None
    wall = (as_utc(run.finished_at) - as_utc(run.started_at)).total_seconds()
    val_s = sum(r.val_time for r in session.exec(select(ValReport).where(ValReport.run_id == run.id)).all())
    val_speed = None
    job = latest_stats(session, settings, Path(run.config.get("data", "")), str(run.config.get("model", "")))
    if job is not None and val_s > 0:
        measured = valid_positions_measured(session, run, split_counts(job).get("valid", []))
        val_speed = measured / val_s if measured else None
    return Speed(run.id or 0, run.positions_per_s, run.total_params, max(0.0, wall - run.train_seconds - val_s),
                 val_speed)


def reference_run(session: Session, model: str) -> tuple[Run, bool] | None:
    """(run, same model): the newest completed run with a recorded speed, preferring this model and the backend
    of the newest timed run."""
    runs = session.exec(select(Run).where(col(Run.positions_per_s).is_not(None),
                                          Run.status == RunStatus.completed.value)
                        .order_by(col(Run.finished_at).desc()).limit(CANDIDATE_RUNS)).all()
    if not runs:
        return None
    same = [run for run in runs if run.config.get("model") == model]
    backend = runs[0].backend
    for run in [r for r in same if r.backend == backend] + same:
        return run, True
    return runs[0], False


def estimate_run(session: Session, settings: Settings, config: RunConfig, total_params: int | None
                 ) -> RunEstimate | None:
    """The estimate for a resolved config (model and data as the run will have them); None when its data cannot be
    read."""
    try:
        folder, model = resolve_inputs(settings, config.data, config.model)
    except TokenStatsInputError:
        return None
    job = latest_stats(session, settings, folder, model)
    base = {"data": str(folder), "model": model, "grouping": config.batch_grouping}
    if job is None or job.status in LIVE or job.status in NO_RESULT:
        state = "missing" if job is None else "counting" if job.status in LIVE else "failed"
        return RunEstimate(state, **base)
    counts = split_counts(job)
    plan = training_plan(counts.get("train", []), config.batch_size, config.max_seq_length, config.batch_grouping,
                         config.batch_padding, config.iters)
    if plan is None:
        return None
    train_positions = config.iters * plan.epoch.positions_per_batch
    val_positions = validation_positions(counts.get("valid", []), config.batch_size, config.max_seq_length,
                                         config.val_batches, config.iters, config.steps_per_eval,
                                         config.save_every, config.full_val_at_checkpoints)
    reference = reference_run(session, model)
    speed = speed_of(session, settings, reference[0]) if reference else None
    wall = expected_wall(train_positions, val_positions, speed, total_params, reference[1]) if (
        speed and reference) else None
    why = None if wall else NO_EARLIER_RUN if reference is None else (
        f"run {reference[0].id} timed another model whose size is unknown")
    return RunEstimate("ready", **base, useful_share=plan.useful_share, file_order_share=plan.file_order.useful_share,
                       train_positions=train_positions, val_positions=val_positions, wall=wall, no_speed=why)


def model_params(settings: Settings, model: str) -> int | None:
    """The model's parameter count from its files' headers, None when it cannot be read."""
    try:
        return model_info(confined_model(model, settings), settings).total_params
    except ModelInfoError:
        return None


def estimate_for_config(session: Session, settings: Settings, config: RunConfig) -> RunEstimate | None:
    """The estimate of a run about to be created from this resolved config."""
    return estimate_run(session, settings, config, model_params(settings, config.model))


def estimate_for_form(session: Session, settings: Settings, form: dict[str, str], total_params: int | None
                      ) -> RunEstimate | None:
    """The new-run form's estimate for its current values; None while they do not make a run (its check says
    why)."""
    try:
        config = RunConfig.model_validate(form_to_payload(form)).resolved(settings)
    except (FormProblem, ValidationError):
        return None
    return estimate_run(session, settings, config, total_params)
