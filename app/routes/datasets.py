"""Dataset pages and API: list, register a folder, upload, validate, preview with a chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Form, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlmodel import Session

from app.catalog.info import model_choices
from app.contract.paths import DATA_DIRS_SETTING, MODEL_DIRS_SETTING, PathNotAllowed, confine, data_roots, model_roots
from app.contract.run_config import looks_like_path
from app.contract.settings import Settings
from app.datasets.preview import Preview, build_preview, model_options
from app.datasets.registry import DatasetError, dataset_json, list_datasets, refresh_dataset, register_dataset
from app.datasets.upload import UploadError, receive_dataset_upload
from app.datasets.validation import validate_dataset
from app.deps import SessionDep, SettingsDep, TemplatesDep
from app.routes.params import DatasetId, problems
from app.tables import Dataset

router = APIRouter()
_JSONL = {"type": "string", "format": "binary"}
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["train", "valid"],
    "properties": {"name": {"type": "string"}, "train": _JSONL, "valid": _JSONL, "test": _JSONL}}}}}}


def get_dataset_or_404(session: Session, dataset_id: int) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no dataset with id {dataset_id}")
    return dataset


def preview_model(model: str, settings: Settings) -> str:
    """The preview's model (default: the embedded one); a folder outside the model folders is a 422."""
    model = model.strip() or str(settings.default_model_dir)
    if not looks_like_path(model):
        return model
    try:
        return str(confine(model, model_roots(settings), "model folder", MODEL_DIRS_SETTING))
    except PathNotAllowed as exc:
        raise HTTPException(422, detail=str(exc)) from None


def preview_of(folder: Path, fmt: str | None, model: str, mask_prompt: bool, settings: Settings) -> Preview:
    """The preview, its files confined to the data folders and the model folders."""
    return build_preview(folder, fmt, model, mask_prompt, data_roots=data_roots(settings),
                         model_roots=model_roots(settings))


# ---------- pages ----------

def _list_page(
    request: Request, session: Session, settings: Settings, templates: TemplatesDep, code: int = 200,
    **context: Any,
) -> Response:
    context = {"datasets": [dataset_json(d) for d in list_datasets(session, settings)], "error": None,
               "error_form": None, "issues": [], "error_count": 0, "values": {}, "added": None,
               "max_upload_mb": settings.max_upload_mb, "datasets_dir": settings.local_datasets_dir, **context}
    name = "_dataset_table.html" if request.headers.get("HX-Request") else "datasets.html"
    return templates.TemplateResponse(request, name, context, status_code=code)


@router.get("/datasets", response_class=HTMLResponse, include_in_schema=False)
def datasets_page(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep, added: int | None = None,
) -> Response:
    return _list_page(request, session, settings, templates, added=added)


@router.post("/datasets/register", include_in_schema=False)
def register_from_form(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep,
    name: str = Form(""), path: str = Form(""),
) -> Response:
    try:
        dataset = register_dataset(session, settings, Path(path.strip()), name)
    except DatasetError as exc:
        report = exc.report
        return _list_page(request, session, settings, templates, 422, error=str(exc).split("\n")[0],
                          error_form="register", values={"name": name, "path": path},
                          issues=report.errors.issues if report else [],
                          error_count=report.errors.count if report else 0)
    return RedirectResponse(f"/datasets?added={dataset.id}", status_code=status.HTTP_303_SEE_OTHER)


@router.post("/datasets/upload", include_in_schema=False)
async def upload_from_form(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep,
) -> Response:
    try:
        dataset = await receive_dataset_upload(session, settings, request.headers.get("content-type", ""),
                                               request.headers.get("content-length"), request.stream())
    except UploadError as exc:
        report = exc.report
        return _list_page(request, session, settings, templates, exc.status_code,
                          error=exc.message.split("\n")[0], error_form="upload",
                          issues=report.errors.issues if report else [],
                          error_count=report.errors.count if report else 0)
    return RedirectResponse(f"/datasets?added={dataset.id}", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse, include_in_schema=False)
def dataset_page(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep, dataset_id: DatasetId,
    model: str = "", mask_prompt: bool = False,
) -> Response:
    dataset = refresh_dataset(session, get_dataset_or_404(session, dataset_id), data_roots(settings))
    report = validate_dataset(Path(dataset.path), roots=data_roots(settings))
    model = preview_model(model, settings)
    models = model_options(model_choices(settings), str(settings.default_model_dir), model)
    context = {"dataset": dataset, "dataset_path": dataset.path, "report": report,
               "preview": preview_of(Path(dataset.path), report.format, model, mask_prompt, settings),
               "models": models, "model": model, "mask_prompt": mask_prompt}
    return templates.TemplateResponse(request, "dataset.html", context)


@router.get("/datasets/{dataset_id}/preview", response_class=HTMLResponse, include_in_schema=False)
def dataset_preview(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep, dataset_id: DatasetId,
    model: str = "", mask_prompt: bool = False,
) -> Response:
    dataset = get_dataset_or_404(session, dataset_id)
    model = preview_model(model, settings)
    context = {"dataset": dataset, "preview": preview_of(Path(dataset.path), dataset.format, model, mask_prompt,
                                                         settings), "mask_prompt": mask_prompt}
    return templates.TemplateResponse(request, "_dataset_preview.html", context)


# ---------- JSON API ----------

@router.get("/api/datasets", tags=["datasets"])
def api_list_datasets(session: SessionDep, settings: SettingsDep) -> list[dict[str, Any]]:
    """Registered datasets (the bundled sample first)."""
    return [dataset_json(dataset) for dataset in list_datasets(session, settings)]


@router.post("/api/datasets", status_code=status.HTTP_201_CREATED, tags=["datasets"], responses=problems(400, 422))
def api_register_dataset(
    session: SessionDep, settings: SettingsDep, payload: dict[str, Any] = Body(...),
) -> dict[str, Any]:
    """Register a dataset folder: {"name", "path"} (an absolute path; name defaults to the folder's name)."""
    path, name = payload.get("path"), payload.get("name", "")
    if not isinstance(path, str) or not path.strip():
        raise HTTPException(422, detail=[{"loc": ["body", "path"], "msg": "path is required: an absolute folder "
                                          "holding train.jsonl and valid.jsonl", "type": "value_error"}])
    if not isinstance(name, str):
        raise HTTPException(422, detail=[{"loc": ["body", "name"], "msg": "name must be a string",
                                          "type": "value_error"}])
    try:
        dataset = register_dataset(session, settings, Path(path.strip()), name)
    except DatasetError as exc:
        detail: dict[str, Any] = {"msg": str(exc)}
        if exc.report is not None:
            detail.update(errors=[i.as_dict() for i in exc.report.errors.issues], error_count=exc.report.errors.count)
        raise HTTPException(422, detail=detail) from None
    return dataset_json(dataset)


@router.post("/api/datasets/upload", status_code=status.HTTP_201_CREATED, tags=["datasets"],
             responses=problems(400, 413, 415, 422), openapi_extra=UPLOAD_BODY)
async def api_upload_dataset(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Upload a dataset: multipart fields name, train, valid (and optionally test) .jsonl files."""
    try:
        dataset = await receive_dataset_upload(session, settings, request.headers.get("content-type", ""),
                                               request.headers.get("content-length"), request.stream())
    except UploadError as exc:
        detail: dict[str, Any] = {"msg": exc.message}
        if exc.report is not None:
            detail.update(errors=[i.as_dict() for i in exc.report.errors.issues], error_count=exc.report.errors.count)
        return JSONResponse({"detail": detail}, status_code=exc.status_code)
    return JSONResponse(dataset_json(dataset), status_code=status.HTTP_201_CREATED)


@router.get("/api/datasets/validate", tags=["datasets"], responses=problems(422))
def api_validate_folder(
    settings: SettingsDep,
    path: str = Query(..., description="absolute folder holding train.jsonl and valid.jsonl"),
    mask_prompt: bool = Query(False, description="check as a run with mask_prompt would need"),
) -> dict[str, Any]:
    """Check a folder line by line: the first 20 errors (file, line, field, message) and the total."""
    folder = Path(path.strip()).expanduser()
    if not folder.is_absolute():
        raise HTTPException(422, detail=[{"loc": ["query", "path"], "msg": f"path must be absolute, got {path!r}",
                                          "type": "value_error"}])
    try:
        folder = confine(folder, data_roots(settings), "dataset folder", DATA_DIRS_SETTING)
    except PathNotAllowed as exc:
        raise HTTPException(422, detail=[{"loc": ["query", "path"], "msg": str(exc), "type": "value_error"}]) from None
    return validate_dataset(folder, mask_prompt=mask_prompt, roots=data_roots(settings)).as_dict()


@router.get("/api/datasets/{dataset_id}", tags=["datasets"], responses=problems(404, 422))
def api_get_dataset(session: SessionDep, settings: SettingsDep, dataset_id: DatasetId) -> dict[str, Any]:
    """A registered dataset, checked again now: counts, format, file sizes and the validation result."""
    roots = data_roots(settings)
    dataset = refresh_dataset(session, get_dataset_or_404(session, dataset_id), roots)
    return {**dataset_json(dataset), "validation": validate_dataset(Path(dataset.path), roots=roots).as_dict()}
