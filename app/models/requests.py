"""Asking for a fuse or a quantize job: what the user may ask, what the worker is given, and every check made
before a job row exists (the checkpoint and its file, the name, the source model, bits and group size against the
model's shapes, the disk space the output needs).

Shapes come from config.json and the safetensors headers (app/catalog), never from loading the model.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from app.catalog.files import ModelInfoError
from app.catalog.info import ModelInfo, locate_model, model_info
from app.contract.kinds import FUSE, QUANTIZE, FuseParams, QuantizeParams
from app.contract.paths import (
    MODEL_DIRS_SETTING,
    PathNotAllowed,
    checkpoint_adapter_dir,
    checkpoint_files,
    confine,
    model_roots,
    run_dir,
)
from app.contract.run_config import looks_like_path
from app.contract.settings import Settings
from app.jobs.job_view import JobView
from app.jobs.jobs import JobRefused, create_job
from app.models.cards import card_pending, write_fused_card
from app.models.registry import NAME, NAME_RULE, name_taken, short_model
from app.runs.store.checkpoints import find_checkpoint
from app.tables import Job, Run

FUSE_KIND = FUSE.name
QUANTIZE_KIND = QUANTIZE.name
QUANT_BITS = (2, 3, 4, 5, 6, 8)  # what mlx's affine quantization packs
GROUP_SIZES = (32, 64, 128)
QUANT_OVERHEAD = 1.1  # scales and biases of every group, the files beside the weights
FreeSpace = Callable[[Path], int]


class FuseRequest(BaseModel):
    """The body of POST /api/runs/{id}/checkpoints/{iteration}/fuse."""

    model_config = ConfigDict(extra="forbid")

    dequantize: bool = Field(False, description="Write float16 weights even when the base model is quantized "
                                                "(mlx_lm fuse --dequantize).")
    name: str | None = Field(None, description="Folder name under the models folder "
                                               "(default run-<id>-iter-<iteration>-fused).")


class QuantizeRequest(BaseModel):
    """The body of POST /api/models/quantize."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="Model folder, a folder name under the models folder, or a Hugging Face "
                                        "id in the local cache.")
    bits: Literal[2, 3, 4, 5, 6, 8] = Field(4, description="Bits per weight (mlx_lm convert --q-bits).")
    group_size: Literal[32, 64, 128] = Field(64, description="Weights sharing one scale (--q-group-size); every "
                                                             "quantized layer's input width must be a multiple.")
    name: str | None = Field(None, description="Folder name under the models folder (default <source>-<bits>bit).")


class ModelJobRefused(JobRefused):
    """A fuse or quantize request that cannot start; `loc` names a field of the request body."""

    def __init__(self, status: int, loc: tuple[str, ...], message: str) -> None:
        super().__init__(status, ("body", *loc), message)


def disk_free(folder: Path) -> int:
    """Free bytes on the disk holding `folder` (its nearest existing parent)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_name(session: Session, settings: Settings, name: str) -> str:
    if not NAME.match(name):
        raise ModelJobRefused(422, ("name",), f"name {name!r} is not valid: use {NAME_RULE}")
    taken = name_taken(session, settings, name)
    if taken is not None:
        raise ModelJobRefused(409, ("name",), taken)
    return name


def check_disk(settings: Settings, needed: int, what: str, free: FreeSpace = disk_free) -> None:
    """Refuse when the models folder's disk has less free space than the output is estimated to take."""
    available = free(settings.local_models_dir)
    if available < needed:
        raise ModelJobRefused(422, ("name",), f"not enough disk space for {what}: about {needed / 1e9:,.2f} GB "
                                              f"needed, {available / 1e9:,.2f} GB free in "
                                              f"{settings.local_models_dir}")


def fuse_estimate(info: ModelInfo, dequantize: bool) -> int:
    """Bytes a fused model takes: the base's size; dequantized, its quantized layers at float16."""
    if dequantize and info.quantization is not None:
        return info.total_params * 2
    return info.size_bytes


def quantize_estimate(info: ModelInfo, bits: int) -> int:
    """Bytes a quantized copy takes: every parameter at bits/8 bytes, plus scales and the other files."""
    return int(info.total_params * bits / 8 * QUANT_OVERHEAD)


def group_size_problem(info: ModelInfo, group_size: int) -> str | None:
    """Why this group size cannot quantize every layer (mlx_lm would silently leave such layers unquantized)."""
    widths = {m.name: m.weight.shape[-1] for m in info.modules if m.adaptable and m.weight is not None}
    bad = sorted({width for width in widths.values() if width % group_size})
    if not bad:
        return None
    width = bad[0]
    names = [key for key, value in info.config.items() if value == width and not isinstance(value, bool)]
    what = f"{names[0]} {width}" if names else \
        f"the input width {width} of {next(n for n, w in widths.items() if w == width)}"
    working = [size for size in GROUP_SIZES if all(w % size == 0 for w in widths.values())]
    hint = f"; {', '.join(str(s) for s in working)} work{'s' if len(working) == 1 else ''}" if working else \
        "; no group size quantizes every layer of this model"
    return f"{what} is not a multiple of group_size {group_size}{hint}"


def prepare_fuse(session: Session, settings: Settings, run: Run, iteration: int, request: FuseRequest,
                 free: FreeSpace = disk_free) -> FuseParams:
    """The fuse job's parameters, or ModelJobRefused (404 checkpoint, 410 its file, 409 name, 422 the rest)."""
    assert run.id is not None
    ckpt = find_checkpoint(session, run.id, iteration)
    if ckpt is None:
        raise ModelJobRefused(404, ("iteration",), f"run {run.id} has no checkpoint at iteration {iteration:,} "
                                                   "(it was deleted, or never saved)")
    weights, _ = checkpoint_files(settings, run.id, iteration)
    ready = (checkpoint_adapter_dir(settings, run.id, iteration) / "adapters.safetensors").is_file()
    if not ready and not weights.is_file():
        raise ModelJobRefused(410, ("iteration",), f"the file of checkpoint {iteration:,} ({weights.name}) was "
                                                   f"deleted from {run_dir(settings, run.id)}")
    if not ready and not (run_dir(settings, run.id) / "adapter_config.json").is_file():
        raise ModelJobRefused(410, ("iteration",), f"{run_dir(settings, run.id)} has no adapter_config.json: the "
                                                   "adapters cannot be rebuilt")
    name = check_name(session, settings, request.name or f"run-{run.id}-iter-{iteration}-fused")
    base = str(run.config.get("model", ""))
    try:
        info = model_info(base, settings)
    except ModelInfoError as exc:
        raise ModelJobRefused(422, ("model",), f"the run's base model cannot be read: {exc}") from None
    check_disk(settings, fuse_estimate(info, request.dequantize), f"the fused model {name}", free)
    return FuseParams(run_id=run.id, iteration=iteration, model=base, name=name,
                      dest=str(settings.local_models_dir / name), dequantize=request.dequantize,
                      fine_tune_type=str(run.config.get("fine_tune_type", "lora")))


def source_folder(settings: Settings, model: str) -> Path:
    """The quantize source: a folder inside the model folders, a folder name under the models folder, or a hub id
    in the local cache."""
    text = model.strip()
    if not text:
        raise ModelJobRefused(422, ("model",), "model is empty: give a model folder or a Hugging Face id")
    named = settings.local_models_dir / text
    if not looks_like_path(text) and NAME.match(text) and (named / "config.json").is_file():
        return named.resolve()
    if looks_like_path(text):
        try:
            folder = confine(text, model_roots(settings), "model folder", MODEL_DIRS_SETTING)
        except PathNotAllowed as exc:
            raise ModelJobRefused(422, ("model",), str(exc)) from None
        if not folder.is_dir():
            raise ModelJobRefused(422, ("model",), f"model folder {folder} does not exist")
        return folder
    try:
        return locate_model(text, settings)[0]
    except ModelInfoError as exc:
        raise ModelJobRefused(422, ("model",), str(exc)) from None


def prepare_quantize(session: Session, settings: Settings, request: QuantizeRequest,
                     free: FreeSpace = disk_free) -> QuantizeParams:
    """The quantize job's parameters, or ModelJobRefused (409 name, 422 the rest)."""
    folder = source_folder(settings, request.model)
    try:
        info = model_info(str(folder), settings)
    except ModelInfoError as exc:
        raise ModelJobRefused(422, ("model",), str(exc)) from None
    quant = info.quantization
    if quant is not None:
        raise ModelJobRefused(422, ("model",), f"{folder} is already quantized ({quant.get('bits')}-bit); quantize "
                                               "its unquantized source, or fuse with dequantize first")
    problem = group_size_problem(info, request.group_size)
    if problem is not None:
        raise ModelJobRefused(422, ("group_size",), problem)
    name = check_name(session, settings, request.name or f"{short_model(str(folder))}-{request.bits}bit")
    check_disk(settings, quantize_estimate(info, request.bits), f"the {request.bits}-bit copy {name}", free)
    return QuantizeParams(model=str(folder), source=request.model.strip(), name=name,
                          dest=str(settings.local_models_dir / name), bits=request.bits,
                          group_size=request.group_size)


def start_fuse(session: Session, settings: Settings, run: Run, iteration: int, request: FuseRequest) -> Job:
    params = prepare_fuse(session, settings, run, iteration, request)
    return create_job(session, FUSE_KIND, params, key=params.name, unit="steps", run_id=run.id, iteration=iteration)


def start_quantize(session: Session, settings: Settings, request: QuantizeRequest) -> Job:
    params = prepare_quantize(session, settings, request)
    return create_job(session, QUANTIZE_KIND, params, key=params.name, unit="steps")


# The job kinds' views (app/jobs/views.py lists them) ---------------------------------------------------

def result_summary(job: Job) -> str:
    from app.templating import human_bytes

    result = job.result if isinstance(job.result, dict) else {}
    if not result.get("name"):
        return ""
    verb = "fused into" if job.kind == FUSE_KIND else "quantized into"
    return f"{verb} {result['name']} ({human_bytes(int(result.get('size_bytes') or 0))})"


def subject(_session: Session, job: Job) -> tuple[str, str | None]:
    """A fuse job concerns its checkpoint (its page); a quantize job the models page."""
    params = job.params
    if job.kind == FUSE_KIND and job.run_id is not None and job.iteration is not None:
        return f"run {job.run_id}, checkpoint {job.iteration:,}", f"/runs/{job.run_id}/checkpoints/{job.iteration}"
    return f"model {params.get('name', '')}", "/models"


FUSE_VIEW = JobView(FUSE, summary=result_summary, subject=subject, on_completed=write_fused_card,
                    finishing=card_pending)
QUANTIZE_VIEW = JobView(QUANTIZE, summary=result_summary, subject=subject)
