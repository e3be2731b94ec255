"""Files inside an allowed folder that link out of the folders loraboard reads are refused wherever loraboard opens
them (validate, register, preview, subset, token statistics, import, model info, checkpoint downloads, the
worker), and nothing of the file they lead to (content, line count, size) appears in any answer."""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_DIR, QUICK_RUN, TERMINAL, InProcess

import app.contract.confinement as confinement
from app.contract.confinement import PathNotAllowed, open_confined

SAMPLE = PROJECT_DIR / "data" / "contact-center"
TINY = PROJECT_DIR / "data" / "models" / "tiny-mistral"
SECRET = "outside-secret-7f3a91"
SECRET_SIZE = 48611  # bytes of the outside JSONL file: a figure that appears nowhere else
SECRET_LINES = 13
REFUSED = "outside the folders loraboard reads"


@dataclass(frozen=True)
class Outside:
    """Files in a folder no setting allows (beside pytest's base folder, which the in-process settings allow)."""

    folder: Path

    @property
    def jsonl(self) -> Path:
        return self.folder / "secret.jsonl"

    @property
    def json(self) -> Path:
        return self.folder / "secret.json"

    @property
    def template(self) -> Path:
        return self.folder / "secret.jinja"


@pytest.fixture(scope="module")
def outside() -> Iterator[Outside]:
    with tempfile.TemporaryDirectory(prefix="loraboard-outside-") as name:
        found = Outside(Path(name).resolve())
        lines = [json.dumps({"text": f"{SECRET} line {i}"}) + "\n" for i in range(SECRET_LINES - 1)]
        last = json.dumps({"text": SECRET}) + "\n"
        last = last.replace(SECRET, SECRET + "x" * (SECRET_SIZE - len("".join(lines)) - len(last)))
        found.jsonl.write_text("".join(lines) + last)
        assert found.jsonl.stat().st_size == SECRET_SIZE
        found.json.write_text(json.dumps({"model_type": SECRET, "hidden_size": SECRET_SIZE}))
        found.template.write_text(SECRET)
        yield found


def assert_nothing_of(text: str) -> None:
    """Neither the outside files' content nor their size is in an answer."""
    assert SECRET not in text, text[:2000]
    assert str(SECRET_SIZE) not in text and f"{SECRET_SIZE:,}" not in text, text[:2000]


def linked_dataset(folder: Path, target: Path, splits: tuple[str, ...] = ("train", "valid")) -> Path:
    folder.mkdir(parents=True)
    for split in splits:
        (folder / f"{split}.jsonl").symlink_to(target)
    return folder


def refusal(name: str, folder: Path, target: Path | str) -> str:
    return f"{name} in {folder} links to {target}, {REFUSED}"


def get(client: InProcess, path: str) -> tuple[int, str]:
    response = client.client.get(path)
    return response.status_code, html.unescape(response.text)


# The open-once helper ---------------------------------------------------------------------------------------


def test_open_confined_reads_inside_and_refuses_a_link_out(tmp_path: Path, outside: Outside) -> None:
    root = tmp_path / "root"
    (root / "inner").mkdir(parents=True)
    (root / "inner" / "a.jsonl").write_text("inside\n")
    (root / "near.jsonl").symlink_to(root / "inner" / "a.jsonl")  # a link that stays inside
    (root / "far.jsonl").symlink_to(outside.jsonl)
    (root / "gone.jsonl").symlink_to(outside.folder / "absent.jsonl")  # a link out to nothing: refused alike
    with open_confined(root / "near.jsonl", [root]) as handle:
        assert handle.read() == b"inside\n"
    for name, target in (("far.jsonl", outside.jsonl), ("gone.jsonl", outside.folder / "absent.jsonl")):
        with pytest.raises(PathNotAllowed) as caught:
            open_confined(root / name, [root])
        assert str(caught.value).startswith(refusal(name, root, target)), str(caught.value)
        assert "links out of these folders are refused" in str(caught.value)
    os.mkfifo(root / "pipe.jsonl")
    with pytest.raises(OSError, match="not a regular file"):  # answered at once, never waited on
        open_confined(root / "pipe.jsonl", [root])


def test_open_confined_judges_the_handle_when_a_link_is_swapped_in_after_the_check(
    tmp_path: Path, outside: Outside, monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.jsonl").write_text("inside\n")
    checked = confinement.confine_file
    (outside.folder / "data").mkdir(exist_ok=True)
    shutil.copy(outside.jsonl, outside.folder / "data" / "train.jsonl")

    def swap_file(path: Any, roots: Any, what: str = "") -> Path:
        real = checked(path, roots, what)  # the check passes, then the file becomes a link out
        (root / "data" / "train.jsonl").unlink()
        (root / "data" / "train.jsonl").symlink_to(outside.jsonl)
        return real

    monkeypatch.setattr(confinement, "confine_file", swap_file)
    with pytest.raises(PathNotAllowed, match="was changed into a link while loraboard opened it"):
        open_confined(root / "data" / "train.jsonl", [root])

    (root / "data" / "train.jsonl").unlink()
    (root / "data" / "train.jsonl").write_text("inside\n")

    def swap_folder(path: Any, roots: Any, what: str = "") -> Path:
        real = checked(path, roots, what)  # the check passes, then its folder becomes a link out
        (root / "data").rename(root / "data-before")
        (root / "data").symlink_to(outside.folder / "data")
        return real

    monkeypatch.setattr(confinement, "confine_file", swap_folder)
    with pytest.raises(PathNotAllowed) as caught:
        open_confined(root / "data" / "train.jsonl", [root])
    assert f"leading to {outside.folder / 'data' / 'train.jsonl'}, {REFUSED}" in str(caught.value)


def test_the_worker_knows_the_allowed_folders_and_reads_split_files_confined(tmp_path: Path, outside: Outside) -> None:
    from conftest import in_process_settings

    from app.jobs.process import worker_env
    from worker.token_stats import read_split

    settings = in_process_settings(tmp_path / "app", allowed_model_dirs="/models/here")
    env = worker_env(settings)
    assert env["LORABOARD_ALLOWED_DIRS"] == settings.allowed_dirs
    assert env["LORABOARD_ALLOWED_MODEL_DIRS"] == "/models/here"
    assert env["LORABOARD_DATASETS_DIR"] == str(settings.local_datasets_dir)
    folder = linked_dataset(tmp_path / "data", outside.jsonl)
    with pytest.raises(PathNotAllowed, match=refusal("train.jsonl", folder, outside.jsonl)):
        read_split(folder / "train.jsonl", [tmp_path])


# Datasets ---------------------------------------------------------------------------------------------------


def test_validate_and_register_refuse_split_files_linking_out(
    shared_app_client: InProcess, tmp_path: Path, outside: Outside,
) -> None:
    passwd = linked_dataset(tmp_path / "passwd", Path("/etc/passwd"))  # the probe: nothing of it is told
    status, text = get(shared_app_client, f"/api/datasets/validate?path={passwd}")
    answer = json.loads(text)
    assert status == 200 and not answer["ok"]
    assert refusal("train.jsonl", passwd, "/etc/passwd") in answer["summary"]
    assert refusal("valid.jsonl", passwd, "/etc/passwd") in answer["summary"]
    for split in ("train", "valid"):
        assert answer["splits"][split] == {"present": False, "examples": 0, "size_bytes": 0, "format": None}
    assert "root:" not in text

    folder = linked_dataset(tmp_path / "secret", outside.jsonl)
    status, text = get(shared_app_client, f"/api/datasets/validate?path={folder}")
    assert status == 200 and refusal("train.jsonl", folder, outside.jsonl) in text
    assert all(split["examples"] == 0 and split["size_bytes"] == 0 for split in json.loads(text)["splits"].values())
    assert_nothing_of(text)

    before = len(shared_app_client.get("/api/datasets"))
    status, answer = shared_app_client.post("/api/datasets", {"name": "linked-out", "path": str(folder)})
    assert status == 422 and refusal("train.jsonl", folder, outside.jsonl) in answer["detail"]["msg"]
    assert all(error["line"] is None for error in answer["detail"]["errors"])
    assert_nothing_of(json.dumps(answer))
    page = shared_app_client.client.post("/datasets/register", data={"name": "linked-out", "path": str(folder)})
    assert page.status_code == 422 and refusal("train.jsonl", folder, outside.jsonl) in html.unescape(page.text)
    assert_nothing_of(page.text)
    assert len(shared_app_client.get("/api/datasets")) == before


def test_a_registered_dataset_whose_file_becomes_a_link_out_shows_nothing_of_it(
    shared_app_client: InProcess, tmp_path: Path, outside: Outside,
) -> None:
    folder = tmp_path / "swapped"
    folder.mkdir()
    for split in ("train", "valid"):
        (folder / f"{split}.jsonl").write_text("".join((SAMPLE / f"{split}.jsonl").read_text().splitlines(True)[:3]))
    status, dataset = shared_app_client.post("/api/datasets", {"name": "swapped", "path": str(folder)})
    assert status == 201, dataset
    (folder / "train.jsonl").unlink()
    (folder / "train.jsonl").symlink_to(outside.jsonl)  # a marker file from elsewhere, as in the probe

    status, text = get(shared_app_client, f"/datasets/{dataset['id']}/preview")
    assert status == 200 and refusal("train.jsonl", folder, outside.jsonl) in text
    assert_nothing_of(text)
    status, text = get(shared_app_client, f"/datasets/{dataset['id']}")
    assert status == 200 and refusal("train.jsonl", folder, outside.jsonl) in text
    assert_nothing_of(text)
    status, text = get(shared_app_client, f"/api/datasets/{dataset['id']}")
    answer = json.loads(text)
    assert status == 200 and answer["counts"]["train"] == 0 and not answer["ok"]
    assert answer["validation"]["splits"]["train"]["size_bytes"] == 0
    assert_nothing_of(text)
    assert_nothing_of(get(shared_app_client, "/api/datasets")[1])


def test_subset_and_token_statistics_refuse_a_source_file_linking_out(
    shared_app_client: InProcess, tmp_path: Path, outside: Outside,
) -> None:
    folder = linked_dataset(tmp_path / "source", outside.jsonl)
    status, answer = shared_app_client.post("/api/datasets/subset", {"source": str(folder), "name": "drawn", "n": 3})
    assert status == 422 and refusal("train.jsonl", folder, outside.jsonl) in json.dumps(answer)
    assert_nothing_of(json.dumps(answer))
    assert not (shared_app_client.root / "datasets" / "drawn").exists()
    status, answer = shared_app_client.post("/api/token-stats", {"data": str(folder)})
    assert status == 422 and answer["detail"][0]["loc"] == ["body", "data"]
    assert refusal("train.jsonl", folder, outside.jsonl) in answer["detail"][0]["msg"]


# Imports and checkpoint downloads ---------------------------------------------------------------------------


def adapter_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"model": str(TINY), "num_layers": 2, "iters": 10}))
    (folder / "adapters.safetensors").write_bytes(b"\0" * 64)
    return folder


def test_import_refuses_adapter_files_and_logs_linking_out(
    shared_app_client: InProcess, tmp_path: Path, outside: Outside,
) -> None:
    runs = len(shared_app_client.get("/api/runs"))
    weights = adapter_folder(tmp_path / "weights")
    (weights / "0000010_adapters.safetensors").symlink_to(outside.jsonl)
    config = adapter_folder(tmp_path / "config")
    (config / "adapter_config.json").unlink()
    (config / "adapter_config.json").symlink_to(outside.json)
    log_folder = adapter_folder(tmp_path / "log")
    (log_folder / "train.log").symlink_to(outside.jsonl)
    cases = [({"adapter_dir": str(weights)}, refusal("0000010_adapters.safetensors", weights, outside.jsonl)),
             ({"adapter_dir": str(weights), "copy": False}, refusal("0000010_adapters.safetensors", weights,
                                                                    outside.jsonl)),
             ({"adapter_dir": str(config), "copy": False}, refusal("adapter_config.json", config, outside.json)),
             ({"adapter_dir": str(log_folder), "log": str(log_folder / "train.log")},  # a log given is confined
              f"log {log_folder / 'train.log'} is a link to {outside.jsonl}, {REFUSED}")]
    for body, sentence in cases:
        status, answer = shared_app_client.post("/api/imports", body)
        assert status == 422 and sentence in answer["detail"], (body, answer)
        assert_nothing_of(json.dumps(answer))
        assert f"{SECRET_LINES} lines" not in answer["detail"]
    assert len(shared_app_client.get("/api/runs")) == runs
    assert not [p for p in (shared_app_client.root / "adapters").glob("*") if p.name.startswith(".import-")]


def test_a_checkpoint_download_refuses_a_file_that_became_a_link_out(
    shared_app_client: InProcess, outside: Outside,
) -> None:
    """An imported run's files are links to its adapter folder; one swapped for a link out is not served."""
    from sqlmodel import Session

    from app.contract.paths import run_dir
    from app.contract.run_config import RunConfig
    from app.tables import Checkpoint, Run

    with Session(shared_app_client.engine) as session:
        run = Run(name="linked import", status="completed", config_json=RunConfig().model_dump_json(), total_iters=10)
        session.add(run)
        session.commit()
        assert run.id is not None
        run_id = run.id
        session.add(Checkpoint(run_id=run_id, iteration=10, filename="0000010_adapters.safetensors", size_bytes=64,
                               sha256="0" * 64))
        session.commit()
    folder = run_dir(shared_app_client.app.state.settings, run_id)
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "0000010_adapters.safetensors").symlink_to(outside.jsonl)
    response = shared_app_client.client.get(f"/api/runs/{run_id}/checkpoints/10/download")
    assert response.status_code == 422
    assert refusal("0000010_adapters.safetensors", folder, outside.jsonl) in response.json()["detail"]
    assert_nothing_of(response.text)


# Models -----------------------------------------------------------------------------------------------------


def test_model_info_and_the_preview_refuse_model_files_linking_out(
    shared_app_client: InProcess, tmp_path: Path, outside: Outside,
) -> None:
    config = tmp_path / "config-out"
    config.mkdir()
    (config / "config.json").symlink_to(outside.json)
    (config / "model.safetensors").symlink_to(TINY / "model.safetensors")  # a link that stays inside: allowed
    weights = tmp_path / "weights-out"
    weights.mkdir()
    shutil.copy(TINY / "config.json", weights / "config.json")
    (weights / "model.safetensors").symlink_to(outside.jsonl)
    for folder, name, target in ((config, "config.json", outside.json),
                                 (weights, "model.safetensors", outside.jsonl)):
        status, text = get(shared_app_client, f"/api/models/info?model={folder}")
        assert status == 422 and refusal(name, folder, target) in text, text
        assert_nothing_of(text)
        status, text = get(shared_app_client, f"/models/info?model={folder}")
        assert refusal(name, folder, target) in text
        assert_nothing_of(text)
    (config / "config.json").unlink()
    shutil.copy(TINY / "config.json", config / "config.json")
    assert shared_app_client.get(f"/api/models/info?model={config}")["num_layers"] > 0  # links inside are fine

    template = tmp_path / "template-out"
    template.mkdir()
    for name in ("config.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TINY / name, template / name)
    (template / "chat_template.jinja").symlink_to(outside.template)
    sample = shared_app_client.get("/api/datasets")[0]["id"]
    status, text = get(shared_app_client, f"/datasets/{sample}/preview?model={template}")
    assert status == 200 and refusal("chat_template.jinja", template, outside.template) in text
    assert SECRET not in text


# The worker -------------------------------------------------------------------------------------------------


@pytest.mark.real  # a real worker
def test_a_run_whose_training_file_links_out_fails_before_training(
    shared_app_client: InProcess, tmp_path: Path, outside: Outside,
) -> None:
    """The row is written as the app would after its own checks; the file changed after them is the worker's."""
    from sqlmodel import Session

    from app.contract.run_config import RunConfig
    from app.runs.store.runs import create_run

    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(SAMPLE / "valid.jsonl", folder / "valid.jsonl")
    (folder / "train.jsonl").symlink_to(outside.jsonl)
    config = RunConfig.model_validate({**QUICK_RUN, "iters": 2, "data": str(folder), "model": str(TINY),
                                       "name": "linked data"})
    with Session(shared_app_client.engine) as session:
        run_id = create_run(session, config).id
    deadline = time.monotonic() + 180
    while (run := shared_app_client.get(f"/api/runs/{run_id}"))["status"] not in TERMINAL:
        assert time.monotonic() < deadline, run
        time.sleep(0.5)
    assert run["status"] == "failed", run
    assert refusal("train.jsonl", folder, outside.jsonl) in run["error"]
    assert run["iteration"] == 0 and not shared_app_client.get(f"/api/runs/{run_id}/metrics")["train"]
