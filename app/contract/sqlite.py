"""How every connection to loraboard's SQLite database is set up, by the app's engine and by the workers alike.

Standard library only: the app's engine applies these on each new connection (app/db.py), a worker on each of its
`sqlite3` connections (worker/reporting.connect).
"""

from __future__ import annotations

import sqlite3

# Seconds a connection waits for another one's write lock before SQLite reports "database is locked".
BUSY_TIMEOUT_S = 30
# Each connection's settings, in the order they are applied: write-ahead log (readers never block the one
# writer), synced at checkpoints rather than at every commit, the busy wait above, and foreign keys enforced.
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=30000",  # BUSY_TIMEOUT_S, in milliseconds
    "PRAGMA foreign_keys=ON",
)


def apply_pragmas(conn: sqlite3.Connection) -> None:
    """Give a fresh connection loraboard's settings (PRAGMAS); outside any transaction, as journal_mode needs."""
    cursor = conn.cursor()
    try:
        for pragma in PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()
