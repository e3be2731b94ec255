"""Rebuild tables an older loraboard made without AUTOINCREMENT, so that a deleted id is never handed out again.

SQLite cannot add AUTOINCREMENT to a table: the table is made anew and its rows copied, following SQLite's
"making other kinds of table schema changes" procedure (https://www.sqlite.org/lang_altertable.html#otheralter):
foreign keys off, one transaction, the new table under a temporary name, every row copied with its id, the old
table dropped, the new one renamed, its indexes and triggers made again, the foreign keys checked, commit, foreign
keys on. sqlite_sequence then starts at the highest id the table holds. An upgrade that fails leaves the database
as it was.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData, Table
from sqlalchemy.engine import Engine
from sqlalchemy.schema import CreateTable
from sqlmodel import SQLModel

NEW_PREFIX = "_loraboard_new_"


class IdUpgradeError(RuntimeError):
    """The rebuilt tables would break a foreign key that held before: nothing was changed."""


def autoincrement_tables() -> list[Table]:
    """The tables whose ids must never be reused (app/tables.NEVER_REUSED)."""
    return [table for table in SQLModel.metadata.sorted_tables
            if table.dialect_options["sqlite"].get("autoincrement")]


def lacks_autoincrement(cursor: Any, name: str) -> bool:
    """Whether the table exists and was made without AUTOINCREMENT."""
    row = cursor.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None and "AUTOINCREMENT" not in (row[0] or "").upper()


def new_table_sql(table: Table, cursor: Any, dialect: Any) -> tuple[str, list[str]]:
    """CREATE TABLE for the model's definition of table under the temporary name, and the columns to copy.

    A NOT NULL column the older table has as nullable (add_missing_columns adds one without a constant default so)
    stays nullable: its old rows may hold NULL."""
    old = {row[1]: not row[3] for row in cursor.execute("SELECT * FROM pragma_table_info(?)", (table.name,))}
    scratch = MetaData()  # the other tables too: the copy's foreign keys name them
    for other in SQLModel.metadata.sorted_tables:
        other.to_metadata(scratch)
    copy = table.to_metadata(scratch, name=NEW_PREFIX + table.name)
    for column in copy.columns:
        if not column.nullable and old.get(column.name, False) and not column.primary_key:
            column.nullable = True
    columns = [column.name for column in table.columns if column.name in old]
    return str(CreateTable(copy).compile(dialect=dialect)), columns


def rebuild_table(cursor: Any, table: Table, dialect: Any) -> None:
    """Steps 3 to 8 of SQLite's procedure for one table (inside the caller's transaction, foreign keys off)."""
    name = table.name
    kept = [sql for (sql,) in cursor.execute(
        "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger') AND sql IS NOT NULL",
        (name,))]
    create, columns = new_table_sql(table, cursor, dialect)
    cursor.execute(create)
    listed = ", ".join(f'"{column}"' for column in columns)
    cursor.execute(f'INSERT INTO "{NEW_PREFIX}{name}" ({listed}) SELECT {listed} FROM "{name}"')
    cursor.execute(f'DROP TABLE "{name}"')
    cursor.execute(f'ALTER TABLE "{NEW_PREFIX}{name}" RENAME TO "{name}"')
    for sql in kept:
        cursor.execute(sql)
    top = cursor.execute(f'SELECT max(id) FROM "{name}"').fetchone()[0]
    cursor.execute("DELETE FROM sqlite_sequence WHERE name = ?", (name,))
    if top is not None:
        cursor.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (name, top))


def broken_keys(cursor: Any) -> set[tuple[Any, ...]]:
    """Rows whose foreign key points at no row: (table, rowid, parent table)."""
    return {(row[0], row[1], row[2]) for row in cursor.execute("PRAGMA foreign_key_check")}


def upgrade_ids(engine: Engine) -> list[str]:
    """Rebuild every table that must never reuse an id and was made without AUTOINCREMENT; returns their names.

    Safe beside another process using the database: the write lock is taken before the tables are looked at
    again, so a second process that upgrades at the same moment finds nothing left to do."""
    tables = autoincrement_tables()
    raw = engine.raw_connection()
    try:
        conn: Any = raw.driver_connection
        cursor = conn.cursor()
        if not any(lacks_autoincrement(cursor, table.name) for table in tables):
            return []
        conn.commit()
        isolation = conn.isolation_level
        conn.isolation_level = None  # the transaction below is this function's own: BEGIN and COMMIT as written
        cursor.execute("PRAGMA foreign_keys=OFF")  # takes effect outside a transaction only
        try:
            cursor.execute("BEGIN IMMEDIATE")  # waits (busy timeout) while another process writes
            try:
                todo = [table for table in tables if lacks_autoincrement(cursor, table.name)]
                before = broken_keys(cursor)
                for table in todo:
                    rebuild_table(cursor, table, engine.dialect)
                broken = broken_keys(cursor) - before
                if broken:
                    raise IdUpgradeError(f"rebuilding {', '.join(t.name for t in todo)} would break foreign keys "
                                         f"of {sorted(broken)[:5]}")
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
        finally:
            cursor.execute("PRAGMA foreign_keys=ON")
            conn.isolation_level = isolation
        return [table.name for table in todo]
    finally:
        raw.close()
