"""GGUF export of a model folder (JSON, under /api; a job of kind "gguf", see app/models/gguf.py and
worker/gguf_export.py).

`POST /api/models/{name}/gguf` (201 {"job_id", "export"}), `GET /api/models/{name}/gguf` (the model's
finished exports), `GET /api/exports/{export}/gguf` (the file, streamed), `GET /api/exports/{export}/Modelfile`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, status
from fastapi.responses import FileResponse

from app.deps import SessionDep, SettingsDep, SupervisorDep
from app.models.gguf import GgufRefused, GgufRequest, export_folder, model_folder, panel, start
from app.routes.params import ModelName, content, problems

router = APIRouter(prefix="/api")
ExportName = Annotated[str, Path(max_length=100, description="the export's folder name under the exports folder")]


def _refused(exc: GgufRefused) -> HTTPException:
    return HTTPException(exc.status, detail=exc.detail())


def _export_or_404(settings: SettingsDep, export: str) -> Any:
    folder = export_folder(settings, export)
    if folder is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no GGUF export named {export!r} under "
                                                              f"{settings.local_exports_dir}")
    return folder


@router.post("/models/{name}/gguf", status_code=201, tags=["models"],
             responses=problems(400, 404, 409, 422))
def post_gguf(name: ModelName, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
              body: GgufRequest | None = None) -> dict[str, Any]:
    """Queue a GGUF export (f16, q8_0 or q4_k_m) of a model folder, with an Ollama Modelfile beside the file.
    Refused before any job exists: no such model (404), the output taken (409), an architecture other than
    Llama/Mistral/Mixtral, a quantized model, q4_k_m without llama-cpp-python, too little disk space (422)."""
    try:
        job = start(session, settings, name, body or GgufRequest())
    except GgufRefused as exc:
        raise _refused(exc) from None
    supervisor.start_queued_now(session)
    return {"job_id": job.id, "export": job.params["export"]}


@router.get("/models/{name}/gguf", tags=["models"], responses=problems(404))
def get_gguf_exports(name: ModelName, session: SessionDep, settings: SettingsDep) -> list[dict[str, Any]]:
    """The model's finished exports still on disk: file, size, download links, Modelfile, commands."""
    try:
        model_folder(settings, name)
    except GgufRefused as exc:
        raise _refused(exc) from None
    return list(panel(session, settings, name)["exports"])


@router.get("/exports/{export}/gguf", tags=["models"],
            responses={**content("application/octet-stream", "the .gguf file"), **problems(404)})
def download_gguf(export: ExportName, settings: SettingsDep) -> FileResponse:
    """The export's .gguf file (streamed from disk)."""
    folder = _export_or_404(settings, export)
    return FileResponse(folder / f"{export}.gguf", media_type="application/octet-stream",
                        filename=f"{export}.gguf")


@router.get("/exports/{export}/Modelfile", tags=["models"],
            responses={**content("text/plain", "the Ollama Modelfile"), **problems(404)})
def download_modelfile(export: ExportName, settings: SettingsDep) -> FileResponse:
    """The export's Ollama Modelfile (FROM ./<export>.gguf, TEMPLATE, PARAMETERs)."""
    folder = _export_or_404(settings, export)
    return FileResponse(folder / "Modelfile", media_type="text/plain; charset=utf-8", filename="Modelfile")
