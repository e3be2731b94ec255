"""Allowed folders on pages: the Datasets page's list (allow one, remove one) and the Allow this folder button that
sits beside a refused path (the new-run form, the register form)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Form, Request, status
from fastapi.responses import HTMLResponse, Response

from app.datasets.allowed_folders import FolderRefused, add_folder, folders_context, remove_folder
from app.deps import SessionDep, SettingsDep, TemplatesDep
from app.routes.params import FolderId

router = APIRouter(include_in_schema=False)


def _partial(request: Request, templates: TemplatesDep, context: dict[str, Any], code: int = 200) -> Response:
    return templates.TemplateResponse(request, "_allowed_folders.html", context, status_code=code)


@router.get("/allowed-folders", response_class=HTMLResponse)
def allowed_folders(request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep) -> Response:
    """The list alone (the Datasets page asks for it again when a folder was allowed elsewhere on the page)."""
    return _partial(request, templates, folders_context(session, settings))


@router.post("/allowed-folders", response_class=HTMLResponse)
def allow_folder(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep, path: str = Form(""),
) -> Response:
    """Allow this folder: the list with it added, or the reason it cannot be (422)."""
    try:
        folder, new = add_folder(session, path)
    except FolderRefused as exc:
        context = folders_context(session, settings, folder_error=str(exc), folder_value=path)
        return _partial(request, templates, context, status.HTTP_422_UNPROCESSABLE_CONTENT)
    message = f"{folder.path} is allowed: its datasets and models may be used now." if new else \
        f"{folder.path} was already allowed."
    return _partial(request, templates, folders_context(session, settings, folder_message=message))


@router.post("/allowed-folders/{folder_id}/remove", response_class=HTMLResponse)
def remove_allowed_folder(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep, folder_id: FolderId,
) -> Response:
    """Remove: the list without it (paths in it are refused from now on)."""
    folder = remove_folder(session, folder_id)
    message = f"{folder.path} is no longer allowed." if folder else f"Allowed folder {folder_id} was already removed."
    return _partial(request, templates, folders_context(session, settings, folder_message=message))
