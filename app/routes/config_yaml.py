"""Run configs as mlx_lm YAML: export a run's, parse one (API), read one into the new-run form."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.body_limit import MAX_BODY_BYTES
from app.deps import SessionDep, SettingsDep, TemplatesDep
from app.routes.new_run import form_context as new_run_context
from app.routes.new_run import fresh_values, render_form
from app.routes.params import RunId, content, problems
from app.runs.config import RunConfig
from app.runs.configs.warnings import read_model_facts
from app.runs.configs.yaml_config import YamlConfigError, YamlProblem, export_yaml, parse_yaml_config
from app.runs.form.check import check_values
from app.runs.form.fields import form_values
from app.tables import Run

router = APIRouter()
YAML_BODY = {"requestBody": {"required": True, "description": "an mlx_lm YAML config",
                             "content": {"application/yaml": {"schema": {"type": "string"}}}}}


@router.get("/api/runs/{run_id}/config.yaml", tags=["runs"], response_class=Response,
            responses={**content("application/yaml", "the config as mlx_lm YAML"), **problems(404, 422)})
def export_run_yaml(session: SessionDep, settings: SettingsDep, run_id: RunId) -> Response:
    """The run's config as a YAML that `python -m mlx_lm lora -c <file>` trains from as is."""
    run = session.get(Run, run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no run with id {run_id}")
    config = RunConfig.model_validate(run.config)
    text = export_yaml(config, run.id, run.name, read_model_facts(config.model, settings).layers)
    headers = {"Content-Disposition": f'attachment; filename="loraboard-run-{run_id}.yaml"'}
    return Response(text, media_type="application/yaml", headers=headers)


@router.post("/api/configs/parse", tags=["configs"], responses=problems(422), openapi_extra=YAML_BODY)
async def parse_config(request: Request) -> JSONResponse:
    """YAML text in (the request body) -> {"config": RunConfig, "ignored": [...], "keys": [...]}, or a 422 whose
    detail lists each problem with its key path, line and column. The body is at most MAX_BODY_BYTES (413)."""
    raw = await request.body()
    try:
        parsed = await run_in_threadpool(parse_yaml_config, raw.decode("utf-8"))  # parsing is CPU work
    except UnicodeDecodeError as exc:
        problem = YamlProblem("", f"the body is not UTF-8 text (byte {exc.start})")
        return JSONResponse({"detail": [problem.as_json()]}, status_code=422)
    except YamlConfigError as exc:
        return JSONResponse({"detail": [p.as_json() for p in exc.problems]}, status_code=422)
    return JSONResponse({"config": parsed.config.model_dump(mode="json"),
                         "ignored": [{"key": i.key, "reason": i.reason} for i in parsed.ignored],
                         "keys": parsed.keys})


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
        context = new_run_context(session, settings, values, check_values(values, session, settings),
                                  yaml_text=text, yaml_errors=[str(p) for p in exc.problems], yaml_source=source)
        return render_form(request, templates, context, partial=True)
    values = form_values(parsed.config)
    values["model"] = values["model"] or str(settings.default_model_dir)
    values["data"] = values["data"] or str(settings.default_dataset_dir)
    notice = (f"Loaded {len(parsed.keys)} settings from {source or 'the YAML'}; the rest are mlx_lm's defaults. "
              "Check them, then Start.")
    context = new_run_context(session, settings, values, check_values(values, session, settings), notice=notice,
                              yaml_text=text, yaml_ignored=parsed.ignored)
    return render_form(request, templates, context, partial=True)
