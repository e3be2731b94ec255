"""Every SQL statement the workers write, prepared by SQLite against the app's schema (app/tables.py).

The workers talk to SQLite through the standard library, not the ORM, so nothing else checks that the tables and
columns their statements name exist. This walks the syntax tree of every module under `worker/`, collects each SQL
statement (a string constant passed to execute/executemany/executescript, or one that starts with SELECT, INSERT,
UPDATE, DELETE, WITH, REPLACE or PRAGMA), and has SQLite prepare it (`EXPLAIN`, parameters bound to None) on a
database made by the app's own `make_engine`. A statement built at run time (f-string, `+`, `%`, `.format`) cannot
be checked and fails as such.
"""

from __future__ import annotations

import ast
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.db import make_engine
from worker.reporting import connect

PROJECT_DIR = Path(__file__).resolve().parent.parent
WORKER_DIR = PROJECT_DIR / "worker"
EXECUTE_METHODS = frozenset({"execute", "executemany", "executescript"})
SQL_START = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH|REPLACE|PRAGMA)\s")
BINDINGS_WANTED = re.compile(r"statement uses (\d+),")
# Fewer than this many statements found means the walk lost its way (today's workers write about 50).
MIN_STATEMENTS = 40


@dataclass(frozen=True)
class Statement:
    """One SQL statement found in a worker module: where it is written, and its text (None when built)."""

    file: str
    line: int
    sql: str | None

    def where(self) -> str:
        return f"{self.file}:{self.line}"


class NoneForEveryName(dict[str, None]):
    """Named parameters (`:name`) all bound to None."""

    def __missing__(self, _name: str) -> None:
        return None


def leading_text(node: ast.expr) -> str | None:
    """The literal text an expression starts with (the left end of `+` and `%`, an f-string's first part)."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else None
    if isinstance(node, ast.JoinedStr):
        return leading_text(node.values[0]) if node.values else None
    if isinstance(node, ast.BinOp):
        return leading_text(node.left)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return leading_text(node.func.value)
    return None


def is_built(node: ast.expr) -> bool:
    """Whether an expression builds a string at run time: an f-string, `+`, `%` or `.format`."""
    return (isinstance(node, ast.JoinedStr)
            or (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod))
            or (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"))


def looks_like_sql(text: str | None) -> bool:
    return text is not None and SQL_START.match(text) is not None


def statements_in(source: str, file: str) -> list[Statement]:
    """The SQL statements of one module's source, in the order they are written; built ones have sql None."""
    tree = ast.parse(source, filename=file)
    found: dict[tuple[int, int], Statement] = {}
    inside_built: set[int] = set()  # string parts of a built statement (checked as a whole, not one by one)
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}

    def built(node: ast.expr) -> None:
        found[(node.lineno, node.col_offset)] = Statement(file, node.lineno, None)
        inside_built.update(id(part) for part in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in EXECUTE_METHODS and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found[(first.lineno, first.col_offset)] = Statement(file, first.lineno, first.value)
            elif is_built(first) and id(first) not in inside_built:
                built(first)
        elif isinstance(node, ast.expr) and is_built(node) and id(node) not in inside_built \
                and looks_like_sql(leading_text(node)):
            built(node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and looks_like_sql(node.value) \
                and id(node) not in inside_built and id(node) not in docstrings:
            found.setdefault((node.lineno, node.col_offset), Statement(file, node.lineno, node.value))
    return [found[key] for key in sorted(found)]


def worker_statements() -> list[Statement]:
    """Every SQL statement of every module under worker/."""
    statements = []
    for path in sorted(WORKER_DIR.rglob("*.py")):
        statements += statements_in(path.read_text(encoding="utf-8"), str(path.relative_to(PROJECT_DIR)))
    return statements


def split_script(sql: str) -> Iterator[str]:
    """The statements of an executescript text, one by one."""
    pending = ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip():
        yield pending.strip()


def prepare(conn: sqlite3.Connection, sql: str) -> str | None:
    """SQLite's complaint about a statement (a table or column it lacks, a syntax error), or None when it prepares.
    Only EXPLAIN runs: the statement itself is compiled, never executed."""
    for one in split_script(sql):
        explain = "EXPLAIN " + one
        try:
            try:
                conn.execute(explain, ())
            except sqlite3.ProgrammingError as exc:  # it has parameters: as many Nones as it asks for
                wanted = BINDINGS_WANTED.search(str(exc))
                if wanted is None:
                    raise
                try:
                    conn.execute(explain, (None,) * int(wanted.group(1)))
                except sqlite3.ProgrammingError:  # named ones
                    conn.execute(explain, NoneForEveryName())
        except sqlite3.Error as exc:
            return f"{type(exc).__name__}: {exc}"
    return None


def problems(conn: sqlite3.Connection, statements: list[Statement]) -> list[str]:
    """One line per statement that is built at run time or that SQLite cannot prepare, naming file and line."""
    lines = []
    for statement in statements:
        if statement.sql is None:
            lines.append(f"{statement.where()}: not a literal statement (built at run time, so it cannot be checked)")
            continue
        complaint = prepare(conn, statement.sql)
        if complaint is not None:
            lines.append(f"{statement.where()}: {complaint}\n    {' '.join(statement.sql.split())}")
    return lines


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite3.Connection]:
    """A connection, as a worker opens one, to a fresh database the app made from app/tables.py."""
    path = tmp_path_factory.mktemp("schema") / "loraboard.db"
    make_engine(path).dispose()
    conn = connect(path)
    yield conn
    conn.close()


def test_the_walk_finds_the_workers_statements() -> None:
    statements = worker_statements()
    files = {statement.file for statement in statements}
    assert len(statements) >= MIN_STATEMENTS, f"only {len(statements)} SQL statements found under worker/"
    assert {"worker/reporting.py", "worker/playground.py", "worker/job.py", "worker/evaluate.py"} <= files


def test_every_worker_statement_prepares_against_the_apps_schema(schema: sqlite3.Connection) -> None:
    found = problems(schema, worker_statements())
    assert not found, "worker SQL that does not fit app/tables.py:\n" + "\n".join(found)


def test_the_check_names_a_missing_column_a_missing_table_and_a_built_statement(
        schema: sqlite3.Connection) -> None:
    source = (
        'conn.execute("SELECT id FROM run WHERE id = ?", (1,))\n'
        'conn.execute("UPDATE run SET no_such_column = ? WHERE id = ?", (1, 2))\n'
        'QUERY = ("SELECT id FROM no_such_table"\n'
        '         " WHERE id = :id")\n'
        'conn.execute(f"SELECT {column} FROM run")\n'
        'SQL = "DELETE FROM run WHERE " + condition\n'
        'conn.executemany(sql_of_the_day, rows)\n'
        '"""UPDATE the docs: a docstring is no statement."""\n'
    )
    found = problems(schema, statements_in(source, "example.py"))
    assert [line.split("\n")[0] for line in found] == [
        "example.py:2: OperationalError: no such column: no_such_column",
        "example.py:3: OperationalError: no such table: no_such_table",
        "example.py:5: not a literal statement (built at run time, so it cannot be checked)",
        "example.py:6: not a literal statement (built at run time, so it cannot be checked)",
    ]


def test_a_workers_connection_is_set_up_as_the_apps(tmp_path: Path) -> None:
    path = tmp_path / "loraboard.db"
    engine = make_engine(path)
    pragmas = ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
    with engine.connect() as app_conn:
        app_side = [app_conn.exec_driver_sql("PRAGMA " + name).scalar() for name in pragmas]
    engine.dispose()
    worker_conn = connect(path)
    try:
        worker_side = [worker_conn.execute("PRAGMA " + name).fetchone()[0] for name in pragmas]
    finally:
        worker_conn.close()
    assert app_side == worker_side == ["wal", 1, 30000, 1]
