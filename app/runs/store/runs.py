"""Reading and creating runs: what the API and the pages share."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, func, select

from app.contract.confinement import open_confined
from app.contract.paths import checkpoint_files, run_dir, run_file_roots
from app.contract.policy import best_checkpoint, eta_seconds, format_duration, overfitting_spans
from app.contract.run_config import EarlyStopping, RunConfig
from app.contract.settings import Settings
from app.runs.duration.estimate import RunEstimate
from app.runs.duration.recorded import estimate_json, record_estimate
from app.runs.live.downsample import lttb
from app.runs.store.summary import ValFigures, val_figures
from app.tables import Checkpoint, Run, RunStatus, TrainReport, ValReport, utcnow

log = logging.getLogger(__name__)


def default_name(config: RunConfig) -> str:
    model = Path(config.model).name or config.model
    return f"{model} · {utcnow():%Y-%m-%d %H:%M}"


def resume_problem(session: Session, settings: Settings, config: RunConfig) -> str | None:
    """Why `resume_from` cannot be honoured, or None."""
    source = config.resume_from
    if source is None:
        return None
    run = session.get(Run, source.run_id)
    if run is None:
        return f"there is no run {source.run_id} to resume"
    adapter = checkpoint_files(settings, source.run_id, source.iteration)[0]
    if not adapter.exists():
        return f"run {source.run_id} has no checkpoint file at iteration {source.iteration}"
    parent = RunConfig.model_validate(run.config)
    if parent.model != config.model:
        return f"run {source.run_id} trained {parent.model}, not {config.model}"
    for key in ("fine_tune_type", "num_layers", "lora_parameters", "optimizer"):
        if getattr(parent, key) != getattr(config, key):
            return f"{key} must match run {source.run_id} to continue it ({getattr(parent, key)!r})"
    return None


def create_run(session: Session, config: RunConfig, estimate: RunEstimate | None = None) -> Run:
    """Insert a queued run for an already resolved and validated config, with its pre-start estimate."""
    run = Run(
        name=config.name or default_name(config),
        status=RunStatus.queued.value,
        config_json=config.model_dump_json(),
        total_iters=config.iters,
        early_stopping_json=config.early_stopping.model_dump_json() if config.early_stopping else None,
    )
    record_estimate(run, estimate)
    session.add(run)
    session.commit()
    session.refresh(run)
    return run


def queue_run(session: Session, config: RunConfig, start_queued: Callable[[], None],
              estimate: RunEstimate | None = None) -> Run:
    """Create a queued run, then let the supervisor start it at once if its capacity rule allows
    (`start_queued`: Supervisor.tick).

    The row is committed first: the run exists whatever follows. Starting it may fail (a database error, a
    worker that cannot be spawned); the run then stays queued for the supervisor's next tick and the request
    still answers with it. The session's connection goes back to the pool before the supervisor's lock is
    waited for (see Supervisor.locked)."""
    run = create_run(session, config, estimate)
    run_id = run.id
    session.commit()
    try:
        start_queued()
    except (SQLAlchemyError, OSError):
        log.exception("run %s is queued; starting it now failed, the supervisor's next tick tries again", run_id)
    session.refresh(run)
    return run


def set_early_stopping(session: Session, run: Run, rule: EarlyStopping | None) -> None:
    """Switch early stopping on, off or re-tune it; a training worker applies it at its next evaluation."""
    run.early_stopping_json = rule.model_dump_json() if rule else None
    session.add(run)
    session.commit()


def list_runs(session: Session) -> list[Run]:
    return list(session.exec(select(Run).order_by(col(Run.id).desc())).all())


def checkpoints_of(session: Session, run_id: int) -> list[Checkpoint]:
    query = select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(col(Checkpoint.iteration))
    return list(session.exec(query).all())


def latest_train(session: Session, run_id: int) -> TrainReport | None:
    query = select(TrainReport).where(TrainReport.run_id == run_id).order_by(col(TrainReport.iteration).desc())
    return session.exec(query.limit(1)).first()


def peak_worker_memory(session: Session, run_id: int) -> int | None:
    """The highest worker memory reading of a run's reports (footprint where recorded, else resident)."""
    query = select(func.max(func.coalesce(TrainReport.footprint_bytes, TrainReport.rss_bytes))).where(
        TrainReport.run_id == run_id)
    value = session.exec(query).first()
    return int(value) if value is not None else None


def first_val_loss(session: Session, run_id: int) -> float | None:
    query = select(ValReport).where(ValReport.run_id == run_id).order_by(col(ValReport.iteration))
    first = session.exec(query.limit(1)).first()
    return first.val_loss if first else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def checkpoint_json(ckpt: Checkpoint, best: Checkpoint | None) -> dict[str, Any]:
    return {
        "iteration": ckpt.iteration,
        "val_loss": ckpt.val_loss,
        "val_full": ckpt.val_full,
        "train_loss": ckpt.train_loss,
        "trained_tokens": ckpt.trained_tokens,
        "size_bytes": ckpt.size_bytes,
        "sha256": ckpt.sha256,
        "is_best": best is not None and best.id == ckpt.id,
        "is_deployment": ckpt.is_deployment,
        "note": ckpt.note,
        "created_at": _iso(ckpt.created_at),
    }


def run_json(session: Session, run: Run, vals: Mapping[int, ValFigures] | None = None) -> dict[str, Any]:
    """A run as the API answers it. vals: val_figures of a list of runs, read once for all of them (else read here).
    `best_val` is the lowest validation loss reported (the run page's summary), checkpoint or not."""
    assert run.id is not None
    best = best_checkpoint(checkpoints_of(session, run.id))
    val = (vals if vals is not None else val_figures(session, [run.id])).get(run.id)
    return {
        "id": run.id,
        "name": run.name,
        "notes": run.notes,
        "status": run.status,
        "config": run.config,
        "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "stop_reason": run.stop_reason,
        "waiting_reason": run.waiting_reason,
        "waiting_for": run.waiting_for,
        "error": run.error,
        "best_checkpoint": checkpoint_json(best, best) if best else None,
        "best_val": {"iteration": val.best_iteration, "val_loss": val.best_loss} if val else None,
        "iteration": run.iteration,
        "total_iters": run.total_iters,
        "backend": run.backend,
        "dtype": run.train_dtype,
        "early_stopping": json.loads(run.early_stopping_json) if run.early_stopping_json else None,
        "trainable_params": run.trainable_params,
        "total_params": run.total_params,
        "test_loss": run.test_loss,
        "useful_token_share": run.useful_token_share,
        "estimate": estimate_json(run),
    }


TRAIN_FIELDS = ("iteration", "train_loss", "learning_rate", "iterations_per_second", "tokens_per_second",
                "trained_tokens", "peak_memory", "rss_bytes", "footprint_bytes", "swap_used_bytes")


def _points(
    session: Session, run_id: int, after: int | None, upto: int | None, start: int | None = None,
    fields: tuple[str, ...] = TRAIN_FIELDS,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and val points of one run as plain dicts (column reads: fast for long runs)."""
    train_q = select(*[getattr(TrainReport, f) for f in fields]).where(TrainReport.run_id == run_id)
    val_q = select(ValReport.iteration, ValReport.val_loss).where(ValReport.run_id == run_id)
    for low, strict in ((after, True), (start, False)):
        if low is not None:
            train_q = train_q.where(TrainReport.iteration > low if strict else TrainReport.iteration >= low)
            val_q = val_q.where(ValReport.iteration > low if strict else ValReport.iteration >= low)
    if upto is not None:
        train_q = train_q.where(TrainReport.iteration <= upto)
        val_q = val_q.where(ValReport.iteration <= upto)
    # Core execution (no ORM row loading): about half the cost of session.exec on 200,000 rows
    rows = session.connection().execute(train_q.order_by(col(TrainReport.iteration))).all()
    if fields == ("iteration", "train_loss"):  # the downsampling read: 200,000 rows must stay cheap
        train = [{"run_id": run_id, "iteration": it, "train_loss": loss} for it, loss in rows]
    else:
        train = [{"run_id": run_id, **dict(zip(fields, row, strict=True))} for row in rows]
    val = [{"iteration": it, "val_loss": loss}
           for it, loss in session.connection().execute(val_q.order_by(col(ValReport.iteration))).all()]
    return train, val


def _chain_points(
    session: Session, run_id: int, after: int | None, include_parent: bool, start: int | None, end: int | None,
    fields: tuple[str, ...],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A run's points; with include_parent, a continued run's curve starts with its ancestors'."""
    train, val = _points(session, run_id, after, end, start, fields)
    run = session.get(Run, run_id)
    while include_parent and run is not None and run.config.get("resume_from"):
        source = run.config["resume_from"]
        upto = source["iteration"] if end is None else min(end, source["iteration"])
        parent_train, parent_val = _points(session, source["run_id"], after, upto, start, fields)
        train = parent_train + train
        val = parent_val + [p for p in val if p["iteration"] > source["iteration"]]
        run = session.get(Run, source["run_id"])
    return train, val


def _full_rows(session: Session, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All fields of the train points picked by (run_id, iteration), in the same order."""
    wanted: dict[int, list[int]] = {}
    for key in keys:
        wanted.setdefault(key["run_id"], []).append(key["iteration"])
    found: dict[tuple[int, int], dict[str, Any]] = {}
    columns = [getattr(TrainReport, f) for f in TRAIN_FIELDS]
    for run_id, iterations in wanted.items():
        for chunk in range(0, len(iterations), 500):
            query = select(*columns).where(
                TrainReport.run_id == run_id, col(TrainReport.iteration).in_(iterations[chunk:chunk + 500])
            )
            for row in session.exec(query).all():
                found[(run_id, row[0])] = dict(zip(TRAIN_FIELDS, row, strict=True))
    return [found[(k["run_id"], k["iteration"])] for k in keys]


def metrics_json(
    session: Session, run_id: int, after: int | None, include_parent: bool = False,
    start: int | None = None, end: int | None = None, max_points: int | None = None,
) -> dict[str, Any]:
    """A run's reports, oldest first.

    include_parent: a continued run's curve starts with its ancestors' points.
    start/end: only that iteration range (inclusive); max_points: LTTB-downsample each series
    above that many points (the answer then says how many there were). Downsampling reads two
    columns of every report and the rest only for the points kept.
    """
    fields = TRAIN_FIELDS if max_points is None else ("iteration", "train_loss")
    train, val = _chain_points(session, run_id, after, include_parent, start, end, fields)
    answer: dict[str, Any] = {}
    if max_points is not None and len(train) > max_points:
        kept = [train[i] for i in lttb([p["iteration"] for p in train], [p["train_loss"] for p in train], max_points)]
        answer["train"] = _full_rows(session, kept)
    elif max_points is not None:
        answer["train"] = _full_rows(session, train)
    else:
        answer["train"] = [{f: p[f] for f in TRAIN_FIELDS} for p in train]
    answer["val"] = val
    if max_points is not None and len(val) > max_points:
        answer["val"] = [val[i] for i in lttb([p["iteration"] for p in val], [p["val_loss"] for p in val], max_points)]
    if max_points is not None:
        answer["total"] = {"train": len(train), "val": len(val)}
    return answer


def progress_view(run: Run) -> dict[str, Any]:
    """Iteration progress, elapsed and ETA for the status partial."""
    total = max(run.total_iters, 1)
    end = run.finished_at or utcnow()
    elapsed = (end - run.started_at).total_seconds() if run.started_at else 0.0
    eta = None if run.is_terminal else eta_seconds(run.iteration, total, elapsed)
    return {
        "percent": min(100.0, 100.0 * run.iteration / total),
        "elapsed": format_duration(elapsed if run.started_at else None),
        "eta": format_duration(eta),
    }


def add_confined(archive: zipfile.ZipFile, path: Path, name: str, roots: list[Path]) -> None:
    """One file into the zip, read from one handle opened within `roots` (an imported run's files are links to
    its adapter folder: one swapped for a link out of the folders loraboard reads is PathNotAllowed)."""
    with open_confined(path, roots) as source:
        stat = os.fstat(source.fileno())
        info = zipfile.ZipInfo(name, date_time=time.localtime(stat.st_mtime)[:6])
        info.file_size = stat.st_size
        with archive.open(info, "w", force_zip64=stat.st_size > 0x7FFFFFFF) as target:
            shutil.copyfileobj(source, target, 1 << 20)


def adapter_zip(settings: Settings, run: Run, ckpt: Checkpoint, card: str = "") -> bytes:
    """A zip with adapters.safetensors + adapter_config.json: `mlx_lm generate --adapter-path` ready, with its model
    card (README.md, when given) and loraboard.json; PathNotAllowed when one of the files leads out of the folders a
    run's files may lie in (app/contract/paths.run_file_roots)."""
    assert run.id is not None
    folder = run_dir(settings, run.id)
    weights = folder / ckpt.filename
    config = folder / "adapter_config.json"
    buffer = io.BytesIO()
    roots = run_file_roots(settings)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        add_confined(archive, weights, "adapters.safetensors", roots)
        add_confined(archive, config, "adapter_config.json", roots)
        if card:
            archive.writestr("README.md", card)
        archive.writestr(
            "loraboard.json",
            json.dumps({"run_id": run.id, "run_name": run.name, "iteration": ckpt.iteration,
                        "val_loss": ckpt.val_loss, "sha256": ckpt.sha256}, indent=2),
        )
    return buffer.getvalue()


def annotations_json(session: Session, run: Run) -> dict[str, Any]:
    """What the chart marks: checkpoints, the validation minimum, the early-stop point, overfitting."""
    assert run.id is not None
    checkpoints = checkpoints_of(session, run.id)
    best = best_checkpoint(checkpoints)
    train_points, val_points = _points(session, run.id, None, None, fields=("iteration", "train_loss"))
    train = [(p["iteration"], p["train_loss"]) for p in train_points]
    val = [(p["iteration"], p["val_loss"]) for p in val_points]
    val_min = None
    if val:
        low = min(loss for _, loss in val)
        val_min = {"iteration": max(it for it, loss in val if loss == low), "val_loss": low}
    early = None
    if run.status == RunStatus.early_stopped.value:
        early = {"iteration": run.iteration, "reason": run.stop_reason}
    return {
        "checkpoints": [checkpoint_json(c, best) for c in checkpoints],
        "val_min": val_min,
        "early_stop": early,
        "overfitting": [list(span) for span in overfitting_spans(train, val)],
    }
