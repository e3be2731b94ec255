"""Files a worker writes that must never be seen half-written.

Every checkpoint file goes through `write_safetensors`: the arrays are written to a
temporary name in the same folder (`.<name>.tmp.safetensors`, the pattern
app.contract.paths.TEMP_GLOB matches), flushed to disk with fsync, renamed over the final name
with os.replace (atomic on one filesystem), and the folder is fsynced so the rename
itself survives a power cut. Only then does the worker queue the checkpoint's database
row, so a listed checkpoint is always a complete file whose sha256 is the one recorded.
A worker killed mid-write leaves at most a temporary file, which nothing lists and the
next server or worker start removes (app.contract.paths.remove_temp_files).

Fault injection for tests: LORABOARD_TEST_SLOW_SAVE_S (seconds, default 0) makes the
worker wait that long between writing a temporary file and renaming it, so a test can
kill the worker while the temporary file exists. Nothing else reads it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from pathlib import Path

import mlx.core as mx

SLOW_SAVE_ENV = "LORABOARD_TEST_SLOW_SAVE_S"
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(OSError):
    """No room left for a checkpoint: the message names the folder, what was needed and what was free."""


def temp_path(path: Path) -> Path:
    """The temporary name a file is written under before it takes its own name."""
    if path.suffix == ".safetensors":  # mlx appends .safetensors to a name without it
        return path.with_name(f".{path.stem}.tmp.safetensors")
    return path.with_name(f".{path.name}.tmp")


def _slow_save_s() -> float:
    try:
        return max(0.0, float(os.environ.get(SLOW_SAVE_ENV, "0") or 0))
    except ValueError:
        return 0.0


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory; the rename still happened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def disk_full_error(folder: Path, needed: int, what: str) -> DiskFullError:
    free = shutil.disk_usage(folder).free
    return DiskFullError(
        f"the disk is full: {what} ({needed / 1e6:,.2f} MB) could not be written to {folder} "
        f"({free / 1e6:,.2f} MB free without it); the checkpoints saved before it are intact",
    )


def _looks_full(exc: BaseException, folder: Path, needed: int) -> bool:
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    try:  # mlx reports a short write as a RuntimeError without an errno: judge by the room left
        return shutil.disk_usage(folder).free < needed
    except OSError:
        return False


def publish(tmp: Path, path: Path) -> None:
    """fsync the finished temporary file, rename it to its name, fsync the folder."""
    _fsync_file(tmp)
    delay = _slow_save_s()
    if delay:
        time.sleep(delay)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_safetensors(arrays: dict[str, mx.array], path: Path, what: str) -> None:
    """Write `arrays` to `path` so that `path` is either absent, the previous file, or complete.

    what: how a failure names the file ("checkpoint 40's adapter weights").
    """
    tmp = temp_path(path)
    needed = sum(a.nbytes for a in arrays.values()) + 64 * len(arrays) + 8
    try:
        mx.save_safetensors(str(tmp), arrays)
        publish(tmp, path)
    except BaseException as exc:
        full = not isinstance(exc, KeyboardInterrupt) and _looks_full(exc, path.parent, needed)  # before unlinking
        tmp.unlink(missing_ok=True)
        if full:
            raise disk_full_error(path.parent, needed, what) from exc
        raise


def write_text(text: str, path: Path) -> None:
    """A small text file (adapter_config.json), written the same way."""
    tmp = temp_path(path)
    data = text.encode()
    try:
        tmp.write_bytes(data)
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        full = _looks_full(exc, path.parent, len(data))
        tmp.unlink(missing_ok=True)
        if full:
            raise disk_full_error(path.parent, len(data), path.name) from exc
        raise
