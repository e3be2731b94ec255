"""Dataset jobs: token statistics (a worker job) and subsets/splits of a dataset.

JSON: `POST /api/token-stats`, `GET /api/token-stats/{id}`, `POST /api/datasets/subset`.
htmx partials (under /dataset-tools, clear of the dataset pages' /datasets/{id}): the dataset page's
token statistics, the new-run form's too-long warning, the subset form. They are POSTs (htmx sends them with the
page's CSRF token): showing token statistics starts counting them when there are none yet, and no GET may start
work, since any web page can make a browser send one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query, Request, Response, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlmodel import select

from app.catalog.info import model_choices
from app.contract.paths import DATA_DIRS_SETTING, PathNotAllowed, confine, data_roots
from app.contract.run_config import RunConfig
from app.datasets.subset import DEFAULT_RATIOS, SubsetError, create_subset, validate_ratios
from app.datasets.token_stats import (
    KIND,
    SPLITS,
    TRAINING_SPLITS,
    TokenStatsInputError,
    job_json,
    job_or_start,
    resolve_inputs,
    start_job,
    view,
)
from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.jobs.jobs import check_job
from app.routes.params import MAX_ID, JobId, problems
from app.tables import Dataset, Job

router = APIRouter()
DEFAULT_MAX_SEQ_LENGTH: int = RunConfig.model_fields["max_seq_length"].default


class TokenStatsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field("", description="Dataset folder (default: the sample dataset).")
    model: str = Field("", description="Model folder or Hugging Face id whose tokenizer counts (default: embedded).")


class SubsetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(..., min_length=1, description="Folder of the dataset to draw from.")
    name: str = Field(..., description="Name of the new dataset (its folder under the datasets folder).")
    n: int = Field(..., ge=1, description="Number of examples to draw.")
    seed: int = Field(0, ge=0, description="Random seed: the same seed draws the same subset.")
    ratios: list[float] = Field(default_factory=lambda: list(DEFAULT_RATIOS),
                                description="Shares of train, valid and test; they add up to 1.")
    splits: list[str] = Field(default_factory=lambda: list(SPLITS), description="Splits of the source to draw from.")

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, value: list[float]) -> list[float]:
        return list(validate_ratios(value))


def _max_seq_length(raw: str | None) -> tuple[int, str | None]:
    """The view's max_seq_length (a bad entry keeps the default and says why)."""
    if raw is None or not raw.strip():
        return DEFAULT_MAX_SEQ_LENGTH, None
    try:
        value = int(raw.strip())
    except ValueError:
        return DEFAULT_MAX_SEQ_LENGTH, f"max_seq_length must be a whole number, got {raw.strip()!r}"
    if value < 1:
        return DEFAULT_MAX_SEQ_LENGTH, f"max_seq_length must be at least 1, got {value}"
    return value, None


def _model_label(model: str) -> str:
    return Path(model).name if Path(model).is_absolute() else model


def _model_options(settings: SettingsDep, selected: str) -> list[tuple[str, str]]:
    """(value, label) for the model select: the embedded model, the picker's models, and the one shown."""
    options = {str(settings.default_model_dir): f"{settings.default_model_dir.name} (embedded)"}
    for choice in model_choices(settings):
        value = str(choice.get("model") or choice.get("path") or "")
        if value and value not in options:
            options[value] = str(choice.get("name") or _model_label(value))
    if selected and selected not in options:
        options[selected] = _model_label(selected)
    return list(options.items())


def confined_source(settings: SettingsDep, source: str) -> Path:
    """The subset's source folder, inside the folders datasets may be read from (else SubsetError)."""
    try:
        return confine(source, data_roots(settings), "source folder", DATA_DIRS_SETTING)
    except PathNotAllowed as exc:
        raise SubsetError("source", str(exc)) from None


# JSON API ------------------------------------------------------------------------------------------


@router.post("/api/token-stats", tags=["datasets"], status_code=status.HTTP_201_CREATED,
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


@router.get("/api/token-stats/{job_id}", tags=["datasets"], responses=problems(404, 422))
def get_token_stats(
    job_id: JobId, session: SessionDep, settings: SettingsDep,
    max_seq_length: Annotated[int, Query(ge=1, le=MAX_ID)] = DEFAULT_MAX_SEQ_LENGTH,
) -> dict[str, Any]:
    """Status, progress (done/total, ETA) and, once completed, per-split summaries and histograms."""
    job = session.get(Job, job_id)
    if job is None or job.kind != KIND:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no token statistics job with id {job_id}")
    return job_json(check_job(session, settings, job), max_seq_length)


@router.post("/api/datasets/subset", tags=["datasets"], status_code=status.HTTP_201_CREATED,
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


# htmx partials --------------------------------------------------------------------------------------


def _token_stats_page(
    request: Request, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
    templates: TemplatesDep, data: str, model: str, max_seq_length: str | None, restart: bool,
) -> HTMLResponse:
    length, length_error = _max_seq_length(max_seq_length)
    context: dict[str, Any] = {"dataset_path": data, "stats_loaded": True, "stats_error": None,
                               "length_error": length_error, "model_options": _model_options(settings, model)}
    try:
        folder, resolved = resolve_inputs(settings, data, model)
    except TokenStatsInputError as exc:
        context.update(stats_error=f"{exc.field}: {exc.message}", model=model, max_seq_length=length)
        return templates.TemplateResponse(request, "_token_stats.html", context)
    job = (start_job(session, settings, supervisor, folder, resolved)[0] if restart
           else job_or_start(session, settings, supervisor, folder, resolved))
    context.update(stats=view(job, length), model=resolved, model_options=_model_options(settings, resolved),
                   dataset_path=str(folder), max_seq_length=length)
    return templates.TemplateResponse(request, "_token_stats.html", context)


@router.post("/dataset-tools/token-stats", response_class=HTMLResponse, include_in_schema=False)
def token_stats_partial(
    request: Request, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep, templates: TemplatesDep,
    data: Annotated[str, Form()] = "", model: Annotated[str, Form()] = "",
    max_seq_length: Annotated[str | None, Form()] = None, retry: Annotated[bool, Form()] = False,
) -> HTMLResponse:
    """The dataset page's token statistics: starts the job when none exists for these files and model, or
    (retry) tries a failed one again."""
    return _token_stats_page(request, session, settings, supervisor, templates, data, model, max_seq_length,
                             restart=retry)


@router.post("/dataset-tools/form-panel", response_class=HTMLResponse, include_in_schema=False)
def form_panel(
    request: Request, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep, templates: TemplatesDep,
    data: Annotated[str, Form()] = "", model: Annotated[str, Form()] = "",
    max_seq_length: Annotated[str | None, Form()] = None,
) -> HTMLResponse:
    """The new-run form's note on over-long examples for its data, model and max_seq_length (never blocks)."""
    length, length_error = _max_seq_length(max_seq_length)
    panel: dict[str, Any] = {"error": None, "length_error": length_error, "stats": None}
    try:
        folder, resolved = resolve_inputs(settings, data, model)
    except TokenStatsInputError as exc:
        panel["error"] = exc.message
    else:
        panel["stats"] = view(job_or_start(session, settings, supervisor, folder, resolved), length,
                              TRAINING_SPLITS)
        panel["model_name"] = Path(resolved).name or resolved
    return templates.TemplateResponse(request, "_dataset_form_panel.html", {"panel": panel})


@router.post("/dataset-tools/subset", response_class=HTMLResponse, include_in_schema=False)
def subset_form(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep,
    source: Annotated[str, Form()] = "", name: Annotated[str, Form()] = "", n: Annotated[str, Form()] = "",
    seed: Annotated[str, Form()] = "0", ratio_train: Annotated[str, Form()] = "0.8",
    ratio_valid: Annotated[str, Form()] = "0.1", ratio_test: Annotated[str, Form()] = "0.1",
    splits: Annotated[list[str] | None, Form()] = None,
) -> HTMLResponse:
    """The dataset page's subset form: create it, then show the counts (or the errors, by field)."""
    values = {"name": name, "n": n, "seed": seed, "ratio_train": ratio_train, "ratio_valid": ratio_valid,
              "ratio_test": ratio_test, "splits": splits or []}
    dataset = session.exec(select(Dataset).where(Dataset.path == source)).first()
    context: dict[str, Any] = {"dataset_path": source, "dataset": dataset, "subset_values": values,
                               "subset_errors": {}, "subset_result": None}
    try:
        body = SubsetRequest.model_validate({
            "source": source, "name": name, "n": n, "seed": seed or "0",
            "ratios": [ratio_train, ratio_valid, ratio_test], "splits": splits or [],
        })
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            key = str(err["loc"][0]) if err["loc"] else "form"
            context["subset_errors"][key] = err["msg"].removeprefix("Value error, ")
        return templates.TemplateResponse(request, "_dataset_subset.html", context)  # htmx swaps 200s only
    try:
        context["subset_result"] = create_subset(session, settings, confined_source(settings, body.source),
                                                 body.name, body.n, body.seed, body.ratios, body.splits)
    except SubsetError as exc:
        context["subset_errors"][exc.field] = exc.message
        return templates.TemplateResponse(request, "_dataset_subset.html", context)  # htmx swaps 200s only
    return templates.TemplateResponse(request, "_dataset_subset.html", context)
