"""Datasets: where they live, whether a run can train on them."""

from __future__ import annotations

from pathlib import Path


def dataset_problem(data_dir: Path) -> str | None:
    """Why a data folder cannot be trained on, or None."""
    if not data_dir.is_dir():
        return f"data folder {data_dir} does not exist"
    if not (data_dir / "train.jsonl").is_file():
        return f"data folder {data_dir} has no train.jsonl"
    return None
