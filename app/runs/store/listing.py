"""The runs list and run housekeeping: filters, table rows, rename, notes, deletion, comparing configs."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import String, delete, func, or_
from sqlmodel import Session, SQLModel, col, select

from app.contract.paths import run_dir
from app.contract.policy import format_duration
from app.contract.safe_text import text_problem
from app.contract.settings import Settings
from app.runs.store.summary import TrainFigures, ValFigures, improvement, train_figures, val_figures, wall_seconds
from app.tables import TERMINAL, Checkpoint, Run, RunStatus, TrainReport, ValReport, utcnow

ACTIVE = "active"
ENDED = "ended"
STATUS_FILTERS: tuple[str, ...] = (ACTIVE, ENDED, *(s.value for s in RunStatus))
NAME_MAX = 200
NOTES_MAX = 5000
MAX_RUN_ID = 2**63 - 1  # SQLite's largest integer


class RunListError(ValueError):
    """A request about a run that cannot be honoured (the message says why)."""


class RunLiveError(RunListError):
    """The run is queued or training: it must be stopped first."""


class ConfirmMissingError(RunListError):
    """A deletion without its confirmation."""


class RunGoneError(RunListError):
    """The run was deleted meanwhile (by another request)."""


@dataclass(frozen=True)
class RunFilter:
    status: str = ""
    text: str = ""

    def query(self) -> dict[str, str]:
        """The filter as URL query parameters (empty ones left out)."""
        return {k: v for k, v in {"status": self.status, "q": self.text}.items() if v}


def parse_filter(status: str | None, text: str | None) -> RunFilter:
    """A filter from the page's query; an unknown status names the ones there are."""
    status = (status or "").strip()
    if status and status not in STATUS_FILTERS:
        raise RunListError(f"unknown status filter {status!r}: expected one of {', '.join(STATUS_FILTERS)}")
    return RunFilter(status=status, text=(text or "").strip())


def status_values(status: str) -> list[str] | None:
    """The run statuses a status filter keeps (None: all of them)."""
    if not status:
        return None
    if status == ACTIVE:
        return [s.value for s in RunStatus if s not in TERMINAL]
    if status == ENDED:
        return [s.value for s in RunStatus if s in TERMINAL]
    return [RunStatus(status).value]


def filtered_runs(session: Session, run_filter: RunFilter) -> list[Run]:
    """Runs matching the filter, newest first; the text matches name, notes, model or dataset (any case)."""
    query = select(Run)
    statuses = status_values(run_filter.status)
    if statuses is not None:
        query = query.where(col(Run.status).in_(statuses))
    if run_filter.text:
        fields = (col(Run.name), col(Run.notes), func.json_extract(Run.config_json, "$.model", type_=String),
                  func.json_extract(Run.config_json, "$.data", type_=String))
        query = query.where(or_(*(field.contains(run_filter.text, autoescape=True) for field in fields)))
    return list(session.exec(query.order_by(col(Run.id).desc())).all())


def short_name(path_or_id: str) -> str:
    """A model or dataset as the table shows it: the last part of a path or hub id."""
    return Path(path_or_id.rstrip("/")).name or path_or_id


@dataclass(frozen=True)
class RunRow:
    """One line of the runs table."""

    run: Run
    model: str
    dataset: str
    train: TrainFigures | None
    val: ValFigures | None
    improvement_abs: float | None
    improvement_pct: float | None
    duration_s: float | None

    @property
    def model_name(self) -> str:
        return short_name(self.model)

    @property
    def dataset_name(self) -> str:
        return short_name(self.dataset)

    @property
    def duration(self) -> str:
        return format_duration(self.duration_s)


def run_rows(session: Session, runs: Sequence[Run]) -> list[RunRow]:
    """Table rows with their figures: two grouped queries for all the runs together."""
    ids = [run.id for run in runs if run.id is not None]
    trains, vals = train_figures(session, ids), val_figures(session, ids)
    now = utcnow()
    rows = []
    for run in runs:
        assert run.id is not None
        config = run.config
        val = vals.get(run.id)
        gain = improvement(val.first_loss, val.best_loss) if val else None
        rows.append(RunRow(
            run=run, model=str(config.get("model", "")), dataset=str(config.get("data", "")),
            train=trains.get(run.id), val=val,
            improvement_abs=gain[0] if gain else None,
            improvement_pct=100.0 * gain[1] if gain and gain[1] is not None else None,
            duration_s=wall_seconds(run.started_at, run.finished_at, now),
        ))
    return rows


def clean_name(name: str) -> str:
    """A run name as stored: trimmed, not blank, at most NAME_MAX characters."""
    name = " ".join(name.split())
    if not name:
        raise RunListError("name must not be blank")
    if len(name) > NAME_MAX:
        raise RunListError(f"name is {len(name):,} characters long; at most {NAME_MAX} are allowed")
    problem = text_problem(name, "name")
    if problem is not None:
        raise RunListError(problem)
    return name


def clean_notes(notes: str) -> str:
    notes = notes.strip()
    if len(notes) > NOTES_MAX:
        raise RunListError(f"notes are {len(notes):,} characters long; at most {NOTES_MAX:,} are allowed")
    problem = text_problem(notes, "notes", multiline=True)
    if problem is not None:
        raise RunListError(problem)
    return notes


def update_run_text(session: Session, run: Run, name: str | None, notes: str | None) -> None:
    """Rename a run and/or set its notes: both are checked before either is written."""
    new_name = clean_name(name) if name is not None else run.name
    new_notes = clean_notes(notes) if notes is not None else run.notes
    run.name, run.notes = new_name, new_notes
    session.add(run)
    session.commit()


def continued_by(session: Session, run_id: int) -> list[int]:
    """Runs that continue this one from one of its checkpoints (their config's resume_from)."""
    source = func.json_extract(Run.config_json, "$.resume_from.run_id")
    return list(session.exec(select(Run.id).where(source == run_id).order_by(col(Run.id))).all())


@dataclass(frozen=True)
class DeletedRun:
    run_id: int
    name: str
    checkpoints: int
    reports: int
    continued_by: list[int]
    leftover: Path | None  # a folder that could not be removed (its rows are gone)


def _run_child_tables() -> list[Any]:
    """(table, column) of every table with a foreign key to run.id, the most dependent first."""
    found = []
    for table in reversed(SQLModel.metadata.sorted_tables):
        found.extend((table, fk.parent) for fk in table.foreign_keys if fk.column.table.name == Run.__tablename__)
    return found


def delete_run(session: Session, settings: Settings, run: Run, confirm: str) -> DeletedRun:
    """Delete a run that has ended: its rows (reports, checkpoints, the run) in one transaction, then its folder.

    The folder is first moved aside (one rename), so a failed transaction puts it back and a
    successful one never leaves rows without files or files without rows.
    """
    assert run.id is not None
    if not run.is_terminal:
        raise RunLiveError(f"run {run.id} is {run.status.replace('_', ' ')}: stop it first, then delete it")
    if confirm != "yes":
        raise ConfirmMissingError(f"deleting run {run.id} removes its checkpoints for good; confirm with confirm=yes")
    run_id, name = run.id, run.name
    checkpoints = session.exec(select(func.count()).where(Checkpoint.run_id == run_id)).one()
    reports = session.exec(select(func.count()).where(TrainReport.run_id == run_id)).one()
    reports += session.exec(select(func.count()).where(ValReport.run_id == run_id)).one()
    children = continued_by(session, run_id)
    folder = run_dir(settings, run_id)
    aside: Path | None = folder.with_name(f".deleting-{folder.name}-{uuid.uuid4().hex[:8]}")
    try:
        folder.rename(aside)
    except FileNotFoundError:  # no folder, or another request is deleting the run right now
        aside = None
    try:
        for table, column in _run_child_tables():
            session.exec(delete(table).where(column == run_id))
        result = session.exec(delete(Run).where(col(Run.id) == run_id))  # type: ignore[call-overload]
        if result.rowcount != 1:
            raise RunGoneError(f"there is no run {run_id}: it has just been deleted")
        session.commit()
    except RunGoneError:  # another request deleted the rows first (this one moved the folder aside first)
        session.rollback()
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)  # the rows are gone: their files go too
        raise
    except Exception:
        session.rollback()
        if aside is not None:
            aside.rename(folder)
        raise
    if run in session:
        session.expunge(run)
    leftover = None
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
        leftover = aside if aside.exists() else None
    return DeletedRun(run_id, name, checkpoints, reports, children, leftover)


# ---- comparing runs -------------------------------------------------------------------------

COMPARE_MAX = 8
COMPARE_COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777")
NOT_COMPARED = frozenset({"name"})  # the run's name heads its column already


def parse_ids(values: Sequence[str]) -> list[int]:
    """Run ids from ?ids=1,2,3 (or repeated ?ids=1&ids=2), in order, without repeats."""
    ids: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit():
                raise RunListError(f"ids: {part!r} is not a run id (expected numbers like ids=1,2,3)")
            if int(part) > MAX_RUN_ID:
                raise RunListError(f"ids: {part} is not a run id (run ids are at most {MAX_RUN_ID})")
            if int(part) not in ids:
                ids.append(int(part))
    if not ids:
        raise RunListError("pick at least one run to compare (ids=1,2,3)")
    if len(ids) > COMPARE_MAX:
        raise RunListError(f"ids: {len(ids)} runs given; at most {COMPARE_MAX} can be compared at once")
    return ids


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested keys joined with dots: {"lora_parameters": {"rank": 8}} -> {"lora_parameters.rank": 8}.

    An empty dict stays a value of its own key; lists are values.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = value
    return flat


MISSING = object()


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """The flattened config keys whose values are not all equal, sorted, with each run's value (MISSING if absent).

    A key that is only null or absent, beside the nested keys of another run's value there
    (resume_from: null against resume_from.run_id: 3), is left out: the nested rows say it.
    """
    flats = [flatten_config(config) for config in configs]
    keys = sorted({key for flat in flats for key in flat} - NOT_COMPARED)
    rows = []
    for key in keys:
        values = [flat.get(key, MISSING) for flat in flats]
        encoded = {json.dumps(v, sort_keys=True) if v is not MISSING else "\0missing" for v in values}
        if len(encoded) > 1:
            rows.append((key, values))
    nested_parents = {key.rsplit(".", 1)[0] for key, _ in rows if "." in key}
    return [(key, values) for key, values in rows
            if not (key in nested_parents and all(v is None or v is MISSING for v in values))]


def shown_value(value: Any) -> str:
    """A config value as the compare table prints it."""
    if value is MISSING:
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value)
