"""A run's model given as a hub id that can be had neither from the local cache nor from the hub is refused before a
row exists, in one sentence that says what to do (app/catalog/hub.py)."""

from __future__ import annotations

import socket
from pathlib import Path

from conftest import InProcess

from app.catalog.hub import hub_model_problem, hub_reachable
from app.contract.settings import Settings


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed once the with ends: nothing listens there


def test_a_hub_id_neither_cached_nor_reachable_is_refused_with_what_to_do(tmp_path: Path) -> None:
    online = Settings(hf_offline=False)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    assert not hub_reachable(env, timeout_s=2.0)  # the real probe: nothing answers on that port
    problem = hub_model_problem("mlx-community/Mistral-7B-Instruct-v0.3", online, env)
    assert problem == (f"mlx-community/Mistral-7B-Instruct-v0.3 is not in the local Hugging Face cache "
                       f"({tmp_path / 'hf' / 'hub'}) and the hub cannot be reached: download it first (`hf download "
                       "mlx-community/Mistral-7B-Instruct-v0.3`, where there is a network) or pick a local folder")
    offline = hub_model_problem("acme/model", Settings(hf_offline=True), env, reachable=lambda: True)
    assert offline is not None and "loraboard works offline: download it first" in offline
    assert hub_model_problem("acme/model", online, env, reachable=lambda: True) is None  # a run may download it


def test_folders_and_cached_ids_are_no_concern_of_the_hub_check(tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    snapshot = tmp_path / "hf" / "hub" / "models--acme--cached" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc")
    settings = Settings(hf_offline=True)
    assert hub_model_problem("acme/cached", settings, env, reachable=lambda: False) is None
    assert hub_model_problem(str(tmp_path / "a-folder"), settings, env, reachable=lambda: False) is None
    assert hub_model_problem("", settings, env, reachable=lambda: False) is None  # the embedded default


def test_the_api_and_the_form_refuse_it_before_a_row_exists(app_client: InProcess) -> None:
    answer = app_client.client.post("/api/runs", json={"model": "acme/not-downloaded"})
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert detail[0]["loc"] == ["body", "model"] and "not in the local Hugging Face cache" in detail[0]["msg"]
    assert app_client.client.get("/api/runs").json() == []
    form = app_client.client.post("/runs/new/check", data={"model": "acme/not-downloaded", "iters": "10"})
    assert form.status_code == 200 and "acme/not-downloaded is not in the local Hugging Face cache" in form.text
    # the token-lengths note neither starts a job that would fail with the hub's own error, nor repeats the field's
    panel = app_client.client.post("/dataset-tools/form-panel", data={"model": "acme/not-downloaded"})
    assert panel.status_code == 200 and "counted once the data and model fields are right" in panel.text
    answer = app_client.client.post("/api/token-stats", json={"model": "acme/not-downloaded"})
    assert answer.status_code == 422 and "is not in the local Hugging Face cache" in answer.text, answer.text
    assert app_client.client.get("/api/jobs").json() == []
