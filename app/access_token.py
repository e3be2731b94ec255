"""The access token a dashboard requires by default, on loopback too: any local account can reach a loopback port.
Made once by `loraboard serve`, kept in `<data dir>/token` (mode 0600, readable by this account alone) and reused
across restarts; the `loraboard` command and scripts of the same account read it from there. LORABOARD_TOKEN and
`--token` still set it, and `--no-token` turns it off.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

from app.security import TOKEN_PATTERN

TOKEN_FILE = "token"


class TokenFileError(ValueError):
    """A token file that cannot be used; the message says which file and what to do."""


def token_path(data_dir: Path) -> Path:
    return data_dir / TOKEN_FILE


def read_token(path: Path) -> str | None:
    """The token kept in `path`; None when there is none yet. TokenFileError when the file holds something else."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"{path} cannot be read ({exc}): delete it and start loraboard again") from None
    if not TOKEN_PATTERN.fullmatch(text):
        raise TokenFileError(f"{path} does not hold an access token (16 or more letters, digits, '.', '_', '~' or "
                             "'-'): delete it and start loraboard again")
    return text


def ensure_token(path: Path) -> str:
    """The token kept in `path`, made when there is none. A new one is written whole to a temporary file (mode
    0600) and linked into place, so two servers starting at once end up with one token; a file others may read is
    made this account's alone."""
    existing = read_token(path)
    if existing is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".token-")  # created with mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(secrets.token_urlsafe(24) + "\n")
            with contextlib.suppress(FileExistsError):  # another server made it first: theirs stands
                os.link(temp, path)
        finally:
            os.unlink(temp)
        existing = read_token(path)
        assert existing is not None
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return existing
