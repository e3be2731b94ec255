"""Writing a model folder whole or not at all, and registering it (shared by the fuse and quantize jobs).

The folder is written as `<models_dir>/.<name>.tmp<pid>` and renamed to `<models_dir>/<name>` when complete; on a
failure or a cancel the temporary folder is removed. The RegisteredModel row is inserted after the rename.
"""

from __future__ import annotations

import os
import resource
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from worker.job import JobInputError
from worker.reporting import connect, now_text, write_until


def temp_folder(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.tmp{os.getpid()}")


def check_free(db_path: Path, dest: Path) -> None:
    """The name must still be free (a folder or a registered row may have appeared since the request)."""
    if dest.exists():
        raise JobInputError(f"{dest} already exists (made after this job was asked for); choose another name")
    conn = connect(db_path)
    try:
        row = conn.execute("SELECT id FROM registered_model WHERE name = ?", (dest.name,)).fetchone()
    finally:
        conn.close()
    if row is not None:
        raise JobInputError(f"a registered model is already named {dest.name!r}; choose another name")


@contextmanager
def writing(dest: Path, *, create: bool = True) -> Iterator[Path]:
    """Yield the temporary folder to write into; rename it to `dest` when the block ends well, else remove it.

    create=False leaves the folder to the writer (mlx_lm's convert refuses an existing path)."""
    temp = temp_folder(dest)
    shutil.rmtree(temp, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if create:
        temp.mkdir()
    try:
        yield temp
        if dest.exists():
            raise JobInputError(f"{dest} appeared while this job was writing; choose another name")
        temp.rename(dest)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def register(db_path: Path, fields: dict[str, Any], limit_s: float) -> int:
    """Insert the RegisteredModel row, tried again while the database refuses writes for up to limit_s
    (Settings.db_unwritable_limit_s); the folder is removed again when the name is taken."""
    columns = ["name", "path", "origin", "source_model", "run_id", "iteration", "job_id", "bits", "group_size",
               "dequantized", "size_bytes", "created_at"]
    values = {**{column: None for column in columns}, "dequantized": False, "created_at": now_text(), **fields}
    inserted: list[int] = []

    def insert(conn: sqlite3.Connection) -> None:
        cursor = conn.execute(
            "INSERT INTO registered_model (name, path, origin, source_model, run_id, iteration, job_id, bits,"
            " group_size, dequantized, size_bytes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [values[column] for column in columns])
        inserted.append(int(cursor.lastrowid or 0))

    try:
        write_until(db_path, insert, limit_s)
    except sqlite3.IntegrityError as exc:
        if "registered_model.name" not in str(exc):  # not the name taken: a fault of this job, said as it is
            raise
        shutil.rmtree(str(values["path"]), ignore_errors=True)
        raise JobInputError(f"a registered model is already named {values['name']!r}; choose another name") from None
    return inserted[-1]


def peak_memory() -> dict[str, int]:
    """Peak memory of this process: MLX's allocator peak and the resident set's high-water mark."""
    import mlx.core as mx

    return {"mlx_peak_bytes": int(mx.get_peak_memory()),
            "rss_peak_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}
