"""Real server, real worker processes, real MLX training of the tiny model."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_DIR, QUICK_RUN, Server, base_env, overfitting_run, short_examples
from huggingface_hub import ModelCard


def unzip_adapter(server: Server, run_id: int, iteration: int, dest: Path) -> Path:
    status, _, raw = server.request("GET", f"/api/runs/{run_id}/checkpoints/{iteration}/download")
    assert status == 200
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        assert {"adapters.safetensors", "adapter_config.json", "README.md", "loraboard.json"} <= set(archive.namelist())
        archive.extractall(dest)
    card = ModelCard.load(dest / "README.md")  # the model card, in the Hugging Face format
    assert (card.data.library_name, card.data.base_model_relation) == ("mlx", "adapter") and card.data.base_model
    assert f"iteration {iteration:,} of run #{run_id}" in card.text and "--adapter-path ." in card.text
    return dest


def generate_with_adapter(model: Path, adapter_dir: Path) -> str:
    """mlx_lm's own CLI loads the unzipped folder as is and writes text."""
    result = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "generate", "--model", str(model), "--adapter-path", str(adapter_dir),
         "--prompt", "Analyze this contact-center conversation:", "--max-tokens", "24"],
        cwd=PROJECT_DIR, env=base_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_full_run_reports_checkpoints_and_download(
    shared_server: Server, default_model: Path, short_data: Path, tmp_path: Path
) -> None:
    status, run = shared_server.post("/api/runs", {**QUICK_RUN, "name": "quick", "data": str(short_data)})
    assert status == 201, run
    assert run["config"]["model"] == str(default_model)  # resolved: absolute default model path
    run = shared_server.wait_terminal(run["id"])
    assert run["status"] == "completed", run
    if sys.platform.startswith("linux"):  # the worker trained through OpenBLAS, as the run says
        assert run["backend"].startswith("CPU + OpenBLAS"), run["backend"]

    metrics = shared_server.get(f"/api/runs/{run['id']}/metrics")
    train_iters = [p["iteration"] for p in metrics["train"]]
    assert train_iters == list(range(5, 41, 5))  # a row for every report
    assert [p["iteration"] for p in metrics["val"]] == [0, 20, 40]
    assert metrics["train"][-1]["train_loss"] < metrics["train"][0]["train_loss"]
    assert metrics["val"][-1]["val_loss"] < metrics["val"][0]["val_loss"]
    thin = shared_server.get(f"/api/runs/{run['id']}/metrics?max_points=3")
    assert [p["iteration"] for p in thin["train"]][::2] == [5, 40] and len(thin["train"]) == 3
    assert thin["total"] == {"train": 8, "val": 3}
    window = shared_server.get(f"/api/runs/{run['id']}/metrics?start=10&end=20")
    assert [p["iteration"] for p in window["train"]] == [10, 15, 20]
    later = shared_server.get(f"/api/runs/{run['id']}/metrics?after=30")
    assert [p["iteration"] for p in later["train"]] == [35, 40]
    assert [p["iteration"] for p in later["val"]] == [40]

    checkpoints = shared_server.get(f"/api/runs/{run['id']}/checkpoints")
    assert [c["iteration"] for c in checkpoints] == [20, 40]
    run_dir = Path(shared_server.root) / "adapters" / f"run-{run['id']:04d}"
    val_by_iter = {p["iteration"]: p["val_loss"] for p in metrics["val"]}
    for ckpt in checkpoints:
        path = run_dir / f"{ckpt['iteration']:07d}_adapters.safetensors"
        assert path.stat().st_size == ckpt["size_bytes"] > 0
        assert hashlib.sha256(path.read_bytes()).hexdigest() == ckpt["sha256"]
        assert ckpt["val_loss"] == val_by_iter[ckpt["iteration"]]
    assert sum(c["is_best"] for c in checkpoints) == 1

    adapter = unzip_adapter(shared_server, run["id"], 40, tmp_path / "adapter")
    assert generate_with_adapter(default_model, adapter).strip()


def test_stop_saves_a_loadable_adapter(shared_server: Server, default_model: Path, short_data: Path,
                                      tmp_path: Path) -> None:
    status, run = shared_server.post("/api/runs", {**QUICK_RUN, "data": str(short_data), "iters": 100_000,
                                                   "save_every": 100_000, "steps_per_eval": 100_000})
    assert status == 201
    shared_server.wait_for(run["id"], lambda r: r["iteration"] >= 10, what="past iteration 10")
    status, _ = shared_server.post(f"/api/runs/{run['id']}/stop")
    assert status == 202
    run = shared_server.wait_terminal(run["id"], timeout=60)
    assert run["status"] == "stopped", run
    assert run["stop_reason"] and "stopped" in run["stop_reason"]
    checkpoints = shared_server.get(f"/api/runs/{run['id']}/checkpoints")
    assert len(checkpoints) == 1 and checkpoints[0]["iteration"] >= 10
    adapter = unzip_adapter(shared_server, run["id"], checkpoints[0]["iteration"], tmp_path / "a")
    assert generate_with_adapter(default_model, adapter).strip()


def test_missing_model_fails_readably_and_server_stays_up(shared_server: Server) -> None:
    status, run = shared_server.post("/api/runs", {**QUICK_RUN, "model": "/nonexistent/model-folder"})
    assert status == 201
    run = shared_server.wait_terminal(run["id"], timeout=60)
    assert run["status"] == "failed"
    assert "/nonexistent/model-folder" in run["error"] and "does not exist" in run["error"]
    _, _, page = shared_server.request("GET", f"/runs/{run['id']}")
    assert b"does not exist" in page
    assert shared_server.get("/api/runs")  # still serving


def test_bad_config_is_422_naming_each_field_and_creates_nothing(shared_server: Server) -> None:
    before = len(shared_server.get("/api/runs"))
    status, body = shared_server.post(
        "/api/runs", {"iters": 0, "batch_size": "four", "learning_rate": -1, "no_such_key": 1}
    )
    assert status == 422
    fields = {tuple(e["loc"][1:]) for e in body["detail"]}
    assert {("iters",), ("batch_size",), ("learning_rate",), ("no_such_key",)} <= fields
    status, body = shared_server.post("/api/runs", {"data": "/nonexistent/data"})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "data"]
    assert len(shared_server.get("/api/runs")) == before


def test_runs_survive_a_server_restart(shared_server: Server, short_data: Path) -> None:
    server = shared_server
    status, run = server.post("/api/runs", {**QUICK_RUN, "data": str(short_data), "iters": 20, "steps_per_eval": 10,
                                            "save_every": 10})
    assert status == 201
    run = server.wait_terminal(run["id"])
    metrics = server.get(f"/api/runs/{run['id']}/metrics")
    checkpoints = server.get(f"/api/runs/{run['id']}/checkpoints")
    server.stop()
    server.start()
    assert server.get(f"/api/runs/{run['id']}") == run
    assert server.get(f"/api/runs/{run['id']}/metrics") == metrics
    assert server.get(f"/api/runs/{run['id']}/checkpoints") == checkpoints


def test_worker_killed_is_marked_interrupted(shared_server: Server, short_data: Path) -> None:
    server = shared_server
    status, run = server.post("/api/runs", {**QUICK_RUN, "data": str(short_data), "iters": 100_000})
    assert status == 201
    server.wait_for(run["id"], lambda r: r["iteration"] >= 5, what="training")
    pid = _worker_pid(server, run)
    os.kill(pid, signal.SIGKILL)
    run = server.wait_terminal(run["id"], timeout=30)
    assert run["status"] == "interrupted"
    assert "without reporting" in run["error"]


def _worker_pid(server: Server, run: dict[str, Any]) -> int:
    import sqlite3

    with sqlite3.connect(server.root / "loraboard.db") as conn:
        (pid,) = conn.execute("SELECT pid FROM run WHERE id = ?", (run["id"],)).fetchone()
    return int(pid)


def test_overfitting_run_stops_early_and_keeps_the_best_adapter(
    shared_server: Server, default_model: Path, tmp_path: Path
) -> None:
    config = overfitting_run(tmp_path, short=True)
    status, run = shared_server.post("/api/runs", config)
    assert status == 201, run
    run = shared_server.wait_terminal(run["id"])
    assert run["status"] == "early_stopped", run
    assert run["stop_reason"].startswith("validation loss has not improved on ")
    assert run["iteration"] < 2000

    val = shared_server.get(f"/api/runs/{run['id']}/metrics")["val"]
    lowest = min(p["val_loss"] for p in val)
    best_iteration = max(p["iteration"] for p in val if p["val_loss"] == lowest)  # ties: the later one
    checkpoints = shared_server.get(f"/api/runs/{run['id']}/checkpoints")
    best = [c for c in checkpoints if c["is_best"]]
    assert len(best) == 1 and best[0]["iteration"] == best_iteration and best[0]["val_loss"] == lowest
    assert run["best_checkpoint"]["iteration"] == best_iteration
    assert f"(iteration {best_iteration:,})" in run["stop_reason"]
    assert val[-1]["iteration"] == run["iteration"]  # it stopped right after the deciding evaluation
    adapter = unzip_adapter(shared_server, run["id"], best_iteration, tmp_path / "best")
    assert generate_with_adapter(default_model, adapter).strip()


def test_deployment_marker_notes_and_guarded_deletion(shared_server: Server, tmp_path: Path) -> None:
    data = short_examples(tmp_path / "short")
    status, run = shared_server.post("/api/runs", {**QUICK_RUN, "data": str(data), "iters": 30, "save_every": 10,
                                                   "steps_per_eval": 5, "val_batches": 1,
                                                   "full_val_at_checkpoints": True})
    assert status == 201
    run = shared_server.wait_terminal(run["id"])
    base = f"/api/runs/{run['id']}/checkpoints"
    checkpoints = shared_server.get(base)
    periodic = [c for c in checkpoints if c["iteration"] % 10 == 0]
    assert [c["iteration"] for c in periodic] == [10, 20, 30]
    assert all(c["val_full"] for c in periodic)  # the whole validation set at each checkpoint
    assert not any(c["val_full"] for c in checkpoints if c["iteration"] % 10)  # a 1-batch sample in between
    for extra in [c["iteration"] for c in checkpoints if c["iteration"] % 10]:  # save-best ones, out of the way
        shared_server.request("DELETE", f"{base}/{extra}?confirm=yes")

    for iteration in (10, 20):  # one deployment per run: the later pick wins
        status, _, _ = shared_server.request("PATCH", f"{base}/{iteration}", {"is_deployment": True})
        assert status == 200
    status, body, _ = shared_server.request("PATCH", f"{base}/20", {"note": "looks good on samples"})
    assert status == 200 and body["note"] == "looks good on samples"
    checkpoints = {c["iteration"]: c for c in shared_server.get(base)}
    assert [i for i, c in checkpoints.items() if c["is_deployment"]] == [20]

    status, body, _ = shared_server.request("DELETE", f"{base}/20?confirm=yes")
    assert status == 409 and "deployment" in body["detail"]
    status, body, _ = shared_server.request("DELETE", f"{base}/10")
    assert status == 409 and "confirm=yes" in body["detail"]
    status, _, _ = shared_server.request("DELETE", f"{base}/10?confirm=yes")
    assert status == 204
    assert [c["iteration"] for c in shared_server.get(base)] == [20, 30]
    run_dir = Path(shared_server.root) / "adapters" / f"run-{run['id']:04d}"
    assert not (run_dir / "0000010_adapters.safetensors").exists()
    assert not (run_dir / "0000010_optimizer.safetensors").exists()  # nothing of it left behind
    assert (run_dir / "0000020_optimizer.safetensors").exists()
    status, _, _ = shared_server.request("DELETE", f"{base}/20?confirm=deployment")
    assert status == 204
    status, _, _ = shared_server.request("PATCH", f"{base}/999", {"note": "x"})
    assert status == 404


def test_stop_and_keep_best_marks_the_best_checkpoint_as_deployment(shared_server: Server, short_data: Path) -> None:
    status, run = shared_server.post("/api/runs", {**QUICK_RUN, "data": str(short_data), "iters": 100_000,
                                                   "steps_per_eval": 10, "save_every": 100_000})
    assert status == 201
    shared_server.wait_for(run["id"], lambda r: r["iteration"] >= 25, what="past iteration 25")
    status, _ = shared_server.post(f"/api/runs/{run['id']}/stop?keep_best=true")
    assert status == 202
    run = shared_server.wait_terminal(run["id"], timeout=60)
    assert run["status"] == "stopped"
    checkpoints = shared_server.get(f"/api/runs/{run['id']}/checkpoints")
    deployment = [c for c in checkpoints if c["is_deployment"]]
    assert len(deployment) == 1 and deployment[0]["is_best"]
    assert deployment[0]["iteration"] == run["best_checkpoint"]["iteration"]


def test_early_stopping_switched_on_while_training_takes_effect(shared_server: Server, short_data: Path) -> None:
    status, run = shared_server.post("/api/runs", {**QUICK_RUN, "data": str(short_data), "iters": 100_000,
                                                   "steps_per_eval": 5, "save_every": 100_000})
    assert status == 201 and run["early_stopping"] is None
    shared_server.wait_for(run["id"], lambda r: r["iteration"] >= 10, what="past iteration 10")
    # min_delta this large: no evaluation after the first counts as an improvement, so it stops at the next one
    status, body, _ = shared_server.request(
        "PATCH", f"/api/runs/{run['id']}", {"early_stopping": {"patience": 1, "min_delta": 100.0}}
    )
    assert status == 200 and body["early_stopping"] == {"patience": 1, "min_delta": 100.0}
    run = shared_server.wait_terminal(run["id"], timeout=60)
    assert run["status"] == "early_stopped", run
    assert "(iteration 0)" in run["stop_reason"]  # nothing improved on the first validation by 100
    status, body, _ = shared_server.request("PATCH", f"/api/runs/{run['id']}", {"early_stopping": None})
    assert status == 409
    status, body, _ = shared_server.request("PATCH", f"/api/runs/{run['id']}", {"early_stopping": {"patience": 0}})
    assert status == 422


def test_resume_continues_iterations_schedule_and_optimizer(shared_server: Server, short_data: Path) -> None:
    data = short_data
    config = {**QUICK_RUN, "data": str(data), "iters": 40, "steps_per_eval": 10, "save_every": 10,
              "val_batches": -1, "lr_schedule": {"name": "cosine_decay", "arguments": [1e-3, 40]}}
    status, straight = shared_server.post("/api/runs", config)  # the uninterrupted reference
    assert status == 201
    shared_server.wait_terminal(straight["id"])
    status, first = shared_server.post("/api/runs", {**config, "iters": 20})
    assert status == 201
    shared_server.wait_terminal(first["id"])
    status, body = shared_server.post("/api/runs", {**config, "resume_from": {"run_id": first["id"], "iteration": 20}})
    assert status == 201, body
    resumed = shared_server.wait_terminal(body["id"])
    assert resumed["status"] == "completed", resumed

    ref = shared_server.get(f"/api/runs/{straight['id']}/metrics")
    before = shared_server.get(f"/api/runs/{first['id']}/metrics")
    after = shared_server.get(f"/api/runs/{resumed['id']}/metrics")
    assert [p["iteration"] for p in after["train"]] == [25, 30, 35, 40]  # the count continues
    assert [p["iteration"] for p in after["val"]] == [20, 30, 40]
    # the learning rate follows the schedule from step 20, exactly as in the uninterrupted run
    ref_lr = {p["iteration"]: p["learning_rate"] for p in ref["train"]}
    for point in after["train"]:
        assert abs(point["learning_rate"] - ref_lr[point["iteration"]]) < 1e-12
    # same weights at the hand-over: the first validation after resume equals the last one before
    assert abs(after["val"][0]["val_loss"] - before["val"][-1]["val_loss"]) < 1e-4
    assert after["train"][0]["trained_tokens"] > before["train"][-1]["trained_tokens"]
    joined = shared_server.get(f"/api/runs/{resumed['id']}/metrics?include_parent=true")
    assert [p["iteration"] for p in joined["train"]] == list(range(5, 41, 5))
    assert [p["iteration"] for p in joined["val"]] == [0, 10, 20, 30, 40]
    assert [c["iteration"] for c in shared_server.get(f"/api/runs/{resumed['id']}/checkpoints")] == [30, 40]


def test_resume_refuses_what_cannot_continue(shared_server: Server) -> None:
    status, body = shared_server.post("/api/runs", {**QUICK_RUN, "resume_from": {"run_id": 9999, "iteration": 20}})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "resume_from"]
    resume = {"run_id": 1, "iteration": 20}
    status, body = shared_server.post("/api/runs", {**QUICK_RUN, "iters": 10, "resume_from": resume})
    assert status == 422 and "must be above" in str(body["detail"])


def test_training_goes_on_while_the_database_is_locked(shared_server: Server, short_data: Path) -> None:
    import sqlite3
    import time

    server = shared_server
    status, run = server.post("/api/runs", {**QUICK_RUN, "data": str(short_data), "iters": 60, "save_every": 5,
                                            "steps_per_eval": 1000})
    assert status == 201
    server.wait_for(run["id"], lambda r: r["iteration"] >= 5, what="training")
    run_dir = server.root / "adapters" / f"run-{run['id']:04d}"
    before = len(list(run_dir.glob("*_adapters.safetensors")))
    lock = sqlite3.connect(server.root / "loraboard.db", timeout=30)
    lock.execute("BEGIN EXCLUSIVE")  # no one else can write now
    try:
        time.sleep(4)
        during = len(list(run_dir.glob("*_adapters.safetensors")))
    finally:
        lock.rollback()
        lock.close()
    assert during > before  # the training loop kept stepping and saving while reports waited
    run = server.wait_terminal(run["id"])
    assert run["status"] == "completed"
    train = server.get(f"/api/runs/{run['id']}/metrics")["train"]
    assert [p["iteration"] for p in train] == list(range(5, 61, 5))  # nothing lost, nothing twice
    assert [c["iteration"] for c in server.get(f"/api/runs/{run['id']}/checkpoints")] == list(range(5, 61, 5))


BF16_COPY = r"""
import json, shutil, sys
from pathlib import Path
import mlx.core as mx
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
shutil.copytree(src, dst)
weights = mx.load(str(src / "model.safetensors"))
mx.save_safetensors(str(dst / "model.safetensors"), {k: v.astype(mx.bfloat16) for k, v in weights.items()})
config = json.loads((src / "config.json").read_text())
config["torch_dtype"] = "bfloat16"
(dst / "config.json").write_text(json.dumps(config))
"""


def test_bf16_weights_train_in_float32_on_cpu(shared_server: Server, default_model: Path, short_data: Path,
                                              tmp_path: Path) -> None:
    bf16 = tmp_path / "tiny-bf16"
    subprocess.run([sys.executable, "-c", BF16_COPY, str(default_model), str(bf16)], check=True, env=base_env())
    runs = {}
    for name, model in (("float32", default_model), ("bfloat16", bf16)):
        status, run = shared_server.post("/api/runs", {**QUICK_RUN, "model": str(model), "data": str(short_data),
                                                       "iters": 20})
        assert status == 201
        runs[name] = shared_server.wait_terminal(run["id"])
        assert runs[name]["status"] == "completed", runs[name]
    assert runs["float32"]["dtype"] == "float32"
    assert runs["bfloat16"]["dtype"] == "float32 (weights stored as bfloat16)"

    def speed(run: dict[str, Any]) -> float:
        train = shared_server.get(f"/api/runs/{run['id']}/metrics")["train"]
        return sorted(p["tokens_per_second"] for p in train[1:])[len(train[1:]) // 2]

    # bf16 matrix products skip BLAS on CPU (~16x slower): training them in bf16 could not come within 4x (the two
    # runs are short and one after the other, so a busy machine moves each median by up to about 2x)
    assert speed(runs["bfloat16"]) > 0.25 * speed(runs["float32"])


@pytest.mark.real  # a real server and worker
def test_a_hub_id_loads_from_the_hugging_face_cache(default_model: Path, short_data: Path, tmp_path: Path) -> None:
    """A hub id (not a path) goes through mlx_lm's hub loading; offline it is served from the cache, and one that is
    not cached is refused before a row exists."""

    snapshot = tmp_path / "hf" / "hub" / "models--loraboard--tiny-mistral" / "snapshots" / "0123456789abcdef"
    shutil.copytree(default_model, snapshot)
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("0123456789abcdef")
    server = Server(tmp_path)
    server_env = server.env

    def env_with_cache() -> dict[str, str]:
        return {**server_env(), "HF_HOME": str(tmp_path / "hf")}

    server.env = env_with_cache  # type: ignore[method-assign]
    server.start()
    try:
        status, run = server.post("/api/runs", {**QUICK_RUN, "model": "loraboard/tiny-mistral", "iters": 10,
                                                "data": str(short_data)})
        assert status == 201 and run["config"]["model"] == "loraboard/tiny-mistral"  # kept as a hub id
        run = server.wait_terminal(run["id"])
        assert run["status"] == "completed", run
        before = len(server.get("/api/runs"))
        status, answer = server.post("/api/runs", {**QUICK_RUN, "model": "loraboard/not-in-the-cache", "iters": 10,
                                                   "data": str(short_data)})
        assert status == 422 and answer["detail"][0]["loc"] == ["body", "model"], answer  # refused, not failed later
        assert "not in the local Hugging Face cache" in answer["detail"][0]["msg"]
        assert "works offline: download it first" in answer["detail"][0]["msg"]
        assert len(server.get("/api/runs")) == before  # no row
    finally:
        server.stop()
