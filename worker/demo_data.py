"""The `demo_data` job (worker/job.py): a seed-shaped demo dataset (worker/seed_shaped.py) written into a new folder
under the datasets folder, token lengths counted with the model's tokenizer.

The files are written into a hidden temporary folder beside the target and renamed into place once all of them are
complete, so a failure or a cancel leaves nothing half-written behind. Progress counts examples; a cancel is seen
between two examples. The result names the folder and, per split, the number of examples and their mean and longest
token length; the app registers the folder as a dataset when it sees the job completed (app/datasets/demo_data.py).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.contract.confinement import PathNotAllowed
from app.contract.kinds import DemoDataParams
from worker.job import JobContext, JobInputError
from worker.seed_shaped import write_seed_shaped
from worker.token_stats import TokenizerError, load_tokenizer

UNIT = "examples"


class DemoFolderTaken(JobInputError, FileExistsError):
    """The dataset folder to write already exists."""


def split_summary(lengths: list[int]) -> dict[str, Any]:
    """One split of the result: its number of examples and their mean and longest token length."""
    return {"examples": len(lengths), "mean": statistics.fmean(lengths) if lengths else None,
            "longest": max(lengths, default=None)}


def write_into_place(target: Path, write: Callable[[Path], None]) -> None:
    """Call write(temporary folder) for a hidden folder beside `target`, then rename it into place; the temporary
    folder is removed when writing fails or is cancelled."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        write(temp)
        if target.exists():  # os.rename would replace an empty folder that appeared meanwhile
            raise DemoFolderTaken(f"a folder named {target.name!r} appeared in {target.parent} meanwhile")
        os.rename(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def run(ctx: JobContext[DemoDataParams]) -> dict[str, Any]:
    params = ctx.params
    root = ctx.settings.local_datasets_dir
    target = root / params.name
    if target.exists():
        raise DemoFolderTaken(f"a folder named {params.name!r} already exists in {root}")
    ctx.set_total(sum(params.sizes.values()), UNIT)
    ctx.check_stop()
    try:
        tokenizer = load_tokenizer(params.model, ctx.settings)
    except (FileNotFoundError, PathNotAllowed):
        raise
    except Exception as exc:
        raise TokenizerError(f"cannot load the tokenizer of {params.model}: {type(exc).__name__}: {exc}") from exc

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    def one_done() -> None:
        ctx.advance()
        ctx.check_stop()

    counted: dict[str, list[int]] = {}

    def write(folder: Path) -> None:
        counted.update(write_seed_shaped(folder, count_tokens, seed=params.seed, scale=params.scale,
                                         sizes=params.sizes, on_example=one_done))

    ctx.detail = f"writing {target}"
    write_into_place(target, write)
    return {"folder": str(target), "name": params.name, "model": params.model, "scale": params.scale,
            "seed": params.seed, "splits": {split: split_summary(lengths) for split, lengths in counted.items()}}
