"""Where a run's files live and their fingerprint, and which folders a path given over HTTP may point into."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from app.contract.allowed_folders import folder_of, stored_roots
from app.contract.confinement import PathNotAllowed, confine_file, confine_tree
from app.contract.settings import Settings


def run_dir(settings: Settings, run_id: int) -> Path:
    return settings.adapters_dir / f"run-{run_id:04d}"


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks (a checkpoint's fingerprint)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_files(settings: Settings, run_id: int, iteration: int) -> tuple[Path, Path]:
    """(adapter weights, optimizer state) of one checkpoint."""
    folder = run_dir(settings, run_id)
    return folder / f"{iteration:07d}_adapters.safetensors", folder / f"{iteration:07d}_optimizer.safetensors"


def checkpoint_adapter_dir(settings: Settings, run_id: int, iteration: int) -> Path:
    """The folder `--adapter-path` takes for one checkpoint: adapter_config.json and that checkpoint's weights
    as adapters.safetensors, which is what mlx_lm reads (see ensure_checkpoint_adapter_dir)."""
    return run_dir(settings, run_id) / "checkpoints" / f"{iteration:07d}"


def ensure_checkpoint_adapter_dir(settings: Settings, run_id: int, iteration: int) -> Path:
    """Make checkpoint_adapter_dir once: the weights hard-linked (copied where links are refused), written under
    a temporary name and renamed, so the folder is whole or absent. FileNotFoundError: the checkpoint is gone."""
    folder = checkpoint_adapter_dir(settings, run_id, iteration)
    weights, _ = checkpoint_files(settings, run_id, iteration)
    config = run_dir(settings, run_id) / "adapter_config.json"
    if (folder / "adapters.safetensors").exists():
        return folder
    for needed in (weights, config):
        if not needed.exists():
            raise FileNotFoundError(2, "checkpoint file is missing", str(needed))
    temp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    try:
        shutil.copyfile(config, temp / "adapter_config.json")
        try:
            os.link(weights, temp / "adapters.safetensors")
        except OSError:
            shutil.copyfile(weights, temp / "adapters.safetensors")
        try:
            temp.rename(folder)
        except OSError:  # made meanwhile by another process: theirs is whole
            if not (folder / "adapters.safetensors").exists():
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return folder


# Confinement: the folders a path given over HTTP may point into -----------------------------------------

ALL_DIRS_SETTING = "LORABOARD_ALLOWED_DIRS"
DATA_DIRS_SETTING = "LORABOARD_ALLOWED_DATA_DIRS (or LORABOARD_ALLOWED_DIRS)"
MODEL_DIRS_SETTING = "LORABOARD_ALLOWED_MODEL_DIRS (or LORABOARD_ALLOWED_DIRS)"


def split_dirs(text: str) -> list[Path]:
    """Folders of an allow-list setting, separated by os.pathsep (':' on Linux and macOS)."""
    return [Path(part).expanduser() for part in text.split(os.pathsep) if part.strip()]


def data_roots(settings: Settings) -> list[Path]:
    """Folders a dataset may live in: data_dir, the datasets folder, the allow-listed ones and those the user
    allowed from the pages (read now)."""
    return [settings.data_dir, settings.local_datasets_dir, *split_dirs(settings.allowed_data_dirs),
            *split_dirs(settings.allowed_dirs), *stored_roots(settings.database_path)]


def hf_hub_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The Hugging Face hub cache, found the way huggingface_hub finds it."""
    env = os.environ if environ is None else environ
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(name):
            return Path(env[name]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    cache = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return cache / "huggingface" / "hub"


def model_roots(settings: Settings, environ: Mapping[str, str] | None = None) -> list[Path]:
    """Folders a model may live in: data_dir, the models folder, the Hugging Face cache, the allow-listed ones."""
    return [settings.data_dir, settings.local_models_dir, hf_hub_cache_dir(environ),
            *split_dirs(settings.allowed_model_dirs), *split_dirs(settings.allowed_dirs),
            *stored_roots(settings.database_path)]


def run_file_roots(settings: Settings) -> list[Path]:
    """Folders a run's files may lead into: the adapters folder, and the folders an import may link from (a run
    imported with links holds links to its adapter folder)."""
    return [settings.adapters_dir, settings.data_dir, *split_dirs(settings.allowed_dirs),
            *split_dirs(settings.allowed_data_dirs), *split_dirs(settings.allowed_model_dirs),
            *stored_roots(settings.database_path)]


def confine(path: str | Path, roots: Sequence[Path], what: str = "path", setting: str = ALL_DIRS_SETTING) -> Path:
    """`path` resolved (links followed) when it lies inside one of `roots`; else PathNotAllowed naming the rule.

    Rules, in order: absolute (after ~), no '..' part, and the resolved path inside a resolved root.
    A path that does not exist yet is judged by where it would be; a link is judged by its target.
    """
    text = str(path).strip()
    if not text:
        raise PathNotAllowed(f"{what} is empty: give an absolute path")
    if "\x00" in text:
        raise PathNotAllowed(f"{what} must not contain a NUL character")
    given = Path(text).expanduser()
    if not given.is_absolute():
        raise PathNotAllowed(f"{what} must be an absolute path, got {text!r}")
    if ".." in given.parts:
        raise PathNotAllowed(f"{what} must not contain '..' (a path is taken as written), got {text!r}")
    resolved = given.resolve()
    allowed = [root.expanduser().resolve() for root in roots]
    if any(resolved.is_relative_to(root) for root in allowed):
        return resolved
    folders = ", ".join(str(root) for root in dict.fromkeys(allowed))
    if any(given.is_relative_to(root) for root in allowed):
        raise PathNotAllowed(f"{what} {given} is a link to {resolved}, outside the folders loraboard reads "
                             f"({folders}); links out of these folders are refused")
    raise PathNotAllowed(f"{what} {given} is outside the folders loraboard reads (the Datasets page lists them): "
                         f"allow {folder_of(given)} with Allow this folder (there, or POST /api/allowed-folders), or "
                         f"add it to {setting} before the server starts")


# Files handed to mlx-lm and transformers by path (worker) ------------------------------------------------
# They open the files themselves, so the check comes just before the path is handed over; a link swapped in
# between the check and their own open is followed (the window app/contract/confinement.py describes).

SPLIT_FILES = ("train.jsonl", "valid.jsonl", "test.jsonl")


def confine_data_files(data: str | Path, settings: Settings) -> None:
    """Every split file of a data folder lies, links resolved, in the data folders; else PathNotAllowed, e.g.
    "train.jsonl in /tmp/x links to /etc/passwd, outside the folders loraboard reads (…); …"."""
    for name in SPLIT_FILES:
        path = Path(data) / name
        if os.path.lexists(path):
            confine_file(path, data_roots(settings))


def confine_model_files(model: str | Path, settings: Settings) -> None:
    """A local model folder and every file in it lie, links resolved, in the model folders; else PathNotAllowed
    naming the first that links out. A hub id (not a folder) is left to the hub cache."""
    folder = Path(model)
    if folder.is_dir():
        confine_tree(folder, model_roots(settings))


# Temporary files a worker writes before renaming them into place (worker/durable.py): `.<name>.tmp…`.
TEMP_GLOB = ".*.tmp*"


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete the leftover temporary files in one run folder (a worker killed mid-write); returns them."""
    removed = []
    for path in sorted(folder.glob(TEMP_GLOB)):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
