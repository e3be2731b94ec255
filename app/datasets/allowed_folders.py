"""The folders the user allowed from the pages or the API: listed, added (checked by the contract's rule) and
removed. The confinement of every path reads them at once (app/contract/allowed_folders.stored_roots)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from app.contract.allowed_folders import FolderRefused, folder_of, folder_to_allow
from app.contract.settings import Settings
from app.tables import AllowedFolder

__all__ = ["FolderRefused", "add_folder", "allow_offer", "folder_json", "folders_context", "list_folders",
           "remove_folder"]


def list_folders(session: Session) -> list[AllowedFolder]:
    return list(session.exec(select(AllowedFolder).order_by(col(AllowedFolder.id))).all())


def folder_json(folder: AllowedFolder) -> dict[str, Any]:
    return {"id": folder.id, "path": folder.path, "added_at": folder.added_at.isoformat()}


def add_folder(session: Session, path: str, home: Path | None = None) -> tuple[AllowedFolder, bool]:
    """(the row, whether it is new): the folder `path` names, allowed from now on; one already allowed is
    answered as it is. FolderRefused says why a folder cannot be allowed."""
    folder = str(folder_to_allow(path, home or Path.home()))
    existing = session.exec(select(AllowedFolder).where(AllowedFolder.path == folder)).first()
    if existing is not None:
        return existing, False
    row = AllowedFolder(path=folder)
    session.add(row)
    session.commit()
    session.refresh(row)
    return row, True


def remove_folder(session: Session, folder_id: int) -> AllowedFolder | None:
    """The folder no longer allowed (None: no such row). Runs already started keep what they read."""
    row = session.get(AllowedFolder, folder_id)
    if row is None:
        return None
    session.delete(row)
    session.commit()
    return row


def allow_offer(path: str, roots: Sequence[Path], home: Path | None = None) -> str | None:
    """The folder to offer beside a refusal of `path` (Allow this folder): the existing folder it names, or the one
    holding the file it names, when that lies outside `roots` and may be allowed; None otherwise."""
    text = str(path).strip()
    if not text or not Path(text).is_absolute() or not Path(text).expanduser().exists():
        return None
    try:
        folder = folder_to_allow(str(folder_of(text)), home or Path.home())
    except FolderRefused:
        return None
    if any(folder.is_relative_to(root.expanduser().resolve()) for root in roots):
        return None
    return str(folder)


def folders_context(session: Session, settings: Settings, **extra: Any) -> dict[str, Any]:
    """What the Datasets page's list (templates/_allowed_folders.html) shows."""
    own = [settings.data_dir, settings.local_datasets_dir, settings.local_models_dir]
    return {"allowed_folders": list_folders(session), "own_folders": own, "folder_error": None,
            "folder_value": "", "folder_message": None, **extra}
