"""When the database cannot be written: what kind of failure it is, the sentence that says so, the back-off
before the next try, and how a training worker that gave up ends.

Both sides use it: the app (the supervisor's loop, the 503 answer, the banner) and the workers
(worker/reporting.py keeps what it could not write and retries). Standard library only: a worker imports
it without SQLAlchemy.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from app.contract.status import RunStatus

# A training worker that could not write to the database for the set time (Settings.db_unwritable_limit_s)
# saves its adapter and exits with this code (sysexits' EX_TEMPFAIL); its last line of output is the reason.
EXIT_DB_UNWRITABLE = 75
GAVE_UP = "the database could not be written for "
UNWRITABLE = "the database cannot be written"

# SQLite's primary result codes (an extended code's low byte) that mean "this write cannot happen now".
KINDS: dict[int, str] = {
    sqlite3.SQLITE_READONLY: "read-only",
    sqlite3.SQLITE_FULL: "disk full",
    sqlite3.SQLITE_BUSY: "locked",
    sqlite3.SQLITE_LOCKED: "locked",
    sqlite3.SQLITE_IOERR: "the file system refused the write",
    sqlite3.SQLITE_CANTOPEN: "it cannot be opened",
}
MESSAGES: dict[str, str] = {  # the same, by message, for an error that carries no code
    "readonly database": "read-only",
    "disk is full": "disk full",
    "database is locked": "locked",
    "disk i/o error": "the file system refused the write",
    "unable to open database": "it cannot be opened",
}


@dataclass(frozen=True)
class WriteFailure:
    """A write the database refused: which database, what kind of failure, SQLite's own message."""

    path: str
    kind: str
    message: str

    def sentence(self) -> str:
        return f"the database {self.path} cannot be written ({self.kind}): {self.message}"


def sqlite_error(exc: BaseException) -> sqlite3.Error | None:
    """The sqlite3 error itself, also when SQLAlchemy wrapped it (its `orig`)."""
    inner = getattr(exc, "orig", exc)
    return inner if isinstance(inner, sqlite3.Error) else None


def failure_kind(exc: BaseException) -> str | None:
    """The kind of write failure (read-only, disk full, locked, ...) of a database error; None for any other."""
    error = sqlite_error(exc)
    if error is None:
        return None
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in KINDS:
        return KINDS[code & 0xFF]
    text = str(error).lower()
    return next((kind for words, kind in MESSAGES.items() if words in text), None)


def write_failure(path: Path | str, exc: BaseException) -> WriteFailure | None:
    """The failure as the 503 answer and the banner tell it; None when exc is not a write failure."""
    kind = failure_kind(exc)
    if kind is None:
        return None
    error = sqlite_error(exc)
    return WriteFailure(str(path), kind, str(error if error is not None else exc))


@dataclass
class Outage:
    """A spell of failed tries: when it began, the back-off before the next try (doubling up to max_delay_s),
    and whether a failure is new, so that a loop logs each failure once, not at every try while it lasts.
    A failure is known by its key: UNWRITABLE for any refused write (a read-only file fails as an I/O error on
    one connection and as "readonly database" on the next), else its type and message."""

    first_delay_s: float = 0.5
    max_delay_s: float = 10.0
    since: float | None = None  # monotonic time of the first failure of the spell
    key: str | None = None  # the last failure's key
    delay_s: float = 0.0
    tries: int = 0

    def failed(self, key: str, now: float) -> bool:
        """Record a failed try at `now`; True when its key differs from the last one's (log it)."""
        new = key != self.key
        if self.since is None:
            self.since = now
        self.key = key
        self.tries += 1
        self.delay_s = min(self.max_delay_s, self.delay_s * 2 if self.delay_s else self.first_delay_s)
        return new

    def succeeded(self) -> bool:
        """A try worked: the spell is over. True when there was one (say so once)."""
        was = self.since is not None
        self.since, self.key, self.delay_s, self.tries = None, None, 0.0, 0
        return was

    def lasted_s(self, now: float) -> float:
        return 0.0 if self.since is None else now - self.since


def failure_key(exc: BaseException) -> str:
    """What Outage tells failures apart by."""
    return UNWRITABLE if failure_kind(exc) is not None else f"{type(exc).__name__}: {exc}"


def duration_words(seconds: float) -> str:
    """600 -> "10 minutes", 90 -> "90 seconds", 3600 -> "1 hour"."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'' if count == 1 else 's'}"
    count_s = f"{seconds:g}"
    return f"{count_s} second{'' if count_s == '1' else 's'}"


def gave_up_reason(limit_s: float, iteration: int | None) -> str:
    """What a training worker that gave up says, and what its run records as its error."""
    saved = f"; the adapter was saved at iteration {iteration:,}" if iteration is not None else ""
    return f"{GAVE_UP}{duration_words(limit_s)}{saved}"


def gone_worker_end(exit_code: int | None, log_tail: str) -> tuple[RunStatus, str]:
    """(status, error) of a run whose worker ended without recording its end. One that gave up on an unwritable
    database (its exit code, or, when the app restarted meanwhile, its last words in the log) failed, with its
    reason; any other was interrupted."""
    said = [line.strip() for line in log_tail.splitlines() if line.strip().startswith(GAVE_UP)]
    if exit_code == EXIT_DB_UNWRITABLE or (exit_code is None and said):
        return RunStatus.failed, said[-1] if said else f"{GAVE_UP}too long; the worker saved its adapter and ended"
    code = f" (exit code {exit_code})" if exit_code is not None else ""
    return RunStatus.interrupted, f"the worker process ended without reporting{code}"
