"""Allowed folders: what may be allowed (the pure rule), the roots read from the database by the app and workers
alike, and the API in-process on a real SQLite file: a refused dataset folder registers once its folder is allowed,
with no restart, and is refused again once it is removed. The one-click path in Chromium, through a real run, is in
test_new_run_browser.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import PROJECT_DIR, InProcess, in_process_settings

from app.contract.allowed_folders import FolderRefused, folder_of, folder_to_allow, stored_roots
from app.contract.paths import data_roots, model_roots
from app.datasets.allowed_folders import allow_offer
from app.db import make_engine

SAMPLE = PROJECT_DIR / "data" / "contact-center"


def test_what_may_be_allowed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    data = home / "data"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text("{}\n")
    assert folder_to_allow(str(data), home) == data.resolve()
    assert folder_to_allow(f"  {data}/ ", home) == data.resolve()
    refusals = {
        "": "give the folder's absolute path",
        "data": "is not an absolute path",
        f"{data}/../data": "without '..'",
        str(data / "train.jsonl"): "is a file: allow the folder that holds it",
        str(data / "missing"): "is not a folder on this machine",
        "/": "/ is the whole disk",
        str(home): "is your whole home folder",
        "/etc": "is a system folder (/etc)",
        "/proc/self": "is a system folder (/proc)",
        "/usr/lib": "is a system folder (/usr)",
    }
    for text, words in refusals.items():
        with pytest.raises(FolderRefused, match=words.replace("(", r"\(").replace(")", r"\)")):
            folder_to_allow(text, home)
    assert (folder_of(data / "train.jsonl"), folder_of(data)) == (data, data)


def test_the_offer_beside_a_refusal(tmp_path: Path) -> None:
    outside, inside = tmp_path / "outside", tmp_path / "inside"
    for folder in (outside, inside):
        folder.mkdir()
    (outside / "train.jsonl").write_text("{}\n")
    home = tmp_path / "home"
    assert allow_offer(str(outside), [inside], home) == str(outside.resolve())
    assert allow_offer(str(outside / "train.jsonl"), [inside], home) == str(outside.resolve())  # a file: its folder
    assert allow_offer(str(inside), [inside], home) is None  # already read: the refusal was about something else
    assert allow_offer(str(outside / "typo"), [inside], home) is None  # not there: nothing to allow
    assert allow_offer("mlx-community/Mistral-7B-Instruct-v0.3", [inside], home) is None  # a hub id
    assert allow_offer("/etc", [inside], home) is None  # never allowed, so never offered


def test_the_roots_come_from_the_database_at_each_use(tmp_path: Path) -> None:
    settings = in_process_settings(tmp_path / "app", allowed_dirs="")
    assert stored_roots(settings.database_path) == []  # no database yet: none, and none is made
    assert not settings.database_path.exists()
    engine = make_engine(settings.database_path)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO allowedfolder (path, added_at) VALUES ('/srv/mine', '2026-12-07 10:00:00')")
    assert stored_roots(settings.database_path) == [Path("/srv/mine")]
    assert Path("/srv/mine") in data_roots(settings) and Path("/srv/mine") in model_roots(settings)
    engine.dispose()


def test_allow_register_remove_without_a_restart(app_client: InProcess, tmp_path_factory: pytest.TempPathFactory
                                                 ) -> None:
    outside = tmp_path_factory.mktemp("outside")  # not under the app's allowed folders
    data = outside / "mine"
    shutil.copytree(SAMPLE, data)
    assert app_client.get("/api/allowed-folders") == []
    status, body = app_client.post("/api/datasets", {"path": str(data), "name": "mine"})
    assert status == 422, body
    assert f"allow {data.resolve()} with Allow this folder" in str(body), body  # what to do, in its sentence

    status, folder = app_client.post("/api/allowed-folders", {"path": str(data)})
    assert status == 201 and folder["path"] == str(data.resolve()), folder
    assert app_client.post("/api/allowed-folders", {"path": str(data)}) == (200, folder)  # already: as it is
    assert [f["path"] for f in app_client.get("/api/allowed-folders")] == [str(data.resolve())]
    status, dataset = app_client.post("/api/datasets", {"path": str(data), "name": "mine"})
    assert status == 201, dataset  # at once, no restart
    page = app_client.get("/datasets")
    assert f'data-folder-id="{folder["id"]}"' in page and str(data.resolve()) in page

    status, gone, _ = app_client.request("DELETE", f"/api/allowed-folders/{folder['id']}")
    assert (status, gone) == (200, {"deleted": folder["id"], "path": str(data.resolve())})
    assert app_client.request("DELETE", f"/api/allowed-folders/{folder['id']}")[0] == 404
    status, body = app_client.post("/api/datasets", {"path": str(data), "name": "mine-again"})
    assert status == 422, body  # refused again

    for refused in ("/", "/etc", str(Path.home()), "relative/path", str(data / "train.jsonl")):
        status, body = app_client.post("/api/allowed-folders", {"path": refused})
        assert status == 422 and body["detail"][0]["loc"] == ["body", "path"], (refused, body)
    assert app_client.get("/api/allowed-folders") == []  # nothing half-written

    page = app_client.client.post("/allowed-folders", data={"path": "/etc"})  # the Datasets page's field
    assert page.status_code == 422 and "/etc is a system folder (/etc)" in page.text
    page = app_client.client.post("/allowed-folders", data={"path": str(data)})
    assert page.status_code == 200 and f"{data.resolve()} is allowed" in page.text
    added = app_client.get("/api/allowed-folders")[0]
    page = app_client.client.post(f"/allowed-folders/{added['id']}/remove")
    assert page.status_code == 200 and "is no longer allowed" in page.text and 'id="allowed-folders-none"' in page.text
