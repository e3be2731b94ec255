"""Ids people see are never handed out again after a delete: AUTOINCREMENT on a fresh database, and a database an
older loraboard made without it is rebuilt with every row, index and foreign key kept."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from conftest import InProcess
from sqlalchemy import MetaData, create_engine
from sqlmodel import Session, SQLModel

from app.db import make_engine
from app.id_upgrade import IdUpgradeError, autoincrement_tables, upgrade_ids
from app.tables import Run, utcnow

SHOWN = {"run", "job", "evaluation", "dataset", "registered_model", "promptset", "generation", "allowedfolder"}


def table_sql(path: Path, name: str) -> str:
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return str(row[0])


def schema_of(path: Path, kind: str) -> set[tuple[str, str]]:
    """(name, table) of every index or trigger (SQLite's own autoindexes included)."""
    with sqlite3.connect(path) as conn:
        return set(conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = ?", (kind,)).fetchall())


def older_database(path: Path) -> None:
    """The tables as loraboard made them before AUTOINCREMENT (same columns, indexes and keys), with rows."""
    old = MetaData()
    for table in SQLModel.metadata.sorted_tables:
        table.to_metadata(old).dialect_options["sqlite"]["autoincrement"] = False
    engine = create_engine(f"sqlite:///{path}")
    old.create_all(engine)
    engine.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA foreign_keys=ON")
        for n in range(1, 6):
            conn.execute("INSERT INTO run (id, name, status, config_json, created_at, stop_requested, iteration, "
                         "total_iters, deploy_best_on_end, notes) VALUES (?, ?, 'completed', '{}', '2024-01-01', 0, "
                         "0, 10, 0, '')", (n, f"old run {n}"))
        conn.execute("INSERT INTO job (id, kind, key, params_json, status, done, total, unit, run_id, "
                     "allow_while_training, created_at) VALUES (7, 'evaluate', '', '{}', 'completed', 1, 1, '', 3, 0, "
                     "'2024-01-01')")
        conn.execute("INSERT INTO trainreport (run_id, iteration, train_loss, learning_rate, iterations_per_second, "
                     "tokens_per_second, trained_tokens, peak_memory, recorded_at) VALUES (2, 5, 1.5, 0.001, 1, 1, 10, "
                     "0, '2024-01-01')")
        conn.execute("INSERT INTO promptset (id, run_id, name, prompts_json, settings_json, created_at) VALUES "
                     "(4, 3, 'kept', '[]', '{}', '2024-01-01')")
        conn.execute("INSERT INTO generation (id, model, request_json, status, prompt_set_id, created_at) VALUES "
                     "(9, 'm', '{}', 'completed', 4, '2024-01-01')")
        conn.execute("DELETE FROM run WHERE id = 5")
        assert "AUTOINCREMENT" not in table_sql(path, "run")


def rows(path: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(query).fetchall()


def test_the_tables_whose_ids_are_shown_never_reuse_them(tmp_path: Path) -> None:
    assert {table.name for table in autoincrement_tables()} == SHOWN
    path = tmp_path / "fresh.db"
    make_engine(path).dispose()
    for name in SHOWN:
        assert "AUTOINCREMENT" in table_sql(path, name), name


def test_an_older_database_is_rebuilt_keeping_rows_indexes_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    older_database(path)
    indexes = schema_of(path, "index")
    with sqlite3.connect(path) as conn:
        keys = {name: conn.execute("SELECT * FROM pragma_foreign_key_list(?)", (name,)).fetchall() for name in SHOWN}

    engine = make_engine(path)
    for name in SHOWN:
        assert "AUTOINCREMENT" in table_sql(path, name), name
    assert schema_of(path, "index") == indexes
    with sqlite3.connect(path) as conn:
        assert {name: conn.execute("SELECT * FROM pragma_foreign_key_list(?)", (name,)).fetchall()
                for name in SHOWN} == keys
    assert rows(path, "SELECT id, name FROM run ORDER BY id") == [(n, f"old run {n}") for n in range(1, 5)]
    assert rows(path, "SELECT id, run_id FROM job") == [(7, 3)]
    assert rows(path, "SELECT run_id, iteration FROM trainreport") == [(2, 5)]
    assert rows(path, "SELECT id, prompt_set_id FROM generation") == [(9, 4)]
    assert dict(rows(path, "SELECT name, seq FROM sqlite_sequence")) == {"run": 4, "job": 7, "promptset": 4,
                                                                         "generation": 9}
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # on again after the rebuild
    assert upgrade_ids(engine) == []  # done once
    engine.dispose()

    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("DELETE FROM run WHERE id = 4")  # the newest run goes...
        conn.execute("INSERT INTO run (name, status, config_json, created_at, stop_requested, iteration, total_iters,"
                     " deploy_best_on_end, notes) VALUES ('new', 'queued', '{}', '2024-01-02', 0, 0, 10, 0, '')")
        assert conn.execute("SELECT max(id) FROM run").fetchone()[0] == 5  # ...and its id is not given again
        conn.execute("DELETE FROM run WHERE id = 3")  # foreign keys still cascade to the rebuilt tables' rows
        assert conn.execute("SELECT count(*) FROM job").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM generation").fetchone()[0] == 0


def test_an_upgrade_that_fails_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    older_database(path)
    with sqlite3.connect(path) as conn:  # a row the rebuilt table refuses: the job's status check
        conn.execute("PRAGMA ignore_check_constraints=ON")
        conn.execute("UPDATE job SET status = 'from the future' WHERE id = 7")
    before = {name: table_sql(path, name) for name in SHOWN}
    engine = create_engine(f"sqlite:///{path}")
    with pytest.raises((sqlite3.IntegrityError, IdUpgradeError)):
        upgrade_ids(engine)
    engine.dispose()
    assert {name: table_sql(path, name) for name in SHOWN} == before
    assert rows(path, "SELECT id, status FROM job") == [(7, "from the future")]
    assert rows(path, "SELECT count(*) FROM sqlite_master WHERE name LIKE '_loraboard_new_%'") == [(0,)]


def test_a_deleted_run_id_is_never_handed_out_again(app_client: InProcess) -> None:
    with Session(app_client.engine) as session:  # a run training (this live process as its worker) holds the one
        blocker = Run(name="training", status="running", pid=os.getpid(), heartbeat_at=utcnow())  # slot: new runs
        session.add(blocker)  # wait queued, and no worker is started by this test
        session.commit()
        blocker_id = blocker.id
    status, run = app_client.post("/api/runs", {"iters": 2})
    assert status == 201 and run["status"] == "queued", run
    first = run["id"]
    assert app_client.post(f"/api/runs/{first}/stop")[0] == 202  # a queued run just ends
    response = app_client.client.delete(f"/api/runs/{first}", params={"confirm": "yes"})
    assert response.status_code == 200, response.text
    assert [run["id"] for run in app_client.get("/api/runs")] == [blocker_id]

    status, run = app_client.post("/api/runs", {"iters": 2})
    assert status == 201, run
    assert run["id"] == first + 1
    assert app_client.post(f"/api/runs/{run['id']}/stop")[0] == 202
    with Session(app_client.engine) as session:
        ended = session.get(Run, blocker_id)
        assert ended is not None
        ended.status = "completed"
        session.add(ended)
        session.commit()
