"""Datasets: where they live, whether a run can train on them, and the registry of dataset folders."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from app.contract.paths import DATA_DIRS_SETTING, PathNotAllowed, confine, data_roots
from app.contract.settings import Settings
from app.datasets.validation import SPLITS, FeatureKeys, ValidationReport, validate_dataset
from app.tables import Dataset, DatasetCheck, utcnow

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"


class DatasetError(ValueError):
    """A dataset cannot be registered or stored; the message says why (file:line errors included)."""

    def __init__(self, message: str, report: ValidationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


def dataset_problem(
    data_dir: Path, mask_prompt: bool = False, features: Mapping[str, Any] | None = None,
    session: Session | None = None, roots: Sequence[Path] | None = None,
) -> str | None:
    """Why a data folder cannot be trained on (the first 20 file:line errors and the total), or None.

    `mask_prompt` and `features` (a run config's prompt_feature, completion_feature, chat_feature,
    text_feature) check the data as that run will read it. With a session, the answer is kept in the
    database and reused while the split files keep their size and modification time. `roots`: the folders the
    split files may lead into (data_roots); None: the data folder itself.
    """
    if not data_dir.is_dir():
        return f"data folder {data_dir} does not exist"
    keys = FeatureKeys.from_config(features)
    if session is None:
        return _check_lines(data_dir, mask_prompt, keys, roots)
    reading = json.dumps({"mask_prompt": mask_prompt, "keys": [keys.prompt, keys.completion, keys.chat, keys.text]})
    signature = files_signature(data_dir)
    query = select(DatasetCheck).where(DatasetCheck.path == str(data_dir), DatasetCheck.reading == reading)
    cached = session.exec(query).first()
    if cached is not None and cached.files_signature == signature:
        return cached.problem
    problem = _check_lines(data_dir, mask_prompt, keys, roots)
    cached = cached or DatasetCheck(path=str(data_dir), reading=reading, files_signature=signature)
    cached.files_signature, cached.problem, cached.checked_at = signature, problem, utcnow()
    session.add(cached)
    session.commit()
    return problem


def _check_lines(data_dir: Path, mask_prompt: bool, keys: FeatureKeys, roots: Sequence[Path] | None) -> str | None:
    report = validate_dataset(data_dir, mask_prompt=mask_prompt, keys=keys, roots=roots)
    if report.ok:
        return None
    return f"data folder {data_dir} has {report.errors.count:,} problem{'s' if report.errors.count != 1 else ''}:\n" \
        + report.summary()


def name_problem(name: str) -> str | None:
    """Why a dataset name is not allowed (it becomes a folder name), or None."""
    if not name:
        return "name is required"
    if not NAME_PATTERN.fullmatch(name):
        return f"name must be {NAME_RULE}; got {name!r}"
    return None


def files_signature(folder: Path) -> str:
    """JSON {file name: [size, mtime_ns]} of the split files present: changes when a file does."""
    signature: dict[str, list[int]] = {}
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        if path.is_file():
            stat = path.stat()
            signature[path.name] = [stat.st_size, stat.st_mtime_ns]
    return json.dumps(signature, sort_keys=True)


def _apply_report(dataset: Dataset, report: ValidationReport, signature: str) -> None:
    counts = report.counts
    dataset.format = report.format
    dataset.train_count, dataset.valid_count, dataset.test_count = counts["train"], counts["valid"], counts["test"]
    dataset.error_count = report.errors.count
    dataset.first_error = str(report.errors.issues[0]) if report.errors.issues else None
    dataset.files_signature = signature
    dataset.checked_at = utcnow()


def registry_problem(session: Session, name: str, folder: Path | None = None) -> str | None:
    """Why `name` (and `folder`) cannot be added to the registry, or None."""
    problem = name_problem(name)
    if problem:
        return problem
    existing = session.exec(select(Dataset).where(Dataset.name == name)).first()
    if existing is not None:
        return f"a dataset named {name!r} already exists (dataset {existing.id}, {existing.path})"
    if folder is not None:
        same = session.exec(select(Dataset).where(Dataset.path == str(folder))).first()
        if same is not None:
            return f"folder {folder} is already registered as {same.name!r} (dataset {same.id})"
    return None


def record_dataset(session: Session, folder: Path, name: str, source: str, report: ValidationReport) -> Dataset:
    """Insert a checked folder into the registry."""
    if not report.ok:
        raise DatasetError(f"{folder} is not a valid dataset:\n{report.summary()}", report)
    problem = registry_problem(session, name, folder)
    if problem:
        raise DatasetError(problem)
    dataset = Dataset(name=name, path=str(folder), source=source)
    _apply_report(dataset, report, files_signature(folder))
    session.add(dataset)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise DatasetError(f"a dataset named {name!r} already exists") from None
    session.refresh(dataset)
    return dataset


def register_dataset(
    session: Session, settings: Settings, folder: Path, name: str, source: str = "folder"
) -> Dataset:
    """Record a dataset folder (validated) so the pickers and the datasets page list it.

    `folder` must be an absolute path; an empty `name` takes the folder's name. Raises DatasetError
    naming the problem (bad name, name or folder already registered, file:line validation errors).
    """
    folder = Path(folder).expanduser()
    if not folder.is_absolute():
        raise DatasetError(f"path must be an absolute folder path, got {str(folder)!r}")
    try:
        folder = confine(folder, data_roots(settings), "dataset folder", DATA_DIRS_SETTING)
    except PathNotAllowed as exc:
        raise DatasetError(str(exc)) from None
    name = name.strip() or folder.name
    problem = registry_problem(session, name, folder)
    if problem:
        raise DatasetError(problem)
    if not folder.is_dir():
        raise DatasetError(f"folder {folder} does not exist")
    return record_dataset(session, folder, name, source, validate_dataset(folder, roots=data_roots(settings)))


def refresh_dataset(session: Session, dataset: Dataset, roots: Sequence[Path] | None = None) -> Dataset:
    """Check the dataset again when its files changed since the last check (cheap when they did not); `roots` as
    validate_dataset takes them."""
    folder = Path(dataset.path)
    signature = files_signature(folder) if folder.is_dir() else ""
    if signature == dataset.files_signature and signature:
        return dataset
    _apply_report(dataset, validate_dataset(folder, roots=roots), signature)
    session.add(dataset)
    session.commit()
    session.refresh(dataset)
    return dataset


def ensure_sample_registered(session: Session, settings: Settings) -> None:
    """The bundled sample dataset is always in the registry (when it has been written)."""
    folder = settings.default_dataset_dir.resolve()
    if not (folder / "train.jsonl").is_file():
        return
    if session.exec(select(Dataset).where(Dataset.path == str(folder))).first() is not None:
        return
    taken = session.exec(select(Dataset).where(Dataset.name == folder.name)).first() is not None
    name = f"{folder.name}-sample" if taken else folder.name
    try:
        record_dataset(session, folder, name, "sample", validate_dataset(folder, roots=data_roots(settings)))
    except DatasetError:
        return  # a broken sample is shown by the runs it refuses, not hidden in the registry


def list_datasets(session: Session, settings: Settings) -> list[Dataset]:
    """Every registered dataset, the sample first (registered as the app starts), each re-checked when its files
    changed."""
    rows = session.exec(select(Dataset).order_by(col(Dataset.created_at), col(Dataset.id))).all()
    return [refresh_dataset(session, row, data_roots(settings)) for row in rows]


def dataset_json(dataset: Dataset) -> dict[str, Any]:
    folder_exists = Path(dataset.path).is_dir()
    return {
        "id": dataset.id, "name": dataset.name, "path": dataset.path, "format": dataset.format,
        "counts": {"train": dataset.train_count, "valid": dataset.valid_count, "test": dataset.test_count},
        "source": dataset.source, "created_at": dataset.created_at.isoformat(),
        "checked_at": dataset.checked_at.isoformat(), "ok": folder_exists and dataset.error_count == 0,
        "error_count": dataset.error_count, "first_error": dataset.first_error,
    }


def dataset_choices(session: Session, settings: Settings) -> list[dict[str, Any]]:
    """Registered datasets the new-run form offers (the sample first): id, name, path, format, counts, ok."""
    return [dataset_json(dataset) for dataset in list_datasets(session, settings)]
