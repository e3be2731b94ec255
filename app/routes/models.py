"""The model picker and model information: JSON under /api/models, the form's info panel at /models/info."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from app.catalog.info import ModelInfoError, model_choices, model_info, trainable_params
from app.deps import SessionDep, SettingsDep, TemplatesDep
from app.models.registry import origins
from app.paths import MODEL_DIRS_SETTING, PathNotAllowed, confine, model_roots
from app.routes.params import problems
from app.runs.config import LoraParameters, RunConfig, looks_like_path
from app.runs.memory.estimate import panel_memory

router = APIRouter()

DEFAULT_NUM_LAYERS: int = RunConfig.model_fields["num_layers"].default
DEFAULT_RANK: int = LoraParameters.model_fields["rank"].default


def split_keys(text: str | None) -> list[str] | None:
    """'self_attn.q_proj, self_attn.v_proj' -> a list; empty -> None (mlx-lm's default keys)."""
    keys = [k.strip() for k in (text or "").split(",") if k.strip()]
    return keys or None


@router.get("/api/models", tags=["models"])
def get_models(settings: SettingsDep, session: SessionDep) -> list[dict[str, Any]]:
    """Local model folders and Hugging Face cache entries: name, model (path or hub id), source, size, and for a
    model loraboard wrote its origin ("fused from run 3 @ 40", "4-bit of tiny-mistral (group 32)")."""
    return model_choices(settings, origins=origins(session))


@router.get("/api/models/info", tags=["models"], responses=problems(422))
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


def confined_model(model: str, settings: SettingsDep) -> str:
    """A model folder inside the folders models may be read from (a hub id as given); else ModelInfoError."""
    if not model.strip() or not looks_like_path(model.strip()):  # empty: the embedded model
        return model
    try:
        return str(confine(model.strip(), model_roots(settings), "model folder", MODEL_DIRS_SETTING))
    except PathNotAllowed as exc:
        raise ModelInfoError(str(exc), "model") from None


def _form_int(form: dict[str, str], key: str, default: int) -> int:
    text = form.get(key, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ModelInfoError(f"{key} must be a whole number, not '{text}'", key) from None


@router.get("/models/info", response_class=HTMLResponse, include_in_schema=False)
def model_info_panel(request: Request, settings: SettingsDep, templates: TemplatesDep) -> Response:
    """The new-run form's model panel, for the form's current values (sent whole by hx-include)."""
    form = dict(request.query_params)
    context: dict[str, Any] = {"info": None, "trainable": None, "error": None, "trainable_error": None}
    try:
        info = model_info(confined_model(form.get("model", ""), settings), settings)
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
        context["memory"] = panel_memory(info, trainable, form)
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
