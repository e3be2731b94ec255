"""What the models page and the "use this checkpoint" page show (contexts built from rows and folders)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from app.catalog.files import ModelInfoError
from app.catalog.info import model_info
from app.contract.paths import checkpoint_adapter_dir, ensure_checkpoint_adapter_dir
from app.contract.settings import Settings
from app.jobs.jobs import LIVE, check_job, progress_view
from app.jobs.views import describe
from app.models.registry import model_folders, origin_text
from app.models.requests import FUSE_KIND, GROUP_SIZES, QUANT_BITS, QUANTIZE_KIND, group_size_problem
from app.runs.store.checkpoints import download_commands, usage_commands
from app.tables import Checkpoint, Job, RegisteredModel, Run


def job_item(session: Session, settings: Settings, job: Job | None) -> dict[str, Any] | None:
    """The progress partial's item for a job (templates/_job_progress.html), or None."""
    if job is None:
        return None
    job = check_job(session, settings, job)
    return {"job": job, "progress": progress_view(job), "info": describe(session, job), "live": job.status in LIVE}


def latest_fuse_job(session: Session, run_id: int, iteration: int) -> Job | None:
    query = select(Job).where(Job.kind == FUSE_KIND, Job.run_id == run_id, Job.iteration == iteration)
    return session.exec(query.order_by(col(Job.id).desc()).limit(1)).first()


def working_group_sizes(model: str, settings: Settings) -> tuple[list[int], str | None]:
    """Group sizes that quantize every layer of the model, and why it cannot be quantized (None: it can)."""
    try:
        info = model_info(model, settings)
    except ModelInfoError as exc:
        return [], str(exc)
    if info.quantization is not None:
        bits = info.quantization.get("bits")  # a list where layers differ (a 4-bit model with an 8-bit embedding)
        return [], f"already {'/'.join(map(str, bits)) if isinstance(bits, list) else bits}-bit"
    return [size for size in GROUP_SIZES if group_size_problem(info, size) is None], None


def fuse_context(session: Session, settings: Settings, run: Run, ckpt: Checkpoint,
                 error: str | None = None) -> dict[str, Any]:
    """templates/_use_fuse.html: the form, the newest fuse job's progress, the models fused from this checkpoint."""
    assert run.id is not None
    fused = session.exec(select(RegisteredModel).where(RegisteredModel.run_id == run.id,
                                                       RegisteredModel.iteration == ckpt.iteration)).all()
    return {"run": run, "ckpt": ckpt, "fuse_error": error,
            "fuse_item": job_item(session, settings, latest_fuse_job(session, run.id, ckpt.iteration)),
            "fused_models": [{"row": row, "origin": origin_text(row)} for row in fused],
            "default_name": f"run-{run.id}-iter-{ckpt.iteration}-fused"}


def checkpoint_context(session: Session, settings: Settings, run: Run, ckpt: Checkpoint,
                       base_url: str) -> dict[str, Any]:
    """The "use this checkpoint" page."""
    assert run.id is not None
    base = str(run.config.get("model", ""))
    try:
        adapter_dir, adapter_error = ensure_checkpoint_adapter_dir(settings, run.id, ckpt.iteration), None
    except FileNotFoundError as exc:
        adapter_dir, adapter_error = checkpoint_adapter_dir(settings, run.id, ckpt.iteration), \
            f"{exc.filename} is missing: this checkpoint cannot be used"
    sizes, _ = working_group_sizes(base, settings)
    context = {
        "run": run, "ckpt": ckpt, "base_model": base, "adapter_dir": adapter_dir, "adapter_error": adapter_error,
        "commands": usage_commands(base_url, run, ckpt, settings, group_size=(sizes or [64])[-1]),
        "download_commands": download_commands(base_url, run, ckpt),
        **fuse_context(session, settings, run, ckpt),
    }
    try:
        from app.serving.view import serve_context
    except ImportError:
        return context
    context.update(serve_context(session, settings, run.id, ckpt.iteration))
    return context


def models_context(session: Session, settings: Settings, error: str | None = None,
                   values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The models page: every model folder with its origin, size, the command that made it and a quantize form."""
    folders = model_folders(session, settings)
    for entry in folders:
        sizes, why_not = working_group_sizes(entry["path"], settings)
        entry["group_sizes"], entry["quantize_blocked"] = sizes, why_not
        entry["default_quantized_name"] = f"{entry['name'].replace('/', '-')}-4bit"
    quantize_job = session.exec(select(Job).where(Job.kind == QUANTIZE_KIND)
                                .order_by(col(Job.id).desc()).limit(1)).first()
    return {"models": folders, "bits_choices": QUANT_BITS, "group_choices": GROUP_SIZES,
            "quantize_item": job_item(session, settings, quantize_job), "quantize_error": error,
            "quantize_values": values or {}, "models_dir": settings.local_models_dir}
