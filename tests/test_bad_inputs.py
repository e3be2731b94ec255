"""The malformed-input corpus (tests/bad_inputs.py) against the dashboard (in-process, on a real SQLite file): every
bad dataset, config and YAML file is refused before any worker starts, with an error naming the file, line and field,
and leaves no row or file behind."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bad_inputs import CONFIGS, DATASETS, YAMLS, BadConfig, BadDataset, BadYaml
from conftest import InProcess, in_process
from test_datasets_api import upload


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[InProcess]:
    with in_process(tmp_path_factory.mktemp("bad-inputs-app")) as inproc:
        yield inproc


def write_dataset(root: Path, case: BadDataset) -> Path:
    folder = root / "corpus" / case.name
    folder.mkdir(parents=True)
    for name, content in case.files.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


COUNTS = {  # rows of every table that a refused input must not add to
    "run": "SELECT COUNT(*) FROM run", "job": "SELECT COUNT(*) FROM job", "dataset": "SELECT COUNT(*) FROM dataset",
    "checkpoint": "SELECT COUNT(*) FROM checkpoint", "trainreport": "SELECT COUNT(*) FROM trainreport",
}


def row_counts(server: InProcess) -> dict[str, int]:
    with sqlite3.connect(server.root / "loraboard.db") as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {table: conn.execute(query).fetchone()[0] for table, query in COUNTS.items() if table in tables}


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def message(detail: Any) -> str:
    return json.dumps(detail, ensure_ascii=False)


@pytest.fixture(scope="module")
def before(srv: InProcess) -> dict[str, Any]:
    srv.get("/api/datasets")  # the sample's registration happens on first listing: count after it
    return {"rows": row_counts(srv), "adapters": files_under(srv.root / "adapters"),
            "datasets": files_under(srv.root / "datasets")}


def assert_nothing_left(srv: InProcess, before: dict[str, Any]) -> None:
    assert row_counts(srv) == before["rows"]
    assert files_under(srv.root / "adapters") == before["adapters"]
    assert files_under(srv.root / "datasets") == before["datasets"]


def test_the_corpus_is_large_enough() -> None:
    assert len(DATASETS) + len(CONFIGS) + len(YAMLS) >= 30
    assert len({c.name for c in DATASETS}) == len(DATASETS)


@pytest.mark.parametrize("case", DATASETS, ids=lambda c: c.name)
def test_a_bad_dataset_is_refused_everywhere_naming_file_line_and_field(
    srv: InProcess, before: dict[str, Any], tmp_path: Path, case: BadDataset
) -> None:
    folder = write_dataset(tmp_path, case)
    status, body = srv.post("/api/runs", {"data": str(folder), "iters": 10, "batch_size": 1})
    assert status == 422, body
    said = message(body["detail"])
    for name in case.names:
        assert name in said, (name, said)

    status, body = srv.post("/api/datasets", {"path": str(folder), "name": f"corpus-{case.name}"})
    assert status == 422, body
    for name in case.names:
        assert name in message(body["detail"]), (name, body)

    files = {name.split(".")[0]: (name, content if isinstance(content, bytes) else content.encode())
             for name, content in case.files.items()}
    if "train" in files and "valid" in files:  # an upload needs both files; the missing-file cases can't be sent
        status, body = upload(srv, {"name": f"up-{case.name}"}, files)
        assert status == 422, body
        assert case.names[0].split(" line")[0] in message(body["detail"])
    assert_nothing_left(srv, before)


@pytest.mark.parametrize("case", CONFIGS, ids=lambda c: c.name)
def test_a_bad_config_is_refused_naming_the_field(srv: InProcess, before: dict[str, Any], case: BadConfig) -> None:
    status, body = srv.post("/api/runs", {"iters": 10, **case.config})
    assert status == 422, body
    problems = body["detail"]
    named = [p for p in problems if [str(part) for part in p["loc"]] == ["body", *case.loc]]
    assert named, (case.loc, problems)
    assert case.says in named[0]["msg"], named
    assert_nothing_left(srv, before)


@pytest.mark.parametrize("case", YAMLS, ids=lambda c: c.name)
def test_a_bad_yaml_config_is_refused_naming_key_and_line(
    srv: InProcess, before: dict[str, Any], case: BadYaml
) -> None:
    response = srv.client.post("/api/configs/parse", content=case.text.encode(),
                               headers={"Content-Type": "application/yaml"})
    status, body = response.status_code, response.json()
    assert status == 422, body
    problem = body["detail"][0]
    assert ".".join(str(part) for part in problem["loc"]) == case.key
    assert problem["line"] == case.line
    assert case.says in problem["msg"]
    assert_nothing_left(srv, before)
