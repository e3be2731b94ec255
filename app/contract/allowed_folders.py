"""Folders the user allowed from the pages or the API (table `allowedfolder`): datasets and models may be read from
them as from the folders of the LORABOARD_ALLOWED_* settings, from the moment one is added, in the app and in every
worker, with no restart. What may never be allowed is decided here too.

Standard library only: the roots are read with `sqlite3` at each use (app/contract/paths.py), so a folder added or
removed a moment ago counts at once on both sides.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from app.contract.sqlite import BUSY_TIMEOUT_S

# What holds the system, never data: refused, and so is anything inside them.
SYSTEM_DIRS = ("/etc", "/proc", "/sys", "/dev", "/boot", "/usr", "/bin", "/sbin", "/lib", "/lib64")


class FolderRefused(ValueError):
    """A folder that cannot be allowed; the message is one sentence saying why."""


def stored_roots(database: Path) -> list[Path]:
    """The allowed folders in the database (none before it or its table exists)."""
    if not database.exists():
        return []
    try:
        uri = f"{database.resolve().as_uri()}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)) as conn:
            return [Path(row[0]) for row in conn.execute("SELECT path FROM allowedfolder ORDER BY id")]
    except sqlite3.Error:
        return []


def folder_to_allow(text: str, home: Path) -> Path:
    """The folder `text` names, resolved (links followed), when it may be allowed; else FolderRefused.

    It must be an existing folder given by an absolute path without '..'; it must not be the whole disk (/), the
    home folder itself (a folder inside it is fine) or a system folder (SYSTEM_DIRS, or anything inside one)."""
    text = text.strip()
    if not text or "\x00" in text:
        raise FolderRefused("give the folder's absolute path, e.g. /home/me/data")
    given = Path(text).expanduser()
    if not given.is_absolute() or ".." in given.parts:
        raise FolderRefused(f"{text!r} is not an absolute path without '..': give the folder's full path")
    folder = given.resolve()
    if not folder.is_dir():
        raise FolderRefused(f"{folder} is not a folder on this machine" if not folder.exists()
                            else f"{folder} is a file: allow the folder that holds it")
    if folder == Path(folder.anchor):
        raise FolderRefused("/ is the whole disk: allow the folder that holds your data or models")
    if folder == home.expanduser().resolve():
        raise FolderRefused(f"{folder} is your whole home folder: allow the folder inside it that holds your data")
    for system in SYSTEM_DIRS:
        root = Path(system).resolve()
        if folder == root or folder.is_relative_to(root):
            raise FolderRefused(f"{folder} is a system folder ({system}): loraboard never reads from it")
    return folder


def folder_of(path: str | Path) -> Path:
    """The folder a refused path offers to allow: the path itself when it is a folder, else the one holding it."""
    given = Path(str(path).strip()).expanduser()
    return given if given.is_dir() else given.parent
