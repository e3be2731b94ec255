"""The database: WAL, and an older database is brought up to date without losing rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlmodel import Session

from app.db import add_missing_columns, make_engine
from app.tables import Run


def test_wal_and_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "lb.db")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_an_older_database_gains_the_new_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE run (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, status VARCHAR NOT NULL)")
        conn.execute("INSERT INTO run (name, status) VALUES ('from an older loraboard', 'completed')")
    engine = make_engine(path)
    with Session(engine) as session:
        run = session.get(Run, 1)
        assert run is not None and run.name == "from an older loraboard"
        assert (run.iteration, run.stop_requested, run.config_json, run.train_dtype) == (0, False, "{}", None)
        assert run.useful_token_share is None  # not counted before loraboard counted it
    assert add_missing_columns(engine) == []  # idempotent
