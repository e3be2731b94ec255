"""Where a run's files live (pure path arithmetic, shared by the app and workers)."""

from __future__ import annotations

from pathlib import Path

from app.settings import Settings


def run_dir(settings: Settings, run_id: int) -> Path:
    return settings.adapters_dir / f"run-{run_id:04d}"


def checkpoint_files(settings: Settings, run_id: int, iteration: int) -> tuple[Path, Path]:
    """(adapter weights, optimizer state) of one checkpoint."""
    folder = run_dir(settings, run_id)
    return folder / f"{iteration:07d}_adapters.safetensors", folder / f"{iteration:07d}_optimizer.safetensors"
