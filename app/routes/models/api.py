"""Models (JSON, under /api): the model picker's list and a model's information, fuse and quantize jobs
(201 {"job_id", "name"}), the models loraboard wrote, a model folder's streamed .tar."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import StreamingResponse

from app.catalog.info import ModelInfoError, model_choices, model_info, trainable_params
from app.catalog.requests import DEFAULT_NUM_LAYERS, DEFAULT_RANK, confined_model, split_keys
from app.contract.confinement import PathNotAllowed, confine_tree
from app.contract.paths import model_roots
from app.deps import SessionDep, SettingsDep, SupervisorDep
from app.models.archive import stream_tar
from app.models.registry import NAME, origins, registered, row_json
from app.models.requests import FuseRequest, ModelJobRefused, QuantizeRequest, start_fuse, start_quantize
from app.routes.params import Iteration, ModelName, RunId, content, problems, run_or_404

router = APIRouter(prefix="/api")


@router.get("/models", tags=["models"])
def get_models(settings: SettingsDep, session: SessionDep) -> list[dict[str, Any]]:
    """Local model folders and Hugging Face cache entries: name, model (path or hub id), source, size, and for a
    model loraboard wrote its origin ("fused from run 3 @ 40", "4-bit of tiny-mistral (group 32)")."""
    return model_choices(settings, origins=origins(session))


@router.get("/models/info", tags=["models"], responses=problems(422))
def get_model_info(
    settings: SettingsDep,
    model: str = Query("", description="Local model folder or Hugging Face id (empty: the embedded model)."),
    fine_tune_type: Literal["lora", "dora", "full"] = Query("lora"),
    num_layers: int = Query(DEFAULT_NUM_LAYERS, ge=-1, description="Layers trained, from the top; -1 all."),
    rank: int = Query(DEFAULT_RANK, ge=1, le=1024, description="LoRA rank."),
    keys: str = Query("", description="Comma-separated LoRA keys (empty: mlx-lm's default)."),
) -> dict[str, Any]:
    """What a model is (from config.json and safetensors headers) and what these settings would train."""
    try:
        info = model_info(confined_model(model, settings), settings)
        trainable = trainable_params(info, fine_tune_type, num_layers, rank, split_keys(keys))
    except ModelInfoError as exc:
        raise HTTPException(422, detail=[{"loc": ["query", exc.field], "msg": str(exc), "type": "value_error"}]
                            ) from None
    return {**info.to_json(), "trainable": trainable.to_json()}


def _refused(exc: ModelJobRefused) -> HTTPException:
    return HTTPException(exc.status, detail=exc.detail())


@router.post("/runs/{run_id}/checkpoints/{iteration}/fuse", status_code=201, tags=["models"],
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


@router.post("/models/quantize", status_code=201, tags=["models"], responses=problems(400, 409, 422))
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


@router.get("/models/registered", tags=["models"])
def get_registered(session: SessionDep) -> list[dict[str, Any]]:
    """The models loraboard wrote (fused, quantized): folder, origin, source, run and iteration, bits, size."""
    return [row_json(row) for row in registered(session)]


@router.get("/models/{name}/archive", tags=["models"], responses={**content("application/x-tar", "the model "
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
