"""Bring token-statistics jobs of an older loraboard (table `tokenstatsjob`) into the `job` table.

Every row is copied (a completed one keeps its result, so the dataset page shows it without counting
again; a failed one keeps its error; one that was still queued or running is `interrupted`, since
its worker belonged to the loraboard that was replaced), then the old table is dropped, in one
transaction: an upgrade that fails leaves the database as it was.
"""

from __future__ import annotations

import json

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from app.jobs.jobs import lookup_key

OLD_TABLE = "tokenstatsjob"
UNIT = "examples"
OLD_STATUS = {"completed": "completed", "failed": "failed", "queued": "interrupted", "running": "interrupted"}
INTERRUPTED_ERROR = "the job was running when loraboard was upgraded; it is counted again when asked for"


def _has_table(conn: Connection, name: str) -> bool:
    found = conn.execute(text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :n"), {"n": name})
    return found.first() is not None


def upgrade_token_stats_jobs(engine: Engine) -> int:
    """Copy the old table's rows into `job` and drop it. Returns how many rows were copied."""
    with engine.begin() as conn:
        if not _has_table(conn, OLD_TABLE):
            return 0
        rows = conn.execute(text(
            "SELECT dataset_path, model, files_signature, status, done, total, pid, heartbeat_at, error, traceback,"
            " result_json, log_path, created_at, started_at, finished_at FROM tokenstatsjob ORDER BY id"
        )).mappings().all()
        for row in rows:
            status = OLD_STATUS.get(row["status"], "interrupted")
            error = row["error"] if status != "interrupted" or row["error"] else INTERRUPTED_ERROR
            params = {"data": row["dataset_path"], "model": row["model"], "files_signature": row["files_signature"]}
            conn.execute(text(
                "INSERT INTO job (kind, key, params_json, status, done, total, unit, heartbeat_at, pid, result_json,"
                " error, traceback, log_path, allow_while_training, created_at, started_at, finished_at)"
                " VALUES ('token_stats', :key, :params, :status, :done, :total, :unit, :heartbeat_at, :pid,"
                " :result_json, :error, :traceback, :log_path, 0, :created_at, :started_at, :finished_at)"
            ), {
                "key": lookup_key(row["dataset_path"], row["model"], row["files_signature"]),
                "params": json.dumps(params), "status": status, "done": row["done"], "total": row["total"],
                "unit": UNIT, "heartbeat_at": row["heartbeat_at"], "pid": row["pid"],
                "result_json": row["result_json"] if status == "completed" else None, "error": error,
                "traceback": row["traceback"], "log_path": row["log_path"], "created_at": row["created_at"],
                "started_at": row["started_at"],
                "finished_at": row["finished_at"] or (row["heartbeat_at"] if status == "interrupted" else None),
            })
        conn.execute(text("DROP TABLE tokenstatsjob"))
    return len(rows)
