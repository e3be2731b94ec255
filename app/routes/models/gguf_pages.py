"""A model card's GGUF section (htmx): `GET /models/{name}/gguf` shows it, `POST /models/{name}/gguf` is its
export form."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.models.gguf import GgufRefused, GgufRequest, panel, start
from app.routes.params import ModelName

router = APIRouter()


@router.get("/models/{name}/gguf", response_class=HTMLResponse, include_in_schema=False)
def gguf_panel(request: Request, name: ModelName, session: SessionDep, settings: SettingsDep,
               templates: TemplatesDep) -> HTMLResponse:
    """The model card's GGUF section: the export form, live jobs, finished files and their commands."""
    model = {"name": name, "path": str(settings.local_models_dir / name)}
    return templates.TemplateResponse(request, "_model_gguf.html",
                                      {"model": model, "gguf": panel(session, settings, name)})


@router.post("/models/{name}/gguf", response_class=HTMLResponse, include_in_schema=False)
def gguf_from_page(
    request: Request, name: ModelName, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
    templates: TemplatesDep, type: Annotated[str, Form()] = "f16", export: Annotated[str, Form()] = "",
) -> HTMLResponse:
    """The export form: the section again with the new job's progress, or what is wrong with the request."""
    error = None
    try:
        start(session, settings, name, GgufRequest.model_validate({"type": type, "name": export.strip() or None}))
        supervisor.start_queued_now(session)
    except ValidationError as exc:
        error = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))
    except GgufRefused as exc:
        error = str(exc)
    model = {"name": name, "path": str(settings.local_models_dir / name)}
    values = {"type": type, "name": export} if error else None
    return templates.TemplateResponse(request, "_model_gguf.html",
                                      {"model": model, "gguf": panel(session, settings, name, error, values)})
