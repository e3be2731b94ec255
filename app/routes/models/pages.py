"""Model pages: `/models` (every model folder, with its table and quantize partials), the new-run form's model
panel and picker lists, and the fuse partial of a checkpoint's page."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from app.catalog.info import ModelInfoError, model_choices, model_info, trainable_params
from app.catalog.requests import DEFAULT_NUM_LAYERS, DEFAULT_RANK, confined_model, split_keys
from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.models.registry import origins
from app.models.requests import FuseRequest, ModelJobRefused, QuantizeRequest, start_fuse, start_quantize
from app.models.smollm2 import Smollm2Refused, card_context, start_job
from app.models.view import fuse_context, models_context
from app.routes.params import Iteration, RunId, run_checkpoint_or_404
from app.runs.duration.estimate import estimate_for_form
from app.runs.memory.panel import panel_memory

router = APIRouter()


def _form_int(form: dict[str, str], key: str, default: int) -> int:
    text = form.get(key, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ModelInfoError(f"{key} must be a whole number, not '{text}'", key) from None


@router.get("/models/info", response_class=HTMLResponse, include_in_schema=False)
def model_info_panel(request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep
                     ) -> Response:
    """The new-run form's model panel, for the form's current values (sent whole by hx-include): what the model
    is, what the run trains, its memory, and its useful-token share and wall time."""
    form = dict(request.query_params)
    context: dict[str, Any] = {"info": None, "trainable": None, "error": None, "trainable_error": None,
                               "refused": False}
    try:
        model = confined_model(form.get("model", ""), settings)
    except ModelInfoError:  # the model field says why, once, with Allow this folder beside it
        context["refused"] = True
        return templates.TemplateResponse(request, "_model_info.html", context)
    try:
        info = model_info(model, settings)
        context["info"] = info.to_json()
    except ModelInfoError as exc:
        context["error"] = str(exc)
        return templates.TemplateResponse(request, "_model_info.html", context)
    try:
        trainable = trainable_params(
            info,
            form.get("fine_tune_type", "lora") or "lora",
            _form_int(form, "num_layers", DEFAULT_NUM_LAYERS),
            _form_int(form, "lora_parameters.rank", DEFAULT_RANK),
            split_keys(form.get("lora_parameters.keys")),
        )
        context["trainable"] = trainable.to_json()
        context["memory"] = panel_memory(info, trainable, form, int(settings.qlora_offer_min_gb * 1e9))
        estimate = estimate_for_form(session, settings, form, info.total_params)
        context["duration"] = estimate.to_json() if estimate else None
    except ModelInfoError as exc:
        context["trainable_error"] = str(exc)
    return templates.TemplateResponse(request, "_model_info.html", context)


@router.get("/models/choices", response_class=HTMLResponse, include_in_schema=False)
def model_choice_lists(request: Request, settings: SettingsDep, session: SessionDep, templates: TemplatesDep,
                       model: str = "") -> Response:
    """The picker's lists alone (datalist and grouped select), with `model` selected when it is one of them."""
    context = {"choices_only": True, "model_choices": model_choices(settings, origins=origins(session)),
               "value": model}
    return templates.TemplateResponse(request, "_model_picker.html", context)


def _form_errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))


def _whole(text: str) -> int | str:
    """A form's number as an int (the request model then names what is allowed), else the text as typed."""
    return int(text.strip()) if text.strip().isdigit() else text


@router.get("/models", response_class=HTMLResponse, include_in_schema=False)
def models_page(request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep,
                model: Annotated[str, Query(max_length=4096)] = "",
                group_size: Annotated[str, Query(max_length=8)] = "") -> HTMLResponse:
    """Every model folder with its origin, size, archive download, quantize form and the command that made it;
    `model` (and `group_size`) prefill the quantize form (the model panel's QLoRA link)."""
    values = {"model": model, "group_size": group_size}
    context = {**models_context(session, settings, values=values), **card_context(session, settings)}
    return templates.TemplateResponse(request, "models.html", context)


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


@router.post("/models/smollm2", response_class=HTMLResponse, include_in_schema=False)
def smollm2_from_page(request: Request, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
                      templates: TemplatesDep) -> HTMLResponse:
    """The Models page's Add SmolLM2-135M-Instruct button: the conversion job's progress (a live one rather than a
    second), or why it cannot start (the wheel not installed: what to run)."""
    error = None
    try:
        start_job(session, settings, supervisor)
    except Smollm2Refused as exc:
        error = str(exc)
    return templates.TemplateResponse(request, "_model_smollm2.html", card_context(session, settings, error))


@router.get("/runs/{run_id}/checkpoints/{iteration}/fuse", response_class=HTMLResponse, include_in_schema=False)
def fuse_partial(request: Request, run_id: RunId, iteration: Iteration, session: SessionDep,
                 settings: SettingsDep, templates: TemplatesDep) -> HTMLResponse:
    run, ckpt = run_checkpoint_or_404(session, run_id, iteration)
    return templates.TemplateResponse(request, "_use_fuse.html", fuse_context(session, settings, run, ckpt))


@router.post("/runs/{run_id}/checkpoints/{iteration}/fuse", response_class=HTMLResponse, include_in_schema=False)
def fuse_from_page(
    request: Request, run_id: RunId, iteration: Iteration, session: SessionDep, settings: SettingsDep,
    supervisor: SupervisorDep, templates: TemplatesDep, name: Annotated[str, Form()] = "",
    dequantize: Annotated[str, Form()] = "",
) -> HTMLResponse:
    """The checkpoint page's fuse form: the job's progress, or what is wrong with the request."""
    run, ckpt = run_checkpoint_or_404(session, run_id, iteration)
    error = None
    try:
        start_fuse(session, settings, run, iteration,
                   FuseRequest(name=name.strip() or None, dequantize=dequantize not in ("", "off", "false")))
        supervisor.start_queued_now(session)
    except ModelJobRefused as exc:
        error = str(exc)
    return templates.TemplateResponse(request, "_use_fuse.html", fuse_context(session, settings, run, ckpt, error))
