"""The runs list page (and its partial)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import HTMLResponse, Response

from app.deps import SessionDep, TemplatesDep
from app.runs import list_runs

router = APIRouter(include_in_schema=False)
HxRequest = Annotated[str | None, Header()]


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request, session: SessionDep, templates: TemplatesDep, hx_request: HxRequest = None) -> Response:
    runs = list_runs(session)
    context = {"runs": runs, "any_active": any(not r.is_terminal for r in runs)}
    name = "_runs_table.html" if hx_request == "true" else "index.html"
    return templates.TemplateResponse(request, name, context)
