"""The models folder and the RegisteredModel rows: what each model folder is, where it came from, and the
terminal command that makes the same folder.

A row is written by the fuse and quantize workers when their folder is whole; a folder converted from a GGUF
(worker/smollm2.py) says where it came from in its ORIGIN_FILE instead; a folder placed under the models folder by
hand has neither ("local folder").
"""

from __future__ import annotations

import re
import shlex
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from app.catalog.files import converted_origin, folder_size
from app.contract.pids import pid_alive
from app.contract.settings import Settings
from app.tables import RegisteredModel

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")  # \Z: "$" would let a final newline in
TEMP = re.compile(r"^\..+\.tmp(?P<pid>\d+)$")  # a fuse or quantize job's folder before its rename
NAME_RULE = "1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit"


def registered(session: Session) -> list[RegisteredModel]:
    return list(session.exec(select(RegisteredModel).order_by(col(RegisteredModel.id))).all())


def by_name(session: Session, name: str) -> RegisteredModel | None:
    return session.exec(select(RegisteredModel).where(RegisteredModel.name == name)).first()


def short_model(model: str) -> str:
    """A model's name for words: a folder's last part, a hub id as is."""
    path = Path(model)
    return path.name if path.is_absolute() else model


def origin_text(row: RegisteredModel) -> str:
    """Where a registered model came from, in words: "fused from run 3 @ 40", "4-bit of tiny-mistral"."""
    if row.origin == "fused":
        text = f"fused from run {row.run_id} @ {row.iteration}"
        if row.dequantized:
            text += ", dequantized"
        elif row.bits:
            text += f", {row.bits}-bit"
        return text
    if row.origin == "quantized":
        return f"{row.bits}-bit of {short_model(row.source_model)} (group {row.group_size})"
    return row.origin


def origins(session: Session) -> dict[str, str]:
    """Resolved folder -> origin words, for the model picker (app.catalog.info.model_choices)."""
    return {str(Path(row.path).resolve()): origin_text(row) for row in registered(session)}


def made_by_command(row: RegisteredModel, adapter_dir: Path | None) -> str:
    """The terminal command that writes the same folder."""
    path = shlex.quote(row.path)
    source = shlex.quote(row.source_model)
    if row.origin == "fused":
        adapter = shlex.quote(str(adapter_dir)) if adapter_dir is not None else "<checkpoint folder>"
        command = f"python -m mlx_lm fuse --model {source} --adapter-path {adapter} --save-path {path}"
        return command + (" --dequantize" if row.dequantized else "")
    if row.origin == "quantized":
        return (f"python -m mlx_lm convert --hf-path {source} --mlx-path {path} -q --q-bits {row.bits} "
                f"--q-group-size {row.group_size}")
    return ""


def name_taken(session: Session, settings: Settings, name: str) -> str | None:
    """Why `name` cannot be used for a new model folder (None: it is free)."""
    folder = settings.local_models_dir / name
    if by_name(session, name) is not None:
        return f"a registered model is already named {name!r}; choose another name"
    if folder.exists():
        return f"{folder} already exists; choose another name"
    return None


def model_folders(session: Session, settings: Settings) -> list[dict[str, Any]]:
    """Every model folder under the models folder (one level of org/name nesting), with its row when it has one."""
    from app.contract.paths import (
        checkpoint_adapter_dir,  # app.contract.paths imports app.catalog; keep this module light
    )

    rows = {str(Path(row.path).resolve()): row for row in registered(session)}
    root = settings.local_models_dir
    found: list[dict[str, Any]] = []
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        children = []
    for child in children:
        candidates = [child] if (child / "config.json").is_file() else sorted(
            p for p in child.iterdir() if p.is_dir() and (p / "config.json").is_file())
        for folder in candidates:
            row = rows.get(str(folder.resolve()))
            adapter = (checkpoint_adapter_dir(settings, row.run_id, row.iteration)
                       if row is not None and row.run_id is not None and row.iteration is not None else None)
            found.append({
                "name": folder.relative_to(root).as_posix(), "path": str(folder.resolve()), "row": row,
                "origin": origin_text(row) if row is not None else converted_origin(folder) or "local folder",
                "size_bytes": row.size_bytes if row is not None and row.size_bytes else folder_size(folder),
                "created": row.created_at if row is not None else datetime.fromtimestamp(folder.stat().st_mtime, UTC),
                "command": made_by_command(row, adapter) if row is not None else "",
            })
    return found


def row_json(row: RegisteredModel) -> dict[str, Any]:
    return {**row.model_dump(mode="json"), "origin_text": origin_text(row)}


    return True


def remove_leftover_model_temps(settings: Settings) -> list[Path]:
    """Delete `.<name>.tmp<pid>` folders in the models folder whose writer is gone (a job killed mid-write)."""
    removed: list[Path] = []
    try:
        entries = list(settings.local_models_dir.iterdir())
    except OSError:
        return removed
    for path in sorted(entries):
        match = TEMP.match(path.name)
        if match and path.is_dir() and not pid_alive(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
