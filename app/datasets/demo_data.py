"""Seed-shaped demo datasets: the `demo_data` job kind's request check, its jobs, their registration, its view.

The worker (worker/demo_data.py) writes the new folder under the datasets folder; the app checks the request first
(a free, valid name, a resolvable model, a scale in (0, 1]) and registers the folder as a dataset once the job has
completed: the supervisor calls `register_completed` (this kind's JobView.on_completed) when the job ends, and at
start-up for jobs that completed while no app was watching.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlmodel import Session, select

from app.contract.kinds import DEMO_DATA, DEMO_SIZES, DemoDataParams
from app.contract.paths import MODEL_DIRS_SETTING, PathNotAllowed, confine, model_roots
from app.contract.run_config import looks_like_path
from app.contract.settings import Settings
from app.contract.status import RunStatus
from app.datasets.registry import DatasetError, register_dataset, registry_problem
from app.jobs.job_view import JobView
from app.jobs.jobs import LIVE, create_job, lookup_key
from app.tables import Dataset, Job

if TYPE_CHECKING:
    from app.jobs.supervisor import Supervisor

KIND = DEMO_DATA.name
UNIT = "examples"
SOURCE = "seed-shaped demo"


class DemoDataRequest(BaseModel):
    """What `POST /api/datasets/demo` and the Datasets page's card ask for."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="The new dataset's name: its folder under the datasets folder.")
    model: str = Field("", description="Model folder or hub id whose tokenizer counts (default: the embedded one).")
    scale: float = Field(1.0, gt=0, le=1, description="Token lengths scaled for a small model's max_seq_length.")
    seed: int = Field(0, ge=0, description="The same seed writes the same dataset.")
    sizes: dict[str, int] = Field(default_factory=lambda: dict(DEMO_SIZES),
                                  description="Examples per split: train and valid required, test optional.")


class DemoDataError(ValueError):
    """A demo dataset that cannot be made; field names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def resolve_model(settings: Settings, model: str) -> str:
    """The model whose tokenizer counts: a folder inside the model folders (with its config.json) or a hub id."""
    model = model.strip() or str(settings.default_model_dir)
    if not looks_like_path(model):
        return model
    try:
        folder = confine(model, model_roots(settings), "model folder", MODEL_DIRS_SETTING)
    except PathNotAllowed as exc:
        raise DemoDataError("model", str(exc)) from None
    if not folder.is_dir():
        raise DemoDataError("model", f"model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise DemoDataError("model", f"{folder} is not a model folder: it has no config.json")
    return str(folder)


def live_job_for(session: Session, name: str) -> Job | None:
    """A queued or working demo job that will write this name's folder."""
    jobs = session.exec(select(Job).where(Job.kind == KIND, Job.key == lookup_key(name))).all()
    return next((job for job in jobs if job.status in LIVE), None)


def check_request(session: Session, settings: Settings, request: DemoDataRequest) -> DemoDataParams:
    """The job's params for a request, or DemoDataError naming the field at fault."""
    name = request.name.strip()
    problem = registry_problem(session, name)
    if problem:
        raise DemoDataError("name", problem)
    root = settings.local_datasets_dir
    if (root / name).exists():
        raise DemoDataError("name", f"a folder named {name!r} already exists in {root}")
    busy = live_job_for(session, name)
    if busy is not None:
        raise DemoDataError("name", f"job {busy.id} is already writing a dataset named {name!r}")
    model = resolve_model(settings, request.model)
    try:
        return DemoDataParams(name=name, model=model, scale=request.scale, seed=request.seed, sizes=request.sizes)
    except ValidationError as exc:  # the request's own fields are checked already: sizes out of range
        first = exc.errors(include_url=False)[0]
        raise DemoDataError(str(first["loc"][0]) if first["loc"] else "sizes",
                            first["msg"].removeprefix("Value error, ")) from None


def start_job(session: Session, supervisor: Supervisor, params: DemoDataParams) -> Job:
    """A new demo job, started at once (it needs no model memory)."""
    job = create_job(session, KIND, params, key=lookup_key(params.name), unit=UNIT)
    supervisor.start_queued_now(session)
    session.refresh(job)
    return job


def register_completed(session: Session, settings: Settings, job: Job) -> None:
    """Register a completed demo job's folder as a dataset and record the outcome in the job's result (`dataset_id`,
    or `registration_error`: the folder was removed, or its name was taken meanwhile). The supervisor calls this when
    the job ends, and at start-up for jobs that completed while no app was watching; it runs once per job."""
    result = dict(job.result or {})
    if not registering(job):
        return
    folder, name = result.get("folder"), result.get("name")
    if not isinstance(folder, str) or not isinstance(name, str) or not Path(folder).is_dir():
        result["registration_error"] = f"the folder {folder} the job wrote is no longer there"
    else:
        path = str(Path(folder).resolve())
        dataset = session.exec(select(Dataset).where(Dataset.path == path)).first()
        try:
            dataset = dataset or register_dataset(session, settings, Path(folder), name, source=SOURCE)
            result["dataset_id"] = dataset.id
        except DatasetError as exc:
            result["registration_error"] = str(exc)
    job.result_json = json.dumps(result)
    session.add(job)
    session.commit()


def registering(job: Job) -> bool:
    """A completed demo job not yet registered (nor refused): its card waits for the dataset to be listed."""
    result = job.result or {}
    return job.status == RunStatus.completed.value and "dataset_id" not in result \
        and "registration_error" not in result


def result_summary(job: Job) -> str:
    """'train 1,500 · valid 188 · test 2,579 examples, mean 1,159 tokens, longest 26,749' for the jobs list, and why
    the folder was not listed if it was not."""
    result = job.result or {}
    splits: dict[str, Any] = result.get("splits", {})
    refused = result.get("registration_error")
    parts = [f"not listed: {refused}"] if refused else []
    if splits:
        counts = " · ".join(f"{split} {summary['examples']:,}" for split, summary in splits.items())
        examples = sum(summary["examples"] for summary in splits.values())
        total = sum((summary["mean"] or 0) * summary["examples"] for summary in splits.values())
        longest = max((summary["longest"] or 0) for summary in splits.values())
        parts.insert(0, f"{counts} examples, mean {total / max(1, examples):,.0f} tokens, longest {longest:,}")
    return "; ".join(parts)


def subject(session: Session, job: Job) -> tuple[str, str | None]:
    """(words, link): the registered dataset's page, else the folder the job writes."""
    params = job.params
    folder = (job.result or {}).get("folder")
    if isinstance(folder, str):
        dataset = session.exec(select(Dataset).where(Dataset.path == str(Path(folder).resolve()))).first()
        if dataset is not None:
            return f"dataset {dataset.name}", f"/datasets/{dataset.id}"
        return folder, None
    return f"dataset {params.get('name', '')}", None


JOB_VIEW = JobView(DEMO_DATA, summary=result_summary, subject=subject, on_completed=register_completed,
                   finishing=registering)
