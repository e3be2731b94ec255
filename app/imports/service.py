"""Importing a run trained with the `mlx_lm lora` CLI: one finished run, its curves and its checkpoints.

Everything is checked and the files are placed under a temporary folder first; the rows are written in one
transaction and the folder takes the run's name just before the commit. On any error the rows are rolled
back and the folder removed: an import leaves a whole run or nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import insert
from sqlmodel import Session

from app.contract.confinement import confine_file
from app.contract.paths import ALL_DIRS_SETTING, PathNotAllowed, confine, run_dir, split_dirs
from app.contract.run_config import RunConfig
from app.contract.settings import Settings
from app.imports.adapter_folder import (
    CONFIG_FILE,
    IMPORTED_BACKEND,
    AdapterFile,
    AdapterFolder,
    ImportProblem,
    cli_cwd,
    final_iteration,
    open_file,
    read_folder,
    resolve_relative,
)
from app.imports.checks import check_adapters, config_sentence, drop_unused
from app.imports.log_parse import ParsedLog, TrainPoint, fill_rates, parse_log
from app.runs.configs.yaml_config import IGNORED_KEYS
from app.tables import Checkpoint, Run, RunStatus, TrainReport, ValReport, utcnow

LOG_COPY = "mlx_lm.log"
TEMP_PREFIX = ".import-"  # the temporary folder an import fills before it takes the run's name
MAX_LOG_BYTES = 512 * 1024 * 1024
DROPPED_SHOWN = 20  # dropped config keys listed in the run's notes


@dataclass
class Imported:
    run: Run
    summary: dict[str, Any] = field(default_factory=dict)


def import_roots(settings: Settings) -> list[Path]:
    """Folders an adapter folder or log given over HTTP may lie in: data_dir and the allow-listed folders."""
    return [settings.data_dir, *split_dirs(settings.allowed_dirs), *split_dirs(settings.allowed_data_dirs),
            *split_dirs(settings.allowed_model_dirs)]


def confined(settings: Settings, path: str, what: str) -> Path:
    try:
        return confine(path, import_roots(settings), what, ALL_DIRS_SETTING)
    except PathNotAllowed as exc:
        raise ImportProblem(str(exc)) from None


# The config ---------------------------------------------------------------------------------------------


def config_from_adapter(data: dict[str, Any], folder: Path, name: str) -> tuple[RunConfig, dict[str, str]]:
    """RunConfig from mlx_lm's adapter_config.json, and the keys dropped (key -> why or its value).

    Keys loraboard decides itself (adapter_path, train...) are left out silently; keys RunConfig has no field
    for (nested ones too) are dropped and listed. A value of a key it uses that RunConfig refuses is an
    ImportProblem naming the key.
    """
    fields = set(RunConfig.model_fields)
    cwd = cli_cwd(folder, data.get("adapter_path"))
    payload: dict[str, Any] = {}
    dropped: dict[str, str] = {}
    for key, value in data.items():
        if key in IGNORED_KEYS or value is None:
            continue
        if key in fields and key not in ("name", "resume_from"):
            payload[key] = resolve_relative(value, folder, cwd) if key in ("model", "data") else value
        else:
            dropped[key] = json.dumps(value, default=str)[:200]
    payload["name"] = name
    # Strict, as mlx-lm reads the file as written ("8" is no rank); each pass drops one unused nested option
    for _ in range(len(json.dumps(payload, default=str))):
        try:
            return RunConfig.model_validate(payload, strict=True), dropped
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            if err["loc"] and err["loc"][0] == "name":
                raise ImportProblem(f"{folder / CONFIG_FILE}: {err['msg']}") from None
            if not drop_unused(payload, err, dropped):
                raise ImportProblem(f"{folder / CONFIG_FILE}: {config_sentence(err)}") from None
    raise ImportProblem(f"{folder / CONFIG_FILE}: no config loraboard can read")


def learning_rate_at(config: RunConfig, iteration: int) -> float:
    """The learning rate mlx_lm reports at `iteration` (the schedule's value at its last optimizer update)."""
    if config.lr_schedule is None:
        return config.learning_rate
    step = max(0, iteration // config.grad_accumulation_steps - 1)
    schedule = config.lr_schedule
    args = schedule.arguments
    init = args[0]

    def main(s: int) -> float:
        if schedule.name == "cosine_decay":
            decay_steps, end = args[1], args[2] if len(args) > 2 else 0.0
            return end + 0.5 * (1 + math.cos(math.pi * min(s, decay_steps) / decay_steps)) * (init - end)
        if schedule.name == "linear_schedule":
            return init + min(s, args[2]) * (args[1] - init) / args[2]
        if schedule.name == "exponential_decay":
            return init * args[1] ** s
        return init * args[1] ** (s // int(args[2]))  # step_decay

    if schedule.warmup and step < schedule.warmup + 1:
        return schedule.warmup_init + min(step, schedule.warmup) * (init - schedule.warmup_init) / schedule.warmup
    return main(step - (schedule.warmup + 1) if schedule.warmup else step)


# The log ------------------------------------------------------------------------------------------------


def read_log(path: Path, roots: list[Path] | None = None) -> ParsedLog:
    """The log parsed, read from one handle within `roots` (None: its folder); a link out is refused."""
    try:
        handle = open_file(path, roots)
    except OSError:
        raise ImportProblem(f"log {path} does not exist (or is not a file)") from None
    with handle:
        if os.fstat(handle.fileno()).st_size > MAX_LOG_BYTES:
            raise ImportProblem(f"log {path} is larger than {MAX_LOG_BYTES:,} bytes: not an mlx_lm lora log")
        text = handle.read(MAX_LOG_BYTES + 1).decode("utf-8", errors="replace")
    log = parse_log(text)
    if not log.usable:
        where = f"; the first unrecognised one is line {log.first_unrecognised}" if log.first_unrecognised else ""
        raise ImportProblem(f"log {path} gives no train or validation report of mlx_lm lora ('Iter N: Train loss "
                            f"...' or its table rows) in {log.lines:,} lines{where}")
    return log


def train_rows(run_id: int, config: RunConfig, points: list[TrainPoint], at: datetime) -> list[dict[str, Any]]:
    fill_rates(points)
    return [{"run_id": run_id, "iteration": p.iteration, "train_loss": p.train_loss,
             "learning_rate": p.learning_rate if p.learning_rate is not None else learning_rate_at(config, p.iteration),
             "iterations_per_second": p.iterations_per_second or 0.0, "tokens_per_second": p.tokens_per_second or 0.0,
             "trained_tokens": p.trained_tokens or 0, "peak_memory": p.peak_memory or 0.0, "recorded_at": at}
            for p in points]


def missing_columns(log: ParsedLog) -> list[str]:
    """Report columns the log did not give (stored as 0)."""
    names = ("tokens_per_second", "trained_tokens", "peak_memory")
    return [n for n in names if log.train and all(getattr(p, n) is None for p in log.train)]


# The files ----------------------------------------------------------------------------------------------


def _copy_hashed(source: Path, target: Path, roots: list[Path]) -> str:
    """Copy source (opened once within `roots`) to target (fsynced), returning the sha256 of what was written."""
    digest = hashlib.sha256()
    with open_file(source, roots) as src, target.open("wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
            dst.write(block)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


def _link_target(source: Path, roots: list[Path]) -> Path:
    """Where a link to `source` points: its resolved path, refused when that leads out of `roots`."""
    try:
        return confine_file(source, roots)
    except PathNotAllowed as exc:
        raise ImportProblem(str(exc)) from None


def place_files(temp: Path, planned: list[tuple[int, AdapterFile]], folder: Path, log: Path | None,
                copy: bool, roots: list[Path] | None = None) -> dict[int, str]:
    """Checkpoint files (and adapter_config.json, the log) into `temp` under loraboard's names, copied or
    linked, each within `roots` (None: the adapter folder); returns the sha256 per iteration of what the run
    holds."""
    allowed = [folder] if roots is None else roots
    hashes: dict[int, str] = {}
    for iteration, source in planned:
        target = temp / f"{iteration:07d}_adapters.safetensors"
        if copy:
            hashes[iteration] = _copy_hashed(source.path, target, allowed)
        else:
            target.symlink_to(_link_target(source.path, allowed))
            hashes[iteration] = source.sha256
    extras = [(folder / CONFIG_FILE, temp / CONFIG_FILE)] + ([(log, temp / LOG_COPY)] if log is not None else [])
    for source_path, target in extras:
        if copy:
            _copy_hashed(source_path, target, allowed)
        else:
            target.symlink_to(_link_target(source_path, allowed))
    return hashes


def remove_stale_temps(adapters_dir: Path, older_than_s: float = 24 * 3600) -> None:
    """Temporary folders of imports cut off by a crash (a day old: never one still being filled)."""
    if not adapters_dir.is_dir():
        return
    now = time.time()
    for leftover in adapters_dir.glob(TEMP_PREFIX + "*.tmp"):
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > older_than_s:
                shutil.rmtree(leftover)


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


# The import ---------------------------------------------------------------------------------------------


def plan_checkpoints(adapters: AdapterFolder, last_logged: int | None) -> list[tuple[int, AdapterFile]]:
    planned = [(c.iteration, c) for c in adapters.checkpoints]
    end = final_iteration(adapters, last_logged)
    if end is not None and adapters.final is not None:
        planned.append((end, adapters.final))
    return sorted(planned, key=lambda item: item[0])


def run_notes(folder: Path, log_path: Path | None, log: ParsedLog | None, dropped: dict[str, str],
              copy: bool) -> str:
    lines = [f"imported from {folder}" + (f" with the log {log_path}" if log_path else " (no log: no curves)"),
             "files " + ("copied into loraboard's adapters folder" if copy else "linked (symlinks to the folder)")]
    if log is not None and (missing := missing_columns(log)):
        lines.append("the log gives no " + ", ".join(missing) + ": those read 0")
    if log is not None and log.style == "table":
        lines.append("the log gives no learning rate or it/sec: the learning rate is the config's, it/sec is "
                     "derived from tokens/sec and tokens")
    if dropped:
        shown = list(dropped.items())[:DROPPED_SHOWN]
        lines.append(f"{len(dropped)} adapter_config.json key(s) loraboard has no field for, or refused: "
                     + "; ".join(f"{k} = {v}" for k, v in shown))
    return "\n".join(lines)


def import_run(session: Session, settings: Settings, adapter_dir: str, log: str | None = None,
               name: str | None = None, copy: bool = True) -> Imported:
    """Create a completed run from an mlx_lm adapter folder (and its log); ImportProblem names what is wrong."""
    folder = confined(settings, adapter_dir, "adapter folder")
    log_path = confined(settings, log, "log") if log is not None and log.strip() else None
    remove_stale_temps(settings.adapters_dir)
    try:
        adapters = read_folder(folder, import_roots(settings))
        parsed = read_log(log_path, import_roots(settings)) if log_path is not None else None
    except OSError as exc:  # unreadable files, names too long: the request's fault, said as such
        raise ImportProblem(f"{exc.filename or folder}: {exc.strerror or exc}") from None
    run_name = (name or "").strip() or folder.name
    config, dropped = config_from_adapter(adapters.config, folder, run_name)
    roots = import_roots(settings)  # every file's header and tensors, before anything is written, opened confined
    check_adapters(adapters, config, settings, lambda path: open_file(path, roots))
    logged = [p.iteration for p in (parsed.train + parsed.val)] if parsed else []
    last_logged = max(logged) if logged else None
    planned = plan_checkpoints(adapters, last_logged)
    last = max([last_logged or 0, *(it for it, _ in planned)])

    settings.adapters_dir.mkdir(parents=True, exist_ok=True)
    temp = settings.adapters_dir / f"{TEMP_PREFIX}{secrets.token_hex(6)}.tmp"
    temp.mkdir()
    final_dir: Path | None = None
    try:
        hashes = place_files(temp, planned, folder, log_path, copy, import_roots(settings))
        now = utcnow()
        run = Run(name=run_name, status=RunStatus.completed.value, config_json=config.model_dump_json(),
                  created_at=now, started_at=_mtime(folder / CONFIG_FILE),
                  finished_at=max([_mtime(f.path) for _, f in planned], default=now), iteration=last,
                  total_iters=max(config.iters, last), backend=IMPORTED_BACKEND,
                  test_loss=parsed.test_loss if parsed else None,
                  trainable_params=parsed.trainable_params if parsed else None,
                  total_params=parsed.total_params if parsed else None,
                  notes=run_notes(folder, log_path, parsed, dropped, copy))
        session.add(run)
        session.flush()
        assert run.id is not None
        train = parsed.train if parsed else []
        val = parsed.val if parsed else []
        if train:
            session.execute(insert(TrainReport), train_rows(run.id, config, train, now))
        if val:
            session.execute(insert(ValReport), [{"run_id": run.id, "iteration": v.iteration, "val_loss": v.val_loss,
                                                 "val_time": v.val_time, "batches": config.val_batches,
                                                 "recorded_at": now} for v in val])
        val_at = {v.iteration: v.val_loss for v in val}
        for iteration, source in planned:
            before = [p for p in train if p.iteration <= iteration]
            session.add(Checkpoint(
                run_id=run.id, iteration=iteration, filename=f"{iteration:07d}_adapters.safetensors",
                size_bytes=source.size_bytes, sha256=hashes[iteration], val_loss=val_at.get(iteration),
                val_full=iteration in val_at and config.val_batches == -1,
                train_loss=before[-1].train_loss if before else None,
                trained_tokens=before[-1].trained_tokens if before else None, created_at=_mtime(source.path)))
        target = run_dir(settings, run.id)
        if target.exists():
            raise ImportProblem(f"{target} already exists (left by a deleted run?): move it away, then import again",
                                status=409)
        if log_path is not None:
            run.log_path = str(target / LOG_COPY)
        session.flush()
        os.rename(temp, target)
        final_dir = target
        session.commit()
    except BaseException:
        session.rollback()
        for leftover in (final_dir, temp):
            if leftover is not None and leftover.exists():
                with contextlib.suppress(OSError):
                    shutil.rmtree(leftover)
        raise
    session.refresh(run)
    summary = {"folder": str(folder), "log": str(log_path) if log_path else None, "copied": copy,
               "linked": not copy, "checkpoints": [it for it, _ in planned],
               "dropped_config_keys": sorted(dropped), "log_counts": parsed.counts() if parsed else None,
               "missing_columns": missing_columns(parsed) if parsed else []}
    return Imported(run, summary)
