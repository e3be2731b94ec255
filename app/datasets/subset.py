"""Subset and split: a seeded random subset of N examples, re-split into train/valid/test by ratios.

The drawing is pure and deterministic for a seed (`draw_subset`); `create_subset` writes the new
folder under the datasets folder atomically (a hidden temp folder beside it, then one rename), so an
error leaves nothing behind, and registers it. Example lines are copied byte for byte.
"""

from __future__ import annotations

import io
import math
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlmodel import Session

from app.contract.confinement import PathNotAllowed, open_confined
from app.contract.paths import data_roots
from app.contract.settings import Settings
from app.datasets.registry import DatasetError, register_dataset, registry_problem

SPLITS = ("train", "valid", "test")
DEFAULT_RATIOS = (0.8, 0.1, 0.1)
T = TypeVar("T")


class SubsetError(ValueError):
    """A subset that cannot be made; field names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def validate_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Three shares (train, valid, test), each in [0, 1], train above 0, adding up to 1."""
    values = list(ratios)
    if len(values) != 3:
        raise ValueError(f"ratios must be three numbers (train, valid, test), got {len(values)}: {values}")
    for split, value in zip(SPLITS, values, strict=True):
        if not math.isfinite(value) or not 0 <= value <= 1:
            raise ValueError(f"the {split} ratio must be between 0 and 1, got {value:g}")
    if values[0] == 0:
        raise ValueError("the train ratio must be above 0: a dataset needs training examples")
    total = sum(values)
    if abs(total - 1) > 1e-6:
        raise ValueError(f"ratios must add up to 1, got {values[0]:g} + {values[1]:g} + {values[2]:g} = {total:g}")
    return values[0], values[1], values[2]


def split_sizes(n: int, ratios: Sequence[float]) -> tuple[int, int, int]:
    """Sizes adding up to n, nearest to n * ratio (largest remainder), each split with a share gets at least 1."""
    shares = validate_ratios(ratios)
    wanted = [n * share for share in shares]
    sizes = [math.floor(w) for w in wanted]
    by_remainder = sorted(range(3), key=lambda i: (wanted[i] - sizes[i], -i), reverse=True)
    for i in by_remainder[: n - sum(sizes)]:
        sizes[i] += 1
    needed = [i for i in range(3) if shares[i] > 0]
    if n < len(needed):
        names = ", ".join(SPLITS[i] for i in needed)
        raise ValueError(f"n = {n} is too small: {names} each need at least one example")
    for i in needed:
        if sizes[i] == 0:  # take one from the largest split
            sizes[max(range(3), key=lambda j: sizes[j])] -= 1
            sizes[i] = 1
    return sizes[0], sizes[1], sizes[2]


def draw_subset(examples: Sequence[T], n: int, seed: int, ratios: Sequence[float]) -> dict[str, list[T]]:
    """n examples drawn at random (seeded), shuffled, cut into train/valid/test; no example in two splits."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if n > len(examples):
        raise ValueError(f"n = {n:,} is more than the {len(examples):,} examples to draw from")
    sizes = split_sizes(n, ratios)
    order = random.Random(seed).sample(range(len(examples)), n)  # a random order: the subset comes shuffled
    parts: dict[str, list[T]] = {}
    start = 0
    for split, size in zip(SPLITS, sizes, strict=True):
        parts[split] = [examples[i] for i in order[start:start + size]]
        start += size
    return parts


def read_examples(folder: Path, splits: Sequence[str], roots: Sequence[Path] | None = None) -> list[str]:
    """The non-blank lines of the chosen split files, in split order (train, valid, test); each file opened once,
    within `roots` (the data folders; None: the folder itself), a file linking out of them refused."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise SubsetError("splits", f"unknown split {unknown[0]!r}: expected train, valid or test")
    if not splits:
        raise SubsetError("splits", "choose at least one split to draw from")
    if not folder.is_dir():
        raise SubsetError("source", f"dataset folder {folder} does not exist")
    files = [folder / f"{split}.jsonl" for split in SPLITS if split in splits]
    present = [path for path in files if path.is_file() or path.is_symlink()]
    if not present:
        names = ", ".join(path.name for path in files)
        raise SubsetError("splits", f"{folder} has none of the chosen files ({names})")
    lines = []
    for path in present:
        try:
            handle = open_confined(path, [folder] if roots is None else roots)
        except PathNotAllowed as exc:
            raise SubsetError("source", str(exc)) from None
        except OSError:  # a link to nothing, a folder: not a split file
            continue
        with io.TextIOWrapper(handle, encoding="utf-8") as text:
            lines.extend(line.rstrip("\r\n") for line in text if line.strip())
    return lines


@dataclass(frozen=True)
class SubsetResult:
    name: str
    path: Path
    counts: dict[str, int]
    dataset_id: int | None
    source: Path
    n: int
    seed: int
    ratios: tuple[float, float, float]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "counts": self.counts, "dataset_id": self.dataset_id,
                "source": str(self.source), "n": self.n, "seed": self.seed, "ratios": list(self.ratios)}


def write_splits(folder: Path, parts: dict[str, list[str]]) -> None:
    for split, lines in parts.items():
        if lines:  # a split with a zero ratio gets no file
            with (folder / f"{split}.jsonl").open("w", encoding="utf-8", newline="\n") as handle:
                handle.writelines(line + "\n" for line in lines)


def create_subset(
    session: Session, settings: Settings, source: Path, name: str, n: int, seed: int,
    ratios: Sequence[float], splits: Sequence[str] = SPLITS,
) -> SubsetResult:
    """Draw, write <datasets dir>/<name>/ atomically, register it; nothing is left behind on an error."""
    source = source.expanduser().resolve()
    name = name.strip()
    problem = registry_problem(session, name)
    if problem:
        raise SubsetError("name", problem)
    root = settings.local_datasets_dir
    target = root / name
    if target.exists():
        raise SubsetError("name", f"a folder named {name!r} already exists in {root}")
    examples = read_examples(source, splits, data_roots(settings))
    try:
        shares = validate_ratios(ratios)
        parts = draw_subset(examples, n, seed, shares)
    except ValueError as exc:
        raise SubsetError("ratios" if "ratio" in str(exc) else "n", str(exc)) from None
    root.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        write_splits(temp, parts)
        os.rename(temp, target)  # atomic; refuses a folder that appeared meanwhile
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise SubsetError("name", f"could not write {target}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    try:
        dataset = register_dataset(session, settings, target, name, source=f"subset of {n}")
    except BaseException as exc:
        shutil.rmtree(target, ignore_errors=True)
        if isinstance(exc, DatasetError):
            raise SubsetError("source", f"the subset of {source} is not a usable dataset: {exc}") from None
        raise
    counts = {split: len(lines) for split, lines in parts.items()}
    return SubsetResult(name, target, counts, dataset.id, source, n, seed, shares)
