"""Datasets (JSON, under /api): list, register a folder, upload, validate a folder, one dataset; and the dataset
tools: token statistics (a worker job), subsets/splits and seed-shaped demo datasets (a worker job)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from app.contract.paths import DATA_DIRS_SETTING, PathNotAllowed, confine, data_roots
from app.datasets.demo_data import DemoDataError, DemoDataRequest, check_request
from app.datasets.demo_data import start_job as start_demo_job
from app.datasets.registry import DatasetError, dataset_json, list_datasets, refresh_dataset, register_dataset
from app.datasets.requests import DEFAULT_MAX_SEQ_LENGTH, SubsetRequest, confined_source
from app.datasets.subset import SubsetError, create_subset
from app.datasets.token_stats import KIND, TokenStatsInputError, job_json, resolve_inputs, start_job
from app.datasets.upload import UploadError, receive_dataset_upload
from app.datasets.validation import validate_dataset
from app.deps import SessionDep, SettingsDep, SupervisorDep
from app.jobs.jobs import check_job
from app.jobs.jobs import job_json as any_job_json
from app.routes.params import MAX_ID, DatasetId, JobId, dataset_or_404, problems
from app.tables import Job

router = APIRouter(prefix="/api")
_JSONL = {"type": "string", "format": "binary"}
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["train", "valid"],
    "properties": {"name": {"type": "string"}, "train": _JSONL, "valid": _JSONL, "test": _JSONL}}}}}}


@router.get("/datasets", tags=["datasets"])
def api_list_datasets(session: SessionDep, settings: SettingsDep) -> list[dict[str, Any]]:
    """Registered datasets (the bundled sample first)."""
    return [dataset_json(dataset) for dataset in list_datasets(session, settings)]


@router.post("/datasets", status_code=status.HTTP_201_CREATED, tags=["datasets"], responses=problems(400, 422))
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


@router.post("/datasets/upload", status_code=status.HTTP_201_CREATED, tags=["datasets"],
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


@router.get("/datasets/validate", tags=["datasets"], responses=problems(422))
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


@router.get("/datasets/{dataset_id}", tags=["datasets"], responses=problems(404, 422))
def api_get_dataset(session: SessionDep, settings: SettingsDep, dataset_id: DatasetId) -> dict[str, Any]:
    """A registered dataset, checked again now: counts, format, file sizes and the validation result."""
    roots = data_roots(settings)
    dataset = refresh_dataset(session, dataset_or_404(session, dataset_id), roots)
    return {**dataset_json(dataset), "validation": validate_dataset(Path(dataset.path), roots=roots).as_dict()}


class TokenStatsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field("", description="Dataset folder (default: the sample dataset).")
    model: str = Field("", description="Model folder or Hugging Face id whose tokenizer counts (default: embedded).")


@router.post("/token-stats", tags=["datasets"], status_code=status.HTTP_201_CREATED,
             responses={200: {"description": "the job for these unchanged files already exists (running or done)",
                              "content": {"application/json": {"schema": {"type": "object"}}}},
                        **problems(400, 422)})
def post_token_stats(
    body: TokenStatsRequest, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
    response: Response,
) -> dict[str, Any]:
    """Start token statistics for (data, model), or answer the running/finished job for unchanged files."""
    try:
        folder, model = resolve_inputs(settings, body.data, body.model)
    except TokenStatsInputError as exc:
        raise HTTPException(422, detail=[{"loc": ["body", exc.field], "msg": exc.message,
                                          "type": "value_error"}]) from None
    job, created = start_job(session, settings, supervisor, folder, model)
    if not created:
        response.status_code = status.HTTP_200_OK
    return job_json(job, DEFAULT_MAX_SEQ_LENGTH)


@router.get("/token-stats/{job_id}", tags=["datasets"], responses=problems(404, 422))
def get_token_stats(
    job_id: JobId, session: SessionDep, settings: SettingsDep,
    max_seq_length: Annotated[int, Query(ge=1, le=MAX_ID)] = DEFAULT_MAX_SEQ_LENGTH,
) -> dict[str, Any]:
    """Status, progress (done/total, ETA) and, once completed, per-split summaries and histograms."""
    job = session.get(Job, job_id)
    if job is None or job.kind != KIND:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no token statistics job with id {job_id}")
    return job_json(check_job(session, settings, job), max_seq_length)


@router.post("/datasets/subset", tags=["datasets"], status_code=status.HTTP_201_CREATED,
             responses=problems(400, 422))
def post_subset(body: SubsetRequest, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """A seeded random subset of n examples, re-split by ratios into a new, registered dataset folder."""
    try:
        result = create_subset(session, settings, confined_source(settings, body.source), body.name, body.n,
                               body.seed, body.ratios, body.splits)
    except SubsetError as exc:
        raise HTTPException(422, detail=[{"loc": ["body", exc.field], "msg": exc.message,
                                          "type": "value_error"}]) from None
    return result.as_json()


@router.post("/datasets/demo", tags=["datasets"], status_code=status.HTTP_202_ACCEPTED, responses=problems(400, 422))
def post_demo_dataset(
    body: DemoDataRequest, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
) -> dict[str, Any]:
    """Start writing a seed-shaped demo dataset (text records with the seed run's token lengths, counted with the
    model's tokenizer) into a new folder under the datasets folder; it is registered once the job has completed."""
    try:
        params = check_request(session, settings, body)
    except DemoDataError as exc:
        raise HTTPException(422, detail=[{"loc": ["body", exc.field], "msg": exc.message,
                                          "type": "value_error"}]) from None
    return any_job_json(start_demo_job(session, supervisor, params))
