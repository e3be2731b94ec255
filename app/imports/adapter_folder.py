"""An adapter folder written by `mlx_lm lora --train`: its config, its checkpoints and its final adapter.

mlx_lm writes `adapter_config.json` (its parsed arguments), `{iteration:07d}_adapters.safetensors` at every
`save_every` steps and `adapters.safetensors` (the latest weights: overwritten at each save and at the end).
Every file is opened once through app/contract/confinement.open_confined, within `roots` (the folders an import may read
from): a file linking out of them is an ImportProblem naming it, and nothing of it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import json_text
from app.contract.confinement import PathNotAllowed, open_confined

CONFIG_FILE = "adapter_config.json"
IMPORTED_BACKEND = "mlx_lm CLI (imported)"  # the backend an imported run names
FINAL_FILE = "adapters.safetensors"
NUMBERED = re.compile(r"^(\d{7,})_adapters\.safetensors\Z")


class ImportProblem(ValueError):
    """An adapter folder or log that cannot be imported; the message names the file and what is wrong."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class AdapterFile:
    iteration: int
    path: Path
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class AdapterFolder:
    folder: Path
    config: dict[str, Any]  # adapter_config.json as written
    checkpoints: list[AdapterFile]  # numbered files, by iteration
    final: AdapterFile | None  # adapters.safetensors, its iteration still to be decided (0 here)


def open_file(path: Path, roots: Sequence[Path] | None) -> Any:
    """open_confined within `roots` (None: the file's folder); a link out of them is an ImportProblem."""
    try:
        return open_confined(path, [path.parent] if roots is None else roots)
    except PathNotAllowed as exc:
        raise ImportProblem(str(exc)) from None


def _adapter_file(path: Path, iteration: int, roots: Sequence[Path] | None = None) -> AdapterFile:
    """Size and sha256 of one adapter file, read from one confined handle."""
    digest = hashlib.sha256()
    with open_file(path, roots) as handle:
        size = os.fstat(handle.fileno()).st_size
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return AdapterFile(iteration, path, size, digest.hexdigest())


def read_config(folder: Path, roots: Sequence[Path] | None = None) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    try:
        with open_file(path, [folder] if roots is None else roots) as handle:
            raw = handle.read()
    except OSError:
        raise ImportProblem(f"{path} does not exist: an mlx_lm adapter folder holds {CONFIG_FILE} "
                            "(mlx_lm lora --train writes it first)") from None
    try:
        data = json_text.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ImportProblem(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ImportProblem(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if not isinstance(data, dict):
        raise ImportProblem(f"{path} holds a {type(data).__name__}, expected an object of mlx_lm lora options")
    return data


def read_folder(folder: Path, roots: Sequence[Path] | None = None) -> AdapterFolder:
    """The folder's config and adapter files (sizes and sha256 read now); an ImportProblem naming the file
    otherwise. `roots`: the folders its files may lead into, links resolved (None: the folder itself)."""
    if not folder.is_dir():
        raise ImportProblem(f"{folder} is not a folder: give the adapter folder mlx_lm lora wrote (--adapter-path)")
    allowed = [folder] if roots is None else roots
    config = read_config(folder, allowed)
    checkpoints = []
    for path in sorted(folder.iterdir()):
        found = NUMBERED.match(path.name)
        if found and (path.is_file() or path.is_symlink()):
            checkpoints.append(_adapter_file(path, int(found[1]), allowed))
    checkpoints.sort(key=lambda c: c.iteration)
    final_path = folder / FINAL_FILE
    final = _adapter_file(final_path, 0, allowed) if final_path.is_file() or final_path.is_symlink() else None
    if not checkpoints and final is None:
        raise ImportProblem(f"{folder} holds no adapter weights: neither {FINAL_FILE} nor "
                            "NNNNNNN_adapters.safetensors files")
    return AdapterFolder(folder, config, checkpoints, final)


def final_iteration(adapters: AdapterFolder, last_logged: int | None) -> int | None:
    """The iteration at which adapters.safetensors is registered, or None when a numbered file already holds it.

    mlx_lm overwrites adapters.safetensors at every save and at the end, so when it equals the latest numbered
    file it is that checkpoint. Otherwise it is the end of training: the log's last iteration, else the
    config's iters.
    """
    final = adapters.final
    if final is None:
        return None
    if adapters.checkpoints and adapters.checkpoints[-1].sha256 == final.sha256:
        return None
    iters = adapters.config.get("iters")
    end = last_logged if last_logged is not None else iters if isinstance(iters, int) and iters > 0 else None
    latest = adapters.checkpoints[-1].iteration if adapters.checkpoints else 0
    if end is None or end <= latest:
        end = latest + 1 if adapters.checkpoints else max(end or 0, 1)
    if any(c.iteration == end for c in adapters.checkpoints):
        return None
    return end


def cli_cwd(folder: Path, adapter_path: Any) -> Path | None:
    """Where mlx_lm ran, when its adapter_path was relative: the folder minus that path's parts."""
    if not isinstance(adapter_path, str) or not adapter_path.strip():
        return None
    given = Path(adapter_path)
    if given.is_absolute() or ".." in given.parts:
        return None
    parts = [p for p in given.parts if p != "."]
    if not parts or tuple(folder.parts[-len(parts):]) != tuple(parts):
        return None
    return Path(*folder.parts[:-len(parts)])


def resolve_relative(value: Any, folder: Path, cwd: Path | None) -> Any:
    """A relative model or data path of the config made absolute: against where mlx_lm ran when that is known,
    else the first of the folder's parents that holds it; kept as written when none does (a hub id)."""
    if not isinstance(value, str) or not value.strip() or Path(value).is_absolute():
        return value
    candidates = ([cwd] if cwd is not None else []) + list(folder.parents)
    for base in candidates:
        if (base / value).exists():
            return str((base / value).resolve())
    return value
