"""Allowed folders (JSON, under /api): the folders datasets and models may be read from besides loraboard's own,
added and removed while the server runs (Allow this folder)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel, ConfigDict, Field

from app.datasets.allowed_folders import FolderRefused, add_folder, folder_json, list_folders, remove_folder
from app.deps import SessionDep
from app.routes.params import FolderId, problems

router = APIRouter(prefix="/api", tags=["datasets"])


class FolderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(max_length=4096, description="an existing folder's absolute path; not /, the home folder "
                                                   "itself or a system folder")


@router.get("/allowed-folders")
def get_allowed_folders(session: SessionDep) -> list[dict[str, Any]]:
    """The folders allowed so far, oldest first (the LORABOARD_ALLOWED_* settings' folders are not listed)."""
    return [folder_json(folder) for folder in list_folders(session)]


@router.post("/allowed-folders", status_code=status.HTTP_201_CREATED, responses=problems(422))
def post_allowed_folder(body: FolderRequest, session: SessionDep, response: Response) -> dict[str, Any]:
    """Allow a folder: datasets and models in it may be used at once (201; 200 when it was already allowed)."""
    try:
        folder, new = add_folder(session, body.path)
    except FolderRefused as exc:
        raise HTTPException(422, detail=[{"loc": ["body", "path"], "msg": str(exc), "type": "value_error"}]) from None
    if not new:
        response.status_code = status.HTTP_200_OK
    return folder_json(folder)


@router.delete("/allowed-folders/{folder_id}", responses=problems(404, 422))
def delete_allowed_folder(folder_id: FolderId, session: SessionDep) -> dict[str, Any]:
    """No longer allow a folder: paths in it are refused from now on (a run already training keeps its data)."""
    folder = remove_folder(session, folder_id)
    if folder is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no allowed folder with id {folder_id}")
    return {"deleted": folder_id, "path": folder.path}
