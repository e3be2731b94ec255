"""The runs list page, its table partial, the row actions (rename, notes, delete) and the queue's controls."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Header, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, Response

from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.routes.params import RunId
from app.runs.store.listing import (
    STATUS_FILTERS,
    RunFilter,
    RunListError,
    delete_run,
    filtered_runs,
    parse_filter,
    run_rows,
    update_run_text,
)
from app.runs.store.queue import QUEUE_MOVES, NotQueuedError, move_in_queue, queued_runs
from app.tables import Run

router = APIRouter(include_in_schema=False)
HxHeader = Annotated[str | None, Header()]


def table_context(session: SessionDep, run_filter: RunFilter, **extra: Any) -> dict[str, Any]:
    rows = run_rows(session, filtered_runs(session, run_filter))
    query = urlencode(run_filter.query())
    queue = queued_runs(session)
    return {
        "rows": rows,
        "queue": queue,
        "queue_places": {run.id: place for place, run in enumerate(queue, start=1)},
        "queue_message": None,
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
    request: Request, session: SessionDep, templates: TemplatesDep, run_id: RunId,
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


def _filter_from_form(status_filter: str, q: str) -> RunFilter:
    try:
        return parse_filter(status_filter, q)
    except RunListError:
        return RunFilter()


@router.post("/runs/{run_id}/delete", response_class=HTMLResponse)
def delete_from_list(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep, run_id: RunId,
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
    context = table_context(session, _filter_from_form(status_filter, q), message=message, action_error=action_error)
    return templates.TemplateResponse(request, "_runs_table.html", context)


@router.post("/runs/queue/cancel", response_class=HTMLResponse)
def cancel_queue_from_list(
    request: Request, session: SessionDep, supervisor: SupervisorDep, templates: TemplatesDep,
    status_filter: Annotated[str, Form(alias="status")] = "",
    q: Annotated[str, Form()] = "",
) -> Response:
    """Cancel every queued run; answers with the table saying how many were cancelled."""
    cancelled = supervisor.cancel_queued(session)
    noun = "run" if len(cancelled) == 1 else "runs"
    message = f"Cancelled {len(cancelled)} queued {noun}." if cancelled else "No run was queued any more."
    context = table_context(session, _filter_from_form(status_filter, q), queue_message=message)
    return templates.TemplateResponse(request, "_runs_table.html", context)


@router.post("/runs/{run_id}/queue", response_class=HTMLResponse)
def move_from_list(
    request: Request, session: SessionDep, supervisor: SupervisorDep, templates: TemplatesDep, run_id: RunId,
    position: Annotated[str, Form()],
    status_filter: Annotated[str, Form(alias="status")] = "",
    q: Annotated[str, Form()] = "",
) -> Response:
    """Move a queued run (top, up, down, bottom) or cancel it (position=cancel); answers with the table."""
    message = action_error = None
    run = session.get(Run, run_id)
    if run is None:
        action_error = f"there is no run {run_id} (deleted?)"
    elif position == "cancel":
        cancelled = supervisor.cancel_queued(session, [run_id])
        message = f"Cancelled queued run #{run_id}." if cancelled else None
        action_error = None if cancelled else f"run {run_id} is no longer queued: it has started or ended"
    elif position not in QUEUE_MOVES:
        action_error = f"unknown queue move {position!r}: expected one of {', '.join(QUEUE_MOVES)} or cancel"
    else:
        try:
            move_in_queue(session, run, position)
        except NotQueuedError as exc:
            action_error = str(exc)
    context = table_context(session, _filter_from_form(status_filter, q), queue_message=message,
                            action_error=action_error)
    return templates.TemplateResponse(request, "_runs_table.html", context)
