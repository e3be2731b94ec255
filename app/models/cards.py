"""The model card (README.md, app/reports/model_card.py) that a fused model folder and a GGUF export carry: written
by the app once the job has completed (each kind's JobView.on_completed), recorded in the job's result as
`model_card` (the file) or `model_card_error` (why not), so it is written once.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from sqlmodel import Session

from app.contract.confinement import PathNotAllowed, read_confined_text
from app.contract.paths import confine, model_roots
from app.contract.settings import Settings
from app.contract.status import RunStatus
from app.reports.facts import gather
from app.reports.model_card import Artefact, gguf_card, model_card
from app.runs.store.checkpoints import find_checkpoint
from app.tables import Job, Run

CARD = "README.md"


def card_pending(job: Job) -> bool:
    """A completed job whose card is neither written nor refused yet (pages keep polling it)."""
    result = job.result if isinstance(job.result, dict) else {}
    return job.status == RunStatus.completed.value and "model_card" not in result and "model_card_error" not in result


def _record(session: Session, job: Job, **outcome: str) -> None:
    result = job.result if isinstance(job.result, dict) else {}
    job.result_json = json.dumps({**result, **outcome})
    session.add(job)
    session.commit()


def _write(folder: Path, text: str) -> None:
    """README.md written whole (a new temporary file, then renamed over the name: a link there is replaced, never
    followed); it replaces the generic card mlx-lm's fuse writes (this one says how the model was trained)."""
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{CARD}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, folder / CARD)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def write_fused_card(session: Session, settings: Settings, job: Job) -> None:
    """A fuse job's folder gets the card of its run's checkpoint (JobView.on_completed of `fuse`)."""
    if not card_pending(job):
        return
    try:
        folder = confine(str((job.result or {}).get("path", "")), [settings.local_models_dir], "fused model folder")
        run = session.get(Run, job.run_id) if job.run_id is not None else None
        ckpt = find_checkpoint(session, job.run_id, job.iteration) if run and job.iteration is not None else None
        if run is None or ckpt is None:
            _record(session, job, model_card_error="its run or checkpoint has been deleted")
            return
        _write(folder, model_card(gather(session, settings, run, ""), Artefact("fused", ckpt)))
    except (OSError, PathNotAllowed) as exc:
        _record(session, job, model_card_error=str(exc))
        return
    _record(session, job, model_card=str(folder / CARD))


def _source_card(path: Path, settings: Settings) -> str | None:
    """The card of the folder an export was made from, read within the model folders (one linking out of them is
    left out: nothing of its target is copied)."""
    try:
        return read_confined_text(path, model_roots(settings), errors="replace")
    except (FileNotFoundError, PathNotAllowed):
        return None


def write_gguf_card(session: Session, settings: Settings, job: Job) -> None:
    """A GGUF export's folder gets its card, with the card of the model folder it was made from (JobView.on_completed
    of `gguf`)."""
    if not card_pending(job):
        return
    params = job.params
    try:
        folder = confine(str(params.get("dest", "")), [settings.local_exports_dir], "export folder")
        source = confine(str(params.get("model", "")), model_roots(settings), "model folder")
        source_card = _source_card(source / CARD, settings)
        _write(folder, gguf_card(source_card, str(source), str(params.get("file", "")), str(params.get("type", ""))))
    except (OSError, PathNotAllowed) as exc:
        _record(session, job, model_card_error=str(exc))
        return
    _record(session, job, model_card=str(folder / CARD))
