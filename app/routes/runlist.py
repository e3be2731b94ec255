"""The runs list page, its table partial, and the row actions (rename, notes, delete)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Header, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, Response

from app.deps import SessionDep, SettingsDep, TemplatesDep
from app.runs.listing import (
    STATUS_FILTERS,
    RunFilter,
    RunListError,
    delete_run,
    filtered_runs,
    parse_filter,
    run_rows,
    update_run_text,
)
from app.tables import Run

router = APIRouter(include_in_schema=False)
HxHeader = Annotated[str | None, Header()]


def table_context(session: SessionDep, run_filter: RunFilter, **extra: Any) -> dict[str, Any]:
    rows = run_rows(session, filtered_runs(session, run_filter))
    query = urlencode(run_filter.query())
    return {
        "rows": rows,
        "any_active": any(not row.run.is_terminal for row in rows),
        "filter": run_filter,
        "status_filters": STATUS_FILTERS,
        "table_url": "/?" + query if query else "/",
        "filter_error": None,
        "message": None,
        "action_error": None,
        **extra,
    }


def _run_or_404(session: SessionDep, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no run with id {run_id}")
    return run


@router.get("/", response_class=HTMLResponse)
def runs_page(
    request: Request, session: SessionDep, templates: TemplatesDep,
    status_filter: Annotated[str | None, Query(alias="status")] = None,
    q: str | None = None,
    hx_request: HxHeader = None,
    hx_history_restore_request: HxHeader = None,
) -> Response:
    filter_error = None
    try:
        run_filter = parse_filter(status_filter, q)
    except RunListError as exc:
        run_filter, filter_error = parse_filter(None, q), str(exc)
    context = table_context(session, run_filter, filter_error=filter_error)
    partial = hx_request == "true" and hx_history_restore_request != "true"
    response = templates.TemplateResponse(request, "_runs_table.html" if partial else "index.html", context)
    response.headers["Vary"] = "HX-Request"
    return response


@router.post("/runs/{run_id}/text", response_class=HTMLResponse)
def edit_run_text(
    request: Request, session: SessionDep, templates: TemplatesDep, run_id: int,
    name: Annotated[str, Form()], notes: Annotated[str, Form()] = "",
) -> Response:
    """Rename a run and set its notes from its row; answers with the row (the form stays open on an error)."""
    run = _run_or_404(session, run_id)
    error = None
    try:
        update_run_text(session, run, name, notes)
    except RunListError as exc:
        error = str(exc)
    row = run_rows(session, [run])[0]
    context = {"row": row, "edit_error": error, "edit_name": name, "edit_notes": notes}
    return templates.TemplateResponse(request, "_runs_row.html", context)


@router.post("/runs/{run_id}/delete", response_class=HTMLResponse)
def delete_from_list(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep, run_id: int,
    confirm: Annotated[str, Form()] = "",
    status_filter: Annotated[str, Form(alias="status")] = "",
    q: Annotated[str, Form()] = "",
) -> Response:
    """Delete a run from the list; answers with the table (as filtered) saying what was deleted, or why not."""
    message = action_error = None
    run = session.get(Run, run_id)
    if run is None:
        action_error = f"there is no run {run_id} (already deleted?)"
    else:
        try:
            deleted = delete_run(session, settings, run, confirm)
            message = deleted
        except RunListError as exc:
            action_error = str(exc)
    try:
        run_filter = parse_filter(status_filter, q)
    except RunListError:
        run_filter = RunFilter()
    context = table_context(session, run_filter, message=message, action_error=action_error)
    return templates.TemplateResponse(request, "_runs_table.html", context)
