"""The dataset registry and upload, in-process on a real SQLite file: register, upload, size limit, atomicity, run
refusal (the run that trains on an upload gets a real worker)."""

from __future__ import annotations

import json
import secrets
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_DIR, QUICK_RUN, InProcess, in_process

SAMPLE = (PROJECT_DIR / "data" / "contact-center").resolve()
BAD_ROLE = {"messages": [{"role": "user", "content": "Hi"}, {"role": "agent", "content": "Hello"}]}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[InProcess]:
    """One in-process dashboard for the module, with a 1 MB upload limit."""
    with in_process(tmp_path_factory.mktemp("datasets-app"), max_upload_mb=1) as inproc:
        yield inproc


def sample_lines(split: str, count: int) -> str:
    return "".join((SAMPLE / f"{split}.jsonl").read_text().splitlines(True)[:count])


def small_dataset(folder: Path, valid: str | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text(sample_lines("train", 24))
    (folder / "valid.jsonl").write_text(valid if valid is not None else sample_lines("valid", 8))
    return folder


def upload(server: InProcess, fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[int, Any]:
    """POST a multipart form to /api/datasets/upload."""
    boundary = "----loraboard" + secrets.token_hex(8)
    body = bytearray()
    for name, value in fields.items():
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n').encode()
    for name, (filename, content) in files.items():
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    response = server.client.post("/api/datasets/upload", content=bytes(body),
                                  headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return response.status_code, response.json()


def datasets_dir(server: InProcess) -> Path:
    return server.root / "datasets"


def leftovers(server: InProcess) -> list[str]:
    root = datasets_dir(server)
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_the_sample_is_listed_and_a_folder_registers(srv: InProcess, tmp_path: Path) -> None:
    listed = srv.get("/api/datasets")
    assert listed[0]["path"] == str(SAMPLE) and listed[0]["source"] == "sample" and listed[0]["ok"]
    assert listed[0]["counts"] == {"train": 1200, "valid": 150, "test": 150}

    folder = small_dataset(tmp_path / "calls-small")
    status, created = srv.post("/api/datasets", {"name": "calls-small", "path": str(folder)})
    assert status == 201, created
    assert created["name"] == "calls-small" and created["path"] == str(folder) and created["format"] == "chat"
    assert created["counts"] == {"train": 24, "valid": 8, "test": 0} and created["source"] == "folder"
    detail = srv.get(f"/api/datasets/{created['id']}")
    assert detail["validation"]["ok"] and detail["validation"]["splits"]["train"]["size_bytes"] > 0
    assert [d["name"] for d in srv.get("/api/datasets")][-1] == "calls-small"

    status, body = srv.post("/api/datasets", {"name": "calls-small", "path": str(SAMPLE)})
    assert status == 422 and "a dataset named 'calls-small' already exists" in body["detail"]["msg"]
    status, body = srv.post("/api/datasets", {"name": "again", "path": str(folder)})
    assert status == 422 and "is already registered as 'calls-small'" in body["detail"]["msg"]
    status, body = srv.post("/api/datasets", {"name": "rel", "path": "data/contact-center"})
    assert status == 422 and body["detail"]["msg"] == "path must be an absolute folder path, got 'data/contact-center'"
    status, body = srv.post("/api/datasets", {"name": "bad name!", "path": str(SAMPLE)})
    assert status == 422 and "name must be 1 to 64 letters" in body["detail"]["msg"]
    status, body = srv.post("/api/datasets", {"name": "x"})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "path"]
    assert srv.request("GET", "/api/datasets/9999")[0] == 404


def test_a_bad_folder_is_refused_with_file_line_errors(srv: InProcess, tmp_path: Path) -> None:
    bad_valid = sample_lines("valid", 1) + json.dumps(BAD_ROLE) + "\n"
    folder = small_dataset(tmp_path / "bad", valid=bad_valid)
    expected = "valid.jsonl line 2: 'messages'[1].role must be one of system/user/assistant/tool, got 'agent'"
    status, body = srv.post("/api/datasets", {"name": "bad", "path": str(folder)})
    assert status == 422
    assert body["detail"]["errors"][0] == {"file": "valid.jsonl", "line": 2, "field": "'messages'[1].role",
                                           "message": "must be one of system/user/assistant/tool, got 'agent'",
                                           "text": expected}
    assert body["detail"]["error_count"] == 2
    assert "bad" not in [d["name"] for d in srv.get("/api/datasets")]

    report = srv.get("/api/datasets/validate?path=" + urllib.parse.quote(str(folder)))
    assert not report["ok"] and report["error_count"] == 2 and report["errors"][0]["text"] == expected
    assert report["splits"]["valid"]["examples"] == 2
    status, body, _ = srv.request("GET", "/api/datasets/validate?path=relative/folder")
    assert status == 422


def test_a_run_on_a_bad_dataset_is_refused_with_the_file_line_message(srv: InProcess, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in sample_lines("train", 30).splitlines()]
    rows[26] = {"prompt": "p", "completion": "c"}
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "valid.jsonl").write_text(sample_lines("valid", 4))
    status, body = srv.post("/api/runs", {**QUICK_RUN, "data": str(folder)})
    assert status == 422, body
    assert body["detail"][0]["loc"] == ["body", "data"]
    assert "train.jsonl line 27: is completions format ('prompt' and 'completion') but line 1 is chat format" \
        in body["detail"][0]["msg"]
    assert srv.get("/api/runs") == []


@pytest.mark.real  # the run trains: a real worker
def test_upload_stores_registers_and_a_run_trains_on_it(srv: InProcess) -> None:
    status, created = upload(srv, {"name": "uploaded-calls"}, {
        "train": ("my-train.jsonl", sample_lines("train", 32).encode()),
        "valid": ("my-valid.jsonl", sample_lines("valid", 8).encode()),
        "test": ("", b""),  # a file input left empty
    })
    assert status == 201, created
    target = datasets_dir(srv) / "uploaded-calls"
    assert created["path"] == str(target.resolve()) and created["source"] == "upload"
    assert created["counts"] == {"train": 32, "valid": 8, "test": 0}
    assert sorted(p.name for p in target.iterdir()) == ["train.jsonl", "valid.jsonl"]
    assert (target / "train.jsonl").read_text() == sample_lines("train", 32)
    assert leftovers(srv) == ["uploaded-calls"]

    status, run = srv.post("/api/runs", {**QUICK_RUN, "iters": 10, "steps_per_eval": 10, "save_every": 10,
                                          "val_batches": 2, "data": created["path"]})
    assert status == 201, run
    assert srv.wait_terminal(run["id"], timeout=180)["status"] == "completed"

    status, body = upload(srv, {"name": "uploaded-calls"}, {
        "train": ("t.jsonl", sample_lines("train", 4).encode()),
        "valid": ("v.jsonl", sample_lines("valid", 2).encode())})
    assert status == 422 and "a dataset named 'uploaded-calls' already exists" in body["detail"]["msg"]
    assert (target / "train.jsonl").read_text() == sample_lines("train", 32)  # not overwritten
    assert leftovers(srv) == ["uploaded-calls"]


def test_a_bad_upload_leaves_nothing_behind(srv: InProcess) -> None:
    before = leftovers(srv)
    bad_valid = (sample_lines("valid", 1) + json.dumps(BAD_ROLE) + "\n" + "{oops\n").encode()
    status, body = upload(srv, {"name": "bad-upload"}, {
        "train": ("train.jsonl", sample_lines("train", 8).encode()), "valid": ("valid.jsonl", bad_valid)})
    assert status == 422
    assert body["detail"]["msg"].startswith("the upload has 3 problems:\nvalid.jsonl line 2: 'messages'[1].role")
    assert [e["text"] for e in body["detail"]["errors"]][-1] == (
        "valid.jsonl line 3: is not valid JSON: Expecting property name enclosed in double quotes (column 2)")
    assert leftovers(srv) == before

    for fields, files, message in (
        ({"name": "../escape"}, {"train": ("train.jsonl", b"{}")}, "name must be 1 to 64 letters"),
        ({"name": "no-valid"}, {"train": ("train.jsonl", sample_lines("train", 2).encode())},
         "valid.jsonl: is missing"),
        ({"name": "csv"}, {"train": ("train.csv", b"a,b\n")}, "train: expected a .jsonl file, got 'train.csv'"),
        ({"name": "odd"}, {"extra": ("extra.jsonl", b"{}")}, "unexpected file field 'extra'"),
        ({}, {"train": ("train.jsonl", sample_lines("train", 2).encode())}, "name is required"),
    ):
        status, body = upload(srv, fields, files)
        assert status == 422 and message in body["detail"]["msg"], (fields, body)
    assert leftovers(srv) == before
    assert not (datasets_dir(srv).parent / "escape").exists()


def test_the_size_limit_is_enforced_per_file(srv: InProcess) -> None:
    before = leftovers(srv)
    line = sample_lines("train", 1).encode()
    big = line * (int(1.5 * 1024 * 1024) // len(line) + 1)  # 1.5 MB of valid lines, over the 1 MB limit
    status, body = upload(srv, {"name": "too-big"}, {"train": ("train.jsonl", big),
                                                     "valid": ("valid.jsonl", sample_lines("valid", 2).encode())})
    assert status == 413
    assert body["detail"]["msg"] == ("train.jsonl (train.jsonl) is larger than the upload limit of 1 MB per file "
                                     "(max_upload_mb)")
    assert leftovers(srv) == before
    huge = b"x" * (4 * 1024 * 1024)  # more than three files at the limit: refused unparsed
    status, body = upload(srv, {"name": "huge"}, {"train": ("train.jsonl", huge)})
    assert status == 413 and "larger than three files of 1 MB" in body["detail"]["msg"]
    assert leftovers(srv) == before
    # after refusals the server still answers uploads normally
    status, created = upload(srv, {"name": "just-under"}, {
        "train": ("train.jsonl", line * (1024 * 1024 // len(line))), "valid": ("valid.jsonl", line)})
    assert status == 201, created
