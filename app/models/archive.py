"""A model folder as a .tar stream: each file's header, its bytes in 1 MiB blocks, its padding, then the end
marker. Nothing is held in memory beyond one block, so a 14 GB model streams like a small one. Each file is
read from one handle opened within the folders models may be read from (app/contract/confinement.open_confined)."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from app.contract.confinement import open_confined

BLOCK = 1 << 20
RECORD = tarfile.BLOCKSIZE  # 512: every member is padded to it


def archive_files(folder: Path) -> list[Path]:
    """Regular files under the folder (links followed), in a stable order."""
    return sorted(path for path in folder.rglob("*") if path.is_file())


def stream_tar(folder: Path, arcname: str, roots: Sequence[Path] | None = None) -> Iterator[bytes]:
    """The folder as an uncompressed POSIX tar whose members sit under `arcname/`; a file leading out of `roots`
    (None: the folder itself) ends the stream with PathNotAllowed before any of it is sent."""
    for path in archive_files(folder):
        with open_confined(path, [folder] if roots is None else roots) as handle:
            stat = os.fstat(handle.fileno())
            info = tarfile.TarInfo(f"{arcname}/{path.relative_to(folder).as_posix()}")
            info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
            yield info.tobuf(format=tarfile.PAX_FORMAT)
            sent = 0
            while sent < info.size and (block := handle.read(min(BLOCK, info.size - sent))):
                sent += len(block)
                yield block
        if sent < info.size:  # shrank while being read: keep the archive readable
            yield b"\0" * (info.size - sent)
        if info.size % RECORD:
            yield b"\0" * (RECORD - info.size % RECORD)
    yield b"\0" * (2 * RECORD)
