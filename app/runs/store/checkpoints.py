"""Checkpoint actions: the deployment marker, notes, deletion, and the commands that use one."""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from app.contract.paths import (
    checkpoint_adapter_dir,
    checkpoint_files,
    ensure_checkpoint_adapter_dir,
    remove_temp_files,
    run_dir,
)
from app.contract.settings import Settings
from app.contract.status import ACTIVE
from app.runs.store.runs import checkpoints_of
from app.tables import Checkpoint, Run


class CheckpointError(ValueError):
    """A request about a checkpoint that cannot be honoured (the message says why)."""


def find_checkpoint(session: Session, run_id: int, iteration: int) -> Checkpoint | None:
    query = select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.iteration == iteration)
    return session.exec(query).first()


def set_deployment(session: Session, run_id: int, ckpt: Checkpoint) -> None:
    """One deployment checkpoint per run: marking one unmarks the others (the caller commits)."""
    for other in checkpoints_of(session, run_id):
        if other.is_deployment and other.id != ckpt.id:
            other.is_deployment = False
            session.add(other)
    ckpt.is_deployment = True
    session.add(ckpt)


def set_note(session: Session, ckpt: Checkpoint, note: str) -> None:
    if len(note) > 2000:
        raise CheckpointError("note is longer than 2,000 characters")
    ckpt.note = note.strip()
    session.add(ckpt)
    session.commit()


def delete_checkpoint(session: Session, settings: Settings, run: Run, ckpt: Checkpoint, confirm: str) -> None:
    """Delete the row and its files (weights, optimizer state, its --adapter-path folder); the deployment one
    needs confirm='deployment'."""
    if ckpt.is_deployment and confirm != "deployment":
        raise CheckpointError(
            f"iteration {ckpt.iteration} is the deployment checkpoint; "
            "confirm with confirm=deployment to delete it"
        )
    if confirm not in ("yes", "deployment"):
        raise CheckpointError("deleting a checkpoint needs confirm=yes")
    assert run.id is not None
    (run_dir(settings, run.id) / ckpt.filename).unlink(missing_ok=True)
    checkpoint_files(settings, run.id, ckpt.iteration)[1].unlink(missing_ok=True)
    shutil.rmtree(checkpoint_adapter_dir(settings, run.id, ckpt.iteration), ignore_errors=True)
    session.delete(ckpt)
    session.commit()


def usage_commands(base_url: str, run: Run, ckpt: Checkpoint, settings: Settings | None = None,
                   group_size: int = 64) -> dict[str, str]:
    """The exact mlx_lm commands for one checkpoint. With settings: on this machine, with the checkpoint's own
    `--adapter-path` folder (app/contract/paths.ensure_checkpoint_adapter_dir); without: download, unzip, then use."""
    if settings is None:
        return download_commands(base_url, run, ckpt)
    assert run.id is not None
    model = shlex.quote(str(run.config["model"]))
    try:
        folder = ensure_checkpoint_adapter_dir(settings, run.id, ckpt.iteration)
    except FileNotFoundError:
        folder = checkpoint_adapter_dir(settings, run.id, ckpt.iteration)
    adapter = shlex.quote(str(folder))
    fused = settings.local_models_dir / f"run-{run.id}-iter-{ckpt.iteration}-fused"
    return {
        "generate": f'python -m mlx_lm generate --model {model} --adapter-path {adapter} --prompt "…"',
        "fuse": f"python -m mlx_lm fuse --model {model} --adapter-path {adapter} --save-path {shlex.quote(str(fused))}",
        "server": f"python -m mlx_lm server --model {model} --adapter-path {adapter} --host 127.0.0.1 --port 8080",
        "quantize": f"python -m mlx_lm convert --hf-path {shlex.quote(str(fused))} "
                    f"--mlx-path {shlex.quote(str(fused) + '-4bit')} -q --q-bits 4 --q-group-size {group_size}",
    }


def download_commands(base_url: str, run: Run, ckpt: Checkpoint) -> dict[str, str]:
    """The mlx_lm commands for one checkpoint on another machine (download, unzip, then use)."""
    model = shlex.quote(str(run.config["model"]))
    folder = f"run-{run.id}-iter-{ckpt.iteration}"
    fetch = (
        f"curl -sSfo {folder}.zip {base_url}/api/runs/{run.id}/checkpoints/{ckpt.iteration}/download"
        f" && unzip -o {folder}.zip -d {folder}"
    )
    return {
        "generate": f'{fetch} && mlx_lm.generate --model {model} --adapter-path {folder} --prompt "…"',
        "fuse": f"{fetch} && mlx_lm.fuse --model {model} --adapter-path {folder} --save-path {folder}-fused",
        "server": f"{fetch} && mlx_lm.server --model {model} --adapter-path {folder}",
    }


def improvement(first_val: float | None, val_loss: float | None) -> float | None:
    """Relative improvement over the first validation (the reference run's "74%")."""
    if first_val is None or val_loss is None or first_val <= 0:
        return None
    return 1.0 - val_loss / first_val


def table_rows(
    session: Session, run: Run, first_val: float | None, base_url: str
) -> list[dict[str, Any]]:
    assert run.id is not None
    rows = []
    for ckpt in checkpoints_of(session, run.id):
        rows.append({"c": ckpt, "improvement": improvement(first_val, ckpt.val_loss)})
    return rows


def remove_leftover_temps(session: Session, settings: Settings, writing: Callable[[Run], bool]) -> list[Path]:
    """Delete temporary files left in run folders by workers killed mid-write (at server start).

    writing(run): whether an active run's worker may still be writing; its folder is left alone.
    """
    busy = {run_dir(settings, run.id) for run in session.exec(select(Run).where(col(Run.status).in_(ACTIVE)))
            if run.id is not None and writing(run)}
    removed: list[Path] = []
    if settings.adapters_dir.is_dir():
        for folder in sorted(settings.adapters_dir.glob("run-*")):
            if folder.is_dir() and folder not in busy:
                removed += remove_temp_files(folder)
    return removed
