"""SQLite engine of the app: each connection set up by app/contract/sqlite.py, as the workers' are (no FastAPI here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, literal, text
from sqlalchemy.engine import Engine
from sqlalchemy.schema import CreateColumn
from sqlmodel import SQLModel, create_engine

from app import tables  # noqa: F401  (registers the tables)
from app.contract.db_writes import failure_kind
from app.contract.sqlite import BUSY_TIMEOUT_S, apply_pragmas
from app.id_upgrade import upgrade_ids
from app.jobs.upgrade import upgrade_token_stats_jobs


def make_engine(db_path: Path) -> Engine:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        f"sqlite:///{db_path}", connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        apply_pragmas(dbapi_connection)

    @event.listens_for(engine, "handle_error")
    def _on_error(context: Any) -> None:
        # SQLite opens a file it may not write read-only, and such a connection stays so: let the pool drop it
        if failure_kind(context.original_exception) == "read-only":
            context.is_disconnect = True

    SQLModel.metadata.create_all(engine)
    add_missing_columns(engine)
    upgrade_token_stats_jobs(engine)
    upgrade_ids(engine)  # after add_missing_columns: the rebuilt tables copy every column
    return engine


def add_missing_columns(engine: Engine) -> list[str]:
    """Bring a database made by an older loraboard up to date: add the columns it lacks.

    Only additive changes are made (new tables come from create_all); a new NOT NULL column
    gets its Python default as the SQL default so existing rows stay valid (one without a constant
    default is added as nullable). Returns what was added.
    """
    added = []
    preparer = engine.dialect.identifier_preparer
    with engine.begin() as conn:
        for table in SQLModel.metadata.sorted_tables:
            present = {row[1] for row in conn.execute(text("SELECT * FROM pragma_table_info(:t)"), {"t": table.name})}
            for column in table.columns:
                if column.name in present:
                    continue
                definition = str(CreateColumn(column).compile(dialect=engine.dialect))
                default = column.default.arg if column.default is not None and column.default.is_scalar else None
                if not column.nullable and default is not None:
                    value = int(default) if isinstance(default, bool) else default
                    definition += " DEFAULT " + str(literal(value).compile(
                        dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
                elif not column.nullable:  # no constant to fill old rows with: the column stays nullable
                    definition = definition.replace(" NOT NULL", "")
                conn.execute(text("ALTER TABLE " + preparer.quote(table.name) + " ADD COLUMN " + definition))
                added.append(f"{table.name}.{column.name}")
    return added
