"""Dataset pages: the list (register a folder, upload), one dataset (its check and a preview with a chat
template), and the dataset tools' partials: token statistics, the new-run form's note on over-long examples,
subsets and splits, seed-shaped demo datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, select

from app.catalog.info import model_choices
from app.contract.paths import MODEL_DIRS_SETTING, PathNotAllowed, confine, data_roots, model_roots
from app.contract.run_config import looks_like_path
from app.contract.settings import Settings
from app.datasets.allowed_folders import allow_offer, folders_context
from app.datasets.demo_data import DemoDataError, DemoDataRequest, check_request
from app.datasets.demo_data import start_job as start_demo_job
from app.datasets.preview import Preview, build_preview, model_options
from app.datasets.registry import DatasetError, dataset_json, list_datasets, refresh_dataset, register_dataset
from app.datasets.requests import DEFAULT_MAX_SEQ_LENGTH, SubsetRequest, confined_source
from app.datasets.subset import SubsetError, create_subset
from app.datasets.token_stats import (
    TRAINING_SPLITS,
    TokenStatsInputError,
    job_or_start,
    resolve_inputs,
    start_job,
    view,
)
from app.datasets.upload import UploadError, receive_dataset_upload
from app.datasets.validation import validate_dataset
from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.jobs.views import progress_item
from app.routes.params import DatasetId, dataset_or_404
from app.tables import Dataset

router = APIRouter()


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


def _list_page(
    request: Request, session: Session, settings: Settings, templates: TemplatesDep, code: int = 200,
    **context: Any,
) -> Response:
    context = {"datasets": [dataset_json(d) for d in list_datasets(session, settings)], "error": None,
               "error_form": None, "issues": [], "error_count": 0, "values": {}, "added": None, "offer": None,
               "max_upload_mb": settings.max_upload_mb, "datasets_dir": settings.local_datasets_dir,
               **folders_context(session, settings), **context}
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
                          offer=allow_offer(path, data_roots(settings)),
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
    dataset = refresh_dataset(session, dataset_or_404(session, dataset_id), data_roots(settings))
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
    dataset = dataset_or_404(session, dataset_id)
    model = preview_model(model, settings)
    context = {"dataset": dataset, "preview": preview_of(Path(dataset.path), dataset.format, model, mask_prompt,
                                                         settings), "mask_prompt": mask_prompt}
    return templates.TemplateResponse(request, "_dataset_preview.html", context)


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
    except TokenStatsInputError:  # the data or model field says what is wrong, once: the panel only waits
        panel["error"] = "counted once the data and model fields are right"
    else:
        panel["stats"] = view(job_or_start(session, settings, supervisor, folder, resolved), length,
                              TRAINING_SPLITS)
        panel["model_name"] = Path(resolved).name or resolved
    return templates.TemplateResponse(request, "_dataset_form_panel.html", {"panel": panel})


@router.post("/dataset-tools/form-preview", response_class=HTMLResponse, include_in_schema=False)
def form_preview(
    request: Request, settings: SettingsDep, templates: TemplatesDep, data: Annotated[str, Form()] = "",
    model: Annotated[str, Form()] = "", mask_prompt: Annotated[str | None, Form()] = None,
) -> HTMLResponse:
    """The new-run form's first training example as the trainer will see it: the form's model's chat template, its
    mask_prompt, the token counts (reads only; the fields' own checks say what is wrong with them)."""
    try:
        folder = confine(data.strip(), data_roots(settings), "data folder")
        chosen = preview_model(model, settings)
    except (PathNotAllowed, HTTPException):
        return templates.TemplateResponse(request, "_form_example_body.html", {"preview": None})
    preview = build_preview(folder, None, chosen, mask_prompt not in (None, "", "false"), per_split=1,
                            data_roots=data_roots(settings), model_roots=model_roots(settings), splits=("train",))
    return templates.TemplateResponse(request, "_form_example_body.html", {"preview": preview})


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


@router.post("/dataset-tools/demo", response_class=HTMLResponse, include_in_schema=False)
def demo_form(
    request: Request, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
    templates: TemplatesDep, name: Annotated[str, Form()] = "", scale: Annotated[str, Form()] = "1.0",
) -> HTMLResponse:
    """The Datasets page's demo card: start writing a seed-shaped demo set, then show its job (or the errors)."""
    context: dict[str, Any] = {"demo_values": {"name": name, "scale": scale}, "demo_errors": {}, "demo_item": None,
                               "datasets_dir": settings.local_datasets_dir}
    try:
        body = DemoDataRequest.model_validate({"name": name, "scale": scale or "1.0"})
        params = check_request(session, settings, body)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            key = str(err["loc"][0]) if err["loc"] else "form"
            context["demo_errors"][key] = err["msg"].removeprefix("Value error, ")
    except DemoDataError as exc:
        context["demo_errors"][exc.field] = exc.message
    else:
        context["demo_item"] = progress_item(session, start_demo_job(session, supervisor, params))
        context["demo_values"] = {"name": "", "scale": scale}
    return templates.TemplateResponse(request, "_dataset_demo.html", context)  # htmx swaps 200s only
