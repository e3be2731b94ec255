"""Fuse and quantize jobs and the models page.

JSON: `POST /api/runs/{id}/checkpoints/{iteration}/fuse`, `POST /api/models/quantize` (201 {"job_id", "name"}),
`GET /api/models/registered`, `GET /api/models/{name}/archive` (the folder as a streamed .tar).
Pages: `/models` (with its table and quantize partials), the fuse partial of `/runs/{id}/checkpoints/{iteration}`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Path, Query, Request, status
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import ValidationError
from sqlmodel import Session

from app.confinement import PathNotAllowed, confine_tree
from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.models.archive import stream_tar
from app.models.registry import NAME, registered, row_json
from app.models.requests import (
    FuseRequest,
    ModelJobRefused,
    QuantizeRequest,
    start_fuse,
    start_quantize,
)
from app.models.view import fuse_context, models_context
from app.paths import model_roots
from app.routes.params import Iteration, RunId, content, problems, run_or_404
from app.runs.store.checkpoints import find_checkpoint
from app.tables import Checkpoint, Run

router = APIRouter()
ModelName = Annotated[str, Path(max_length=100, description="the model's folder name under the models folder")]


def _checkpoint_or_404(session: Session, run_id: int, iteration: int) -> tuple[Run, Checkpoint]:
    run = run_or_404(session, run_id)
    ckpt = find_checkpoint(session, run_id, iteration)
    if ckpt is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"run {run_id} has no checkpoint at iteration "
                                                              f"{iteration:,}")
    return run, ckpt


def _refused(exc: ModelJobRefused) -> HTTPException:
    return HTTPException(exc.status, detail=exc.detail())


def _form_errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))


def _whole(text: str) -> int | str:
    """A form's number as an int (the request model then names what is allowed), else the text as typed."""
    return int(text.strip()) if text.strip().isdigit() else text


# JSON API ------------------------------------------------------------------------------------------------


@router.post("/api/runs/{run_id}/checkpoints/{iteration}/fuse", status_code=201, tags=["models"],
             responses=problems(400, 404, 409, 410, 422))
def post_fuse(run_id: RunId, iteration: Iteration, session: SessionDep, settings: SettingsDep,
              supervisor: SupervisorDep, body: FuseRequest | None = None) -> dict[str, Any]:
    """Queue a fuse job: the checkpoint merged into a model folder under the models folder, registered with its
    origin. Refused before any job exists: no checkpoint (404), its file gone (410), the name taken (409), a bad
    name, an unreadable base model or too little disk space (422)."""
    run = run_or_404(session, run_id)
    try:
        job = start_fuse(session, settings, run, iteration, body or FuseRequest())
    except ModelJobRefused as exc:
        raise _refused(exc) from None
    supervisor.start_queued_now(session)
    return {"job_id": job.id, "name": job.params["name"]}


@router.post("/api/models/quantize", status_code=201, tags=["models"], responses=problems(400, 409, 422))
def post_quantize(body: QuantizeRequest, session: SessionDep, settings: SettingsDep,
                  supervisor: SupervisorDep) -> dict[str, Any]:
    """Queue a quantize job (mlx_lm convert -q). Refused before any job exists: a source that is missing, outside
    the model folders or already quantized, a group size some layer's input width is not a multiple of, a bad or
    taken name, too little disk space."""
    try:
        job = start_quantize(session, settings, body)
    except ModelJobRefused as exc:
        raise _refused(exc) from None
    supervisor.start_queued_now(session)
    return {"job_id": job.id, "name": job.params["name"]}


@router.get("/api/models/registered", tags=["models"])
def get_registered(session: SessionDep) -> list[dict[str, Any]]:
    """The models loraboard wrote (fused, quantized): folder, origin, source, run and iteration, bits, size."""
    return [row_json(row) for row in registered(session)]


@router.get("/api/models/{name}/archive", tags=["models"], responses={**content("application/x-tar", "the model "
            "folder as an uncompressed tar, streamed"), **problems(404, 422)})
def get_archive(name: ModelName, settings: SettingsDep) -> StreamingResponse:
    """A model folder under the models folder as a .tar, streamed file by file (never built in memory)."""
    if not NAME.match(name):
        raise HTTPException(422, detail=[{"loc": ["path", "name"], "type": "value_error",
                                          "msg": f"{name!r} is not a model folder name"}])
    folder = settings.local_models_dir / name
    if not (folder / "config.json").is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no model folder {name} under "
                                                              f"{settings.local_models_dir}")
    try:  # a file linking out is refused before the stream starts (open_confined judges each file again)
        confine_tree(folder, model_roots(settings))
    except PathNotAllowed as exc:
        raise HTTPException(422, detail=str(exc)) from None
    return StreamingResponse(stream_tar(folder, name, model_roots(settings)), media_type="application/x-tar",
                             headers={"Content-Disposition": f'attachment; filename="{name}.tar"'})


# Pages ---------------------------------------------------------------------------------------------------


@router.get("/models", response_class=HTMLResponse, include_in_schema=False)
def models_page(request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep,
                model: Annotated[str, Query(max_length=4096)] = "",
                group_size: Annotated[str, Query(max_length=8)] = "") -> HTMLResponse:
    """Every model folder with its origin, size, archive download, quantize form and the command that made it;
    `model` (and `group_size`) prefill the quantize form (the model panel's QLoRA link)."""
    values = {"model": model, "group_size": group_size}
    return templates.TemplateResponse(request, "models.html", models_context(session, settings, values=values))


@router.get("/models/table", response_class=HTMLResponse, include_in_schema=False)
def models_table(request: Request, session: SessionDep, settings: SettingsDep,
                 templates: TemplatesDep) -> HTMLResponse:
    return templates.TemplateResponse(request, "_use_models_table.html", models_context(session, settings))


@router.post("/models/quantize", response_class=HTMLResponse, include_in_schema=False)
def quantize_from_page(
    request: Request, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
    templates: TemplatesDep, model: Annotated[str, Form()] = "", bits: Annotated[str, Form()] = "4",
    group_size: Annotated[str, Form()] = "64", name: Annotated[str, Form()] = "",
) -> HTMLResponse:
    """The models page's quantize form: the job's progress, or what is wrong with the request."""
    values = {"model": model, "bits": bits, "group_size": group_size, "name": name}
    error = None
    try:
        request_body = QuantizeRequest.model_validate(
            {"model": model, "bits": _whole(bits), "group_size": _whole(group_size), "name": name.strip() or None})
        start_quantize(session, settings, request_body)
        supervisor.start_queued_now(session)
    except ValidationError as exc:
        error = _form_errors(exc)
    except ModelJobRefused as exc:
        error = str(exc)
    return templates.TemplateResponse(request, "_use_quantize.html", models_context(session, settings, error, values))


@router.get("/runs/{run_id}/checkpoints/{iteration}/fuse", response_class=HTMLResponse, include_in_schema=False)
def fuse_partial(request: Request, run_id: RunId, iteration: Iteration, session: SessionDep,
                 settings: SettingsDep, templates: TemplatesDep) -> HTMLResponse:
    run, ckpt = _checkpoint_or_404(session, run_id, iteration)
    return templates.TemplateResponse(request, "_use_fuse.html", fuse_context(session, settings, run, ckpt))


@router.post("/runs/{run_id}/checkpoints/{iteration}/fuse", response_class=HTMLResponse, include_in_schema=False)
def fuse_from_page(
    request: Request, run_id: RunId, iteration: Iteration, session: SessionDep, settings: SettingsDep,
    supervisor: SupervisorDep, templates: TemplatesDep, name: Annotated[str, Form()] = "",
    dequantize: Annotated[str, Form()] = "",
) -> HTMLResponse:
    """The checkpoint page's fuse form: the job's progress, or what is wrong with the request."""
    run, ckpt = _checkpoint_or_404(session, run_id, iteration)
    error = None
    try:
        start_fuse(session, settings, run, iteration,
                   FuseRequest(name=name.strip() or None, dequantize=dequantize not in ("", "off", "false")))
        supervisor.start_queued_now(session)
    except ModelJobRefused as exc:
        error = str(exc)
    return templates.TemplateResponse(request, "_use_fuse.html", fuse_context(session, settings, run, ckpt, error))
