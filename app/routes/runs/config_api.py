"""Run configs as mlx_lm YAML (JSON API, under /api): export a run's, parse one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from app.contract.run_config import RunConfig
from app.deps import SessionDep, SettingsDep
from app.routes.params import RunId, content, problems
from app.runs.configs.warnings import read_model_facts
from app.runs.configs.yaml_config import YamlConfigError, YamlProblem, export_yaml, parse_yaml_config
from app.runs.form.fields import starting_config
from app.tables import Run

router = APIRouter(prefix="/api")
YAML_BODY = {"requestBody": {"required": True, "description": "an mlx_lm YAML config",
                             "content": {"application/yaml": {"schema": {"type": "string"}}}}}


@router.get("/runs/{run_id}/config.yaml", tags=["runs"], response_class=Response,
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


@router.get("/configs/defaults", tags=["configs"])
def default_config(settings: SettingsDep) -> dict[str, Any]:
    """The config a fresh new-run form holds: small settings for the embedded model and the sample data, as a
    body for POST /api/runs (`loraboard run` without a config starts it)."""
    return starting_config(str(settings.default_model_dir), str(settings.default_dataset_dir)).model_dump(
        mode="json", exclude_none=True)


@router.post("/configs/parse", tags=["configs"], responses=problems(422), openapi_extra=YAML_BODY)
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
