"""Confinement of the files loraboard opens: a file of an allowed folder must lie, its links resolved, inside the
folders loraboard reads; a link out of them is refused with a sentence naming the file and where it leads.

No heavy imports (the worker uses this too). Where loraboard reads a file itself, `open_confined` opens it once
and judges the open handle: the path is resolved and checked, the resolved path is opened without following a
last link (O_NOFOLLOW), and the handle's own path (/proc/self/fd on Linux, F_GETPATH on macOS) is checked again,
so a file or a parent folder swapped for a link between the check and the open cannot lead out. Everything is
read from that handle.

Where another library opens files by path (mlx-lm and transformers in the worker), `confine_file` and
`confine_tree` check the resolved paths just before they are handed over. The window between that check and
the library's own open remains: a link swapped in within it is followed. Only someone who can already write
into an allowed folder can use it, and what is read goes into training, not into an answer.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

REFUSED = "links out of these folders are refused"


class PathNotAllowed(ValueError):
    """A path breaks a confinement rule; the message names the rule (and the setting, or the file and its link)."""


def allowed_folders(roots: Iterable[str | Path]) -> list[Path]:
    """The roots with their own links resolved, each once, in order."""
    return list(dict.fromkeys(Path(os.path.realpath(Path(root).expanduser())) for root in roots))


def is_inside(path: str | Path, folders: Sequence[Path]) -> bool:
    """Whether a resolved path lies in (or is) one of the resolved folders."""
    return any(Path(path).is_relative_to(folder) for folder in folders)


def unlinked_folder(folder: str | Path) -> list[Path]:
    """[folder] when no link leads to it (its path is its real path), else []: a folder the caller confined (or
    chose) itself, whose own files may be read while links out of it stay refused."""
    absolute = os.path.abspath(Path(folder).expanduser())
    return [Path(absolute)] if os.path.realpath(absolute) == absolute else []


def _label(path: Path, what: str) -> str:
    name = f"{path.name} in {path.parent}"
    return f"{what} {name}" if what else name


def _outside(path: Path, target: str | Path, folders: Sequence[Path], what: str, verb: str = "links to") -> str:
    listed = ", ".join(str(folder) for folder in folders)
    if Path(os.path.abspath(path)) == Path(target):  # no link on the way: the file itself is outside
        return f"{_label(path, what)} is outside the folders loraboard reads ({listed})"
    return f"{_label(path, what)} {verb} {target}, outside the folders loraboard reads ({listed}); {REFUSED}"


def confine_file(path: str | Path, roots: Iterable[str | Path], what: str = "") -> Path:
    """The file with its links resolved, when that lies inside one of `roots`; else PathNotAllowed, e.g.
    "train.jsonl in /tmp/x links to /etc/passwd, outside the folders loraboard reads (…); links out of these
    folders are refused". Whether the file exists is not looked at (a link out is refused either way)."""
    given = Path(path)
    folders = allowed_folders(roots)
    real = Path(os.path.realpath(given))
    if not is_inside(real, folders):
        raise PathNotAllowed(_outside(given, real, folders, what))
    return real


def confine_tree(folder: str | Path, roots: Iterable[str | Path], what: str = "") -> None:
    """Every file and folder under `folder` (links resolved, linked folders not entered) lies inside `roots`;
    else PathNotAllowed naming the first entry that links out. For a folder handed to a library by path."""
    folders = allowed_folders(roots)
    confine_file(folder, folders, what)
    for current, dirs, files in os.walk(folder):
        for name in sorted(dirs) + sorted(files):
            entry = Path(current) / name
            real = os.path.realpath(entry)
            if not is_inside(real, folders):
                raise PathNotAllowed(_outside(entry, real, folders, what))


def fd_path(fd: int) -> Path | None:
    """The path the kernel holds for an open file (Linux: /proc/self/fd, macOS: F_GETPATH), or None."""
    if sys.platform == "darwin":
        import fcntl

        try:
            raw = fcntl.fcntl(fd, fcntl.F_GETPATH, bytes(1024))  # type: ignore[attr-defined]
        except OSError:
            return None
        return Path(os.fsdecode(raw.split(b"\0", 1)[0]))
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return Path(target.removesuffix(" (deleted)"))


def open_confined(path: str | Path, roots: Iterable[str | Path], what: str = "") -> BinaryIO:
    """The file opened once for reading (binary), its links resolved and judged, and the open handle judged again.

    PathNotAllowed when the file, or what it turned into while being opened, lies outside `roots`;
    FileNotFoundError when it is absent; OSError (EISDIR, EINVAL) when it is a folder or not a regular file
    (a FIFO is never waited on).
    """
    given = Path(path)
    folders = allowed_folders(roots)
    real = confine_file(given, folders, what)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the resolved file became a link after the check
            raise PathNotAllowed(_outside(given, os.path.realpath(real), folders, what,
                                          "was changed into a link while loraboard opened it, leading to")) from None
        raise
    try:
        opened = os.fstat(fd)
        if stat.S_ISDIR(opened.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(given))
        if not stat.S_ISREG(opened.st_mode):
            raise OSError(errno.EINVAL, "is not a regular file", str(given))
        held = fd_path(fd)
        if held is None:  # no way to ask the kernel: the path must still resolve to this very file
            held = Path(os.path.realpath(real))
            now = os.stat(held)
            if (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
                raise PathNotAllowed(_outside(given, held, folders, what, "changed while loraboard opened it, to"))
        if not is_inside(held, folders):
            raise PathNotAllowed(_outside(given, held, folders, what,
                                          "was changed while loraboard opened it, leading to"))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_confined_text(path: str | Path, roots: Iterable[str | Path], what: str = "", encoding: str = "utf-8",
                       errors: str = "strict") -> str:
    """The whole text of a confined file (open_confined), read from the one handle."""
    with open_confined(path, roots, what) as handle:
        return handle.read().decode(encoding, errors)


def read_confined_bytes(path: str | Path, roots: Iterable[str | Path], what: str = "") -> bytes:
    """The whole content of a confined file (open_confined), read from the one handle."""
    with open_confined(path, roots, what) as handle:
        return handle.read()
