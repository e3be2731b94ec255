"""Datasets: where they live, whether a run can train on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlmodel import Session

from app.settings import Settings


def dataset_problem(data_dir: Path) -> str | None:
    """Why a data folder cannot be trained on, or None."""
    if not data_dir.is_dir():
        return f"data folder {data_dir} does not exist"
    if not (data_dir / "train.jsonl").is_file():
        return f"data folder {data_dir} has no train.jsonl"
    return None


def dataset_choices(session: Session, settings: Settings) -> list[dict[str, Any]]:
    """Registered datasets the new-run form offers (name, path, format, counts)."""
    return []


def register_dataset(session: Session, settings: Settings, folder: Path, name: str) -> Any:
    """Record a dataset folder (validated) so the pickers and the datasets page list it."""
    raise NotImplementedError("dataset registry")
