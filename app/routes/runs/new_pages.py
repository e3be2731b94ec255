"""The new-run form: show it (fresh, cloned or continuing a run), check it as it is typed, fill it from an
mlx_lm YAML config, start the run."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session
from starlette.datastructures import UploadFile

from app.body_limit import MAX_BODY_BYTES
from app.catalog.info import model_choices
from app.contract.paths import data_roots, model_roots
from app.contract.run_config import RunConfig
from app.contract.settings import Settings
from app.datasets.allowed_folders import allow_offer
from app.datasets.registry import dataset_choices
from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.models.registry import origins
from app.routes.params import bounded_query
from app.runs.configs.yaml_config import YamlConfigError, YamlProblem, parse_yaml_config
from app.runs.duration.estimate import estimate_for_config
from app.runs.form.check import FormCheck, check_form, check_values
from app.runs.form.fields import (
    ADVANCED_KEYS,
    FORM_KEYS,
    changed_advanced,
    field_specs,
    form_values,
    grouped_specs,
    starting_config,
)
from app.runs.form.presets import find_preset, preset_choices, preset_config
from app.runs.store.runs import queue_run
from app.serving.requests import servers_holding_memory
from app.tables import Run

router = APIRouter(include_in_schema=False)


def form_context(
    session: Session, settings: Settings, values: dict[str, Any], check: FormCheck, **extra: Any
) -> dict[str, Any]:
    """Everything _new_run_area.html needs."""
    advanced_open = bool(set(check.errors) & ADVANCED_KEYS) or bool(str(values.get("resume_from.run_id", "")).strip())
    return {
        "groups": grouped_specs(values),
        "fields": field_specs(values),
        "values": values,
        "errors": check.errors,
        "allow_offers": allow_offers(values, check.errors, settings),
        "other_errors": {k: v for k, v in check.errors.items() if k not in FORM_KEYS},
        "warnings": check.warnings,
        "iterations_note": check.iterations_note,
        "advanced_open": advanced_open,
        "advanced_changed": changed_advanced(values),
        "default_model": settings.default_model_dir,
        "default_data": settings.default_dataset_dir,
        "model_choices": model_choices(settings, origins=origins(session)),
        "dataset_choices": dataset_choices(session, settings),
        "presets": preset_choices(settings),
        "submitted": False,
        "notice": None,
        "yaml_text": "",
        "yaml_errors": [],
        "yaml_ignored": [],
        **extra,
    }


def allow_offers(values: Any, errors: dict[str, str], settings: Settings) -> dict[str, str]:
    """The folders offered beside the data and model fields' refusals (Allow this folder)."""
    roots = {"data": data_roots(settings), "model": model_roots(settings)}
    offers = {key: allow_offer(str(values.get(key) or ""), roots[key]) for key in roots if key in errors}
    return {key: folder for key, folder in offers.items() if folder}


def render_form(
    request: Request, templates: TemplatesDep, context: dict[str, Any], code: int = 200, partial: bool = False
) -> Response:
    page = "_new_run_area.html" if partial else "new_run.html"
    return templates.TemplateResponse(request, page, context, status_code=code)


def fresh_values(settings: Settings) -> dict[str, Any]:
    return form_values(starting_config(str(settings.default_model_dir), str(settings.default_dataset_dir)))


def source_values(source: Run, resume_iteration: int | None) -> tuple[dict[str, Any], str | None]:
    """A run's settings for a new run (its name and resume_from cleared), or to continue it from a checkpoint."""
    try:
        config = RunConfig.model_validate({**source.config, "name": "", "resume_from": None})
    except ValidationError as exc:
        return {}, f"run {source.id}'s settings could not be read ({exc.error_count()} problems); starting afresh"
    values = form_values(config)
    notice = f"Settings copied from run #{source.id} ({source.name})."
    if resume_iteration is not None:
        values["resume_from.run_id"] = str(source.id)
        values["resume_from.iteration"] = str(resume_iteration)
        values["iters"] = str(max(source.total_iters, resume_iteration * 2))
        values["epochs"] = ""
        values["name"] = f"{source.name} (continued from {resume_iteration})"
        notice = f"Continues run #{source.id} ({source.name}) from its checkpoint at iteration {resume_iteration}."
    return values, notice


def preset_values(settings: Settings, key: str, fresh: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A preset's form values and the notice saying which it is (the fresh values when there is no such preset)."""
    chosen = find_preset(key)
    if chosen is None:
        return fresh, f"There is no preset named {key!r}; the form shows the defaults."
    return form_values(preset_config(chosen, settings)), (f"The form holds the preset {chosen.title}; change "
                                                          "anything before Start.")


@router.get("/runs/new", response_class=HTMLResponse)
def new_run_form(
    request: Request, session: SessionDep, templates: TemplatesDep, settings: SettingsDep,
    from_run: int | None = bounded_query(None, "copy this run's settings"),
    resume_iteration: int | None = bounded_query(None, "continue from this checkpoint of from_run"),
    model: str | None = Query(None, max_length=4096, description="start from this model (the models page's link)"),
    preset: str | None = Query(None, max_length=64, description="start from this preset (app/runs/form/presets.py)"),
) -> Response:
    """The form: small defaults for the embedded model, a preset, or a copy of an earlier run (to clone or
    continue it)."""
    values = fresh_values(settings)
    notice = None
    if preset is not None:
        values, notice = preset_values(settings, preset, values)
    if from_run is not None:
        source = session.get(Run, from_run)
        if source is None:
            notice = f"There is no run #{from_run} to copy; the form shows the defaults."
        else:
            copied, notice = source_values(source, resume_iteration)
            values = copied or values
    if model and model.strip():
        values = {**values, "model": model.strip()}
    context = form_context(session, settings, values, check_values(values, session, settings), notice=notice)
    return render_form(request, templates, context)


async def submitted_form(request: Request) -> dict[str, str]:
    return {k: v for k, v in (await request.form()).items() if isinstance(v, str)}


@router.post("/runs/new/check", response_class=HTMLResponse)
async def check_run_form(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep
) -> Response:
    """Errors, warnings and the iterations note for the form as typed so far (htmx, out-of-band swaps)."""
    form = await submitted_form(request)
    check = await run_in_threadpool(check_form, form, session, settings)  # may wait on ssh
    context = await run_in_threadpool(form_context, session, settings, form, check)  # reads model folders
    return templates.TemplateResponse(request, "_new_run_check.html", context)


@router.post("/runs/new")
async def submit_run_form(
    request: Request, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
    templates: TemplatesDep,
) -> Response:
    form = await submitted_form(request)
    check = await run_in_threadpool(check_form, form, session, settings)  # may wait on ssh
    if check.config is None:
        context = await run_in_threadpool(form_context, session, settings, form, check, submitted=True)
        return render_form(request, templates, context, status.HTTP_422_UNPROCESSABLE_CONTENT)
    servers = await run_in_threadpool(servers_holding_memory, session, settings)
    choice = form.get("when_serving")
    if servers and choice not in ("stop", "queue"):  # ask first: stop the server, or queue the run behind it
        context = await run_in_threadpool(form_context, session, settings, form, check, submitted=True)
        return render_form(request, templates, {**context, "servers": servers})
    if choice == "stop":
        for job in servers:
            await run_in_threadpool(supervisor.cancel_job, session, job)
    estimate = await run_in_threadpool(estimate_for_config, session, settings, check.config)  # reads model headers
    run = await run_in_threadpool(queue_run, session, check.config, supervisor.tick, estimate)  # may wait
    return RedirectResponse(f"/runs/{run.id}", status_code=status.HTTP_303_SEE_OTHER)


async def _yaml_from_form(form: Any, limit_bytes: int) -> tuple[str, str]:
    """(YAML text, where it came from): an uploaded file wins over the text box."""
    upload = form.get("yaml_file")
    if isinstance(upload, UploadFile) and upload.filename:
        data = await upload.read(limit_bytes + 1)
        if len(data) > limit_bytes:
            raise YamlConfigError([YamlProblem("", f"{upload.filename} is larger than {limit_bytes:,} bytes: "
                                               "not a run config")])
        try:
            return data.decode("utf-8"), upload.filename
        except UnicodeDecodeError as exc:
            problem = YamlProblem("", f"{upload.filename} is not UTF-8 text (byte {exc.start})")
            raise YamlConfigError([problem]) from None
    text = form.get("yaml_text")
    return (text if isinstance(text, str) else ""), ""


@router.post("/runs/new/yaml", response_class=HTMLResponse, include_in_schema=False)
async def import_yaml_into_form(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep
) -> Response:
    """Fill the new-run form from YAML; on any problem the form stays as it was and the problems are listed."""
    form = await request.form()
    current = {k: v for k, v in form.items() if isinstance(v, str) and k != "yaml_text"}
    text, source = "", ""
    try:
        text, source = await _yaml_from_form(form, MAX_BODY_BYTES)
    except YamlConfigError as exc:
        problems: list[YamlProblem] | None = exc.problems
    else:
        problems = None
    # parsing, checking the values (files, perhaps ssh) and rendering are blocking work: off the event loop
    return await run_in_threadpool(_yaml_into_form, request, session, settings, templates, current, text, source,
                                   problems)


def _yaml_into_form(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep, current: dict[str, Any],
    text: str, source: str, problems: list[YamlProblem] | None,
) -> Response:
    """The form filled from `text`, or as it was with the problems listed."""
    try:
        if problems:
            raise YamlConfigError(problems)
        if not text.strip():
            raise YamlConfigError([YamlProblem("", "paste a YAML config or choose a .yaml file first")])
        parsed = parse_yaml_config(text)
    except YamlConfigError as exc:
        values: dict[str, Any] = current or fresh_values(settings)
        context = form_context(session, settings, values, check_values(values, session, settings),
                               yaml_text=text, yaml_errors=[str(p) for p in exc.problems], yaml_source=source)
        return render_form(request, templates, context, partial=True)
    values = form_values(parsed.config)
    values["model"] = values["model"] or str(settings.default_model_dir)
    values["data"] = values["data"] or str(settings.default_dataset_dir)
    notice = (f"Loaded {len(parsed.keys)} settings from {source or 'the YAML'}; the rest are mlx_lm's defaults. "
              "Check them, then Start.")
    context = form_context(session, settings, values, check_values(values, session, settings), notice=notice,
                           yaml_text=text, yaml_ignored=parsed.ignored)
    return render_form(request, templates, context, partial=True)
