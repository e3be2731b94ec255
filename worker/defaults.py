"""The embedded default: the sample dataset and the tiny pre-trained model, created on first use.

Importing this module does not import mlx; building the model does, so call
`worker.blas.route_blas` first in the process that builds it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from worker.sample_data import write_sample_dataset

MODEL_NAME = "tiny-mistral"
DATASET_NAME = "contact-center"
SPLITS = ("train.jsonl", "valid.jsonl", "test.jsonl")


def default_paths(data_dir: Path) -> tuple[Path, Path]:
    """(model_dir, dataset_dir) under data_dir."""
    data_dir = Path(data_dir)
    return data_dir / "models" / MODEL_NAME, data_dir / DATASET_NAME


def ensure_defaults(data_dir: Path, progress: Callable[[str], None]) -> tuple[Path, Path]:
    """Write the sample dataset if a split is missing and build the model if its folder is missing."""
    model_dir, dataset_dir = default_paths(data_dir)
    if not all((dataset_dir / name).is_file() for name in SPLITS):
        progress(f"writing the sample dataset to {dataset_dir}")
        write_sample_dataset(dataset_dir)
    if not model_dir.exists():
        from worker.tiny_model import build_tiny_model

        build_tiny_model(model_dir, dataset_dir, progress)
    return model_dir, dataset_dir
