"""Fuse and quantize jobs: real workers on the tiny model, compared with the mlx_lm CLI.

One fuse job and one quantize job are shared by the module; the bad inputs are cheap HTTP calls answered before
any job exists, and the disk-space rule is a unit test with the free space given.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_DIR, QUICK_RUN, Server, base_env, bearer, in_process
from huggingface_hub import ModelCard
from sqlmodel import Session, select

from app.catalog.info import model_info, trainable_params
from app.contract.settings import Settings
from app.contract.status import TERMINAL
from app.db import make_engine
from app.models.registry import remove_leftover_model_temps
from app.models.requests import (
    FuseRequest,
    ModelJobRefused,
    QuantizeRequest,
    fuse_estimate,
    group_size_problem,
    prepare_fuse,
    prepare_quantize,
    quantize_estimate,
)
from app.runs.memory.estimate_qlora import qlora_choice
from app.tables import Checkpoint, Job, Run

pytestmark = pytest.mark.xdist_group("checkpoint_use")

TINY = PROJECT_DIR / "data" / "models" / "tiny-mistral"
PROMPT = "My order has not arrived yet. What should I do?"
SUFFIX = uuid.uuid4().hex[:8]


def wait_job(srv: Server, job_id: int, timeout: float = 600) -> dict[str, Any]:
    return srv.poll(f"/api/jobs/{job_id}", lambda j: j["status"] in TERMINAL, timeout, "ended", every_s=0.3)


def generate(*args: str) -> str:
    """Greedy text of `python -m mlx_lm generate` (between its ========== lines)."""
    result = subprocess.run([sys.executable, "-m", "mlx_lm", "generate", "--temp", "0", "--max-tokens", "16",
                             "--prompt", PROMPT, *args], cwd=PROJECT_DIR, env=base_env(), capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split("==========")[1].strip()


def temps(srv: Server) -> list[Path]:
    return sorted(srv.models_dir.glob(".*.tmp*"))


@pytest.fixture(scope="module")
def made(lora_run: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One fuse (the final checkpoint) and one quantize (the embedded model, 4-bit in groups of 32) job, both done."""
    srv: Server = lora_run["server"]
    run_id, iteration = lora_run["run_id"], lora_run["iterations"][-1]
    names = {"fused": f"test-fused-{SUFFIX}", "quantized": f"test-q4-{SUFFIX}"}
    try:
        status, fuse = srv.post(f"/api/runs/{run_id}/checkpoints/{iteration}/fuse", {"name": names["fused"]})
        assert status == 201, fuse
        status, quant = srv.post("/api/models/quantize", {"model": str(TINY), "bits": 4, "group_size": 32,
                                                           "name": names["quantized"]})
        assert status == 201, quant
        yield {"srv": srv, "run_id": run_id, "iteration": iteration, "names": names,
               "fuse": wait_job(srv, fuse["job_id"]), "quantize": wait_job(srv, quant["job_id"])}
    finally:
        for name in names.values():
            shutil.rmtree(srv.models_dir / name, ignore_errors=True)


def test_fused_model_generates_like_base_plus_adapter(made: dict[str, Any]) -> None:
    job = made["fuse"]
    assert job["status"] == "completed", job
    fused = made["srv"].models_dir / made["names"]["fused"]
    assert job["result"]["path"] == str(fused.resolve()) and job["result"]["fused_layers"] > 0
    assert (fused / "config.json").is_file() and list(fused.glob("model*.safetensors"))
    adapter = Path(job["result"]["adapter_path"])
    assert adapter.name == f"{made['iteration']:07d}" and (adapter / "adapters.safetensors").is_file()
    with_adapter = generate("--model", str(TINY), "--adapter-path", str(adapter))
    assert generate("--model", str(fused)) == with_adapter
    assert with_adapter != generate("--model", str(TINY))  # the adapter changes the answer: the test can fail


def test_the_fused_folder_carries_a_model_card(made: dict[str, Any]) -> None:
    """README.md in the Hugging Face format: huggingface_hub's ModelCard loads it, with the base model, the library
    and the tags, and it says which checkpoint this is and how the run trained."""
    srv: Server = made["srv"]
    job = srv.poll(f"/api/jobs/{made['fuse']['id']}", lambda j: "model_card" in j["result"], 30, "its card")
    fused = srv.models_dir / made["names"]["fused"]
    assert job["result"]["model_card"] == str(fused.resolve() / "README.md")
    card = ModelCard.load(fused / "README.md")
    assert (card.data.base_model, card.data.library_name, card.data.base_model_relation) == (
        TINY.name, "mlx", "finetune")
    assert {"mlx", "lora"} <= set(card.data.tags)
    assert f"iteration {made['iteration']:,} of run #{made['run_id']}" in card.text
    assert "## Hyperparameters" in card.text and "python -m mlx_lm generate --model ." in card.text
    assert generate("--model", str(fused))  # mlx_lm still loads the folder with the card in it


def test_fused_model_is_registered_and_in_the_picker(made: dict[str, Any]) -> None:
    srv, name = made["srv"], made["names"]["fused"]
    rows = {row["name"]: row for row in srv.get("/api/models/registered")}
    row = rows[name]
    assert row["origin"] == "fused" and row["run_id"] == made["run_id"] and row["iteration"] == made["iteration"]
    assert row["job_id"] == made["fuse"]["id"] and row["size_bytes"] > 1_000_000 and row["bits"] is None
    picker = {choice["name"]: choice for choice in srv.get("/api/models")}
    assert picker[name]["origin"] == f"fused from run {made['run_id']} @ {made['iteration']}"
    assert picker["tiny-mistral"]["origin"] is None


def test_archive_streams_the_model_folder(made: dict[str, Any]) -> None:
    srv, name = made["srv"], made["names"]["fused"]
    request = urllib.request.Request(f"{srv.url}/api/models/{name}/archive", headers=bearer(srv.token))
    with urllib.request.urlopen(request, timeout=60) as resp:
        assert resp.headers["Content-Type"] == "application/x-tar"
        assert resp.headers.get("Content-Length") is None  # streamed, not built whole first
        assert f'filename="{name}.tar"' in resp.headers["Content-Disposition"]
        data = resp.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = {m.name: m for m in archive.getmembers()}
    assert f"{name}/config.json" in members and f"{name}/model.safetensors" in members
    assert members[f"{name}/model.safetensors"].size == (srv.models_dir / name / "model.safetensors").stat().st_size
    assert srv.request("GET", "/api/models/no-such-model/archive")[0] == 404


def test_quantized_model_generates_and_trains(made: dict[str, Any], short_data: Path) -> None:
    job, srv = made["quantize"], made["srv"]
    assert job["status"] == "completed", job
    folder = made["srv"].models_dir / made["names"]["quantized"]
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    info = model_info(str(folder), Settings())
    assert info.quantization is not None and info.quantization["bits"] == 4
    assert all(m.bits == 4 for m in info.modules if m.adaptable)  # every linear, the 352-wide down_proj included
    assert len(generate("--model", str(folder))) > 0
    row = {r["name"]: r for r in srv.get("/api/models/registered")}[made["names"]["quantized"]]
    assert row["origin"] == "quantized" and row["bits"] == 4 and row["group_size"] == 32
    assert row["source_model"] == str(TINY)
    # short examples: a step of the 4-bit model is slow on a CPU (quantized products with bf16 scales)
    status, run = srv.post("/api/runs", {**QUICK_RUN, "name": "qlora", "model": str(folder), "data": str(short_data),
                                         "iters": 4, "steps_per_report": 2, "steps_per_eval": 4, "val_batches": 1,
                                         "save_every": 4})
    assert status == 201, run
    done = srv.wait_terminal(run["id"], timeout=600)
    assert done["status"] == "completed", done
    losses = [r["train_loss"] for r in srv.get(f"/api/runs/{run['id']}/metrics")["train"]]
    assert losses and all(math.isfinite(loss) for loss in losses)


def test_bad_requests_start_nothing(made: dict[str, Any]) -> None:
    srv, run_id, iteration = made["srv"], made["run_id"], made["iteration"]
    jobs_before = len(srv.get("/api/jobs?limit=500"))
    rows_before = len(srv.get("/api/models/registered"))
    fuse = f"/api/runs/{run_id}/checkpoints/{{}}/fuse"
    status, answer = srv.post(fuse.format(7), {"name": f"never-{SUFFIX}"})
    assert status == 404 and "no checkpoint at iteration 7" in answer["detail"]
    status, answer = srv.post(fuse.format(iteration), {"name": made["names"]["fused"]})
    assert status == 409 and "already" in answer["detail"]
    status, answer = srv.post(fuse.format(iteration), {"name": "tiny-mistral"})
    assert status == 409 and "tiny-mistral already exists" in answer["detail"]
    status, answer = srv.post(fuse.format(iteration), {"name": "../escape"})
    assert status == 422 and "is not valid" in answer["detail"][0]["msg"]
    status, answer = srv.post("/api/models/quantize", {"model": str(TINY), "bits": 4, "group_size": 64,
                                                       "name": f"never-{SUFFIX}"})
    assert status == 422
    assert answer["detail"][0]["msg"] == "intermediate_size 352 is not a multiple of group_size 64; 32 works"
    status, answer = srv.post("/api/models/quantize", {"model": made["names"]["quantized"], "bits": 8,
                                                       "group_size": 32})
    assert status == 422 and "is already quantized (4-bit)" in answer["detail"][0]["msg"]
    status, answer = srv.post("/api/models/quantize", {"model": "/nonexistent/model", "group_size": 32})
    assert status == 422 and "does not exist" in answer["detail"][0]["msg"]
    assert len(srv.get("/api/jobs?limit=500")) == jobs_before
    assert len(srv.get("/api/models/registered")) == rows_before
    assert not (srv.models_dir / f"never-{SUFFIX}").exists() and not list(srv.models_dir.glob(f".never-{SUFFIX}*"))


def test_a_fuse_that_fails_leaves_no_folder(made: dict[str, Any]) -> None:
    """The name is taken after the request was accepted: the worker refuses, and nothing half-written stays."""
    srv, name = made["srv"], f"test-taken-{SUFFIX}"
    status, answer = srv.post(f"/api/runs/{made['run_id']}/checkpoints/{made['iteration']}/fuse", {"name": name})
    assert status == 201, answer
    squatter = srv.models_dir / name
    squatter.mkdir()
    try:
        job = wait_job(srv, answer["job_id"])
        assert job["status"] == "failed" and f"{squatter} already exists" in job["error"], job
        assert list(squatter.iterdir()) == [] and temps(srv) == []
        assert name not in {row["name"] for row in srv.get("/api/models/registered")}
    finally:
        shutil.rmtree(squatter, ignore_errors=True)


def test_disk_space_and_group_size_rules(tmp_path: Path) -> None:
    """Pure checks with the free space given: the request is refused with what is needed and what is free."""
    settings = Settings(data_dir=PROJECT_DIR / "data", db_path=tmp_path / "db.sqlite", adapters_dir=tmp_path)
    info = model_info(str(TINY), settings)
    assert group_size_problem(info, 32) is None
    assert group_size_problem(info, 128) == "intermediate_size 352 is not a multiple of group_size 128; 32 works"
    needed = quantize_estimate(info, 4)
    assert needed == int(info.total_params * 0.5 * 1.1) and fuse_estimate(info, False) == info.size_bytes
    with Session(make_engine(settings.database_path)) as session:
        request = QuantizeRequest(model=str(TINY), bits=4, group_size=32, name=f"never-{SUFFIX}")
        with pytest.raises(ModelJobRefused) as refused:
            prepare_quantize(session, settings, request, free=lambda _folder: needed - 1)
        assert refused.value.status == 422
        assert str(refused.value).startswith("not enough disk space for the 4-bit copy never-")
        assert f"{needed / 1e9:,.2f} GB needed, {(needed - 1) / 1e9:,.2f} GB free" in str(refused.value)
        params = prepare_quantize(session, settings, request, free=lambda _folder: needed)
        assert params.dest == str(settings.local_models_dir / f"never-{SUFFIX}") and params.group_size == 32
    assert not (settings.local_models_dir / f"never-{SUFFIX}").exists()


def test_model_panel_offers_qlora_only_where_it_matters(made: dict[str, Any], tmp_path: Path) -> None:
    """The tiny model's 4 MB of weights get no QLoRA offer (from 1 GB up, by default); where the threshold lets it
    (in-process, at 0 GB) the panel shows both estimates, says why and links to the quantize form."""
    srv = made["srv"]
    _, _, raw = srv.request("GET", f"/models/info?model={TINY}&batch_size=4&max_seq_length=256")
    assert "model-qlora" not in raw.decode()  # 4 MB of weights: too little to matter
    with in_process(tmp_path / "app", qlora_offer_min_gb=0.0) as inproc:
        html = inproc.client.get(f"/models/info?model={TINY}&batch_size=4&max_seq_length=256").text
    assert "QLoRA: train on a 4-bit copy." in html and "group size 32" in html and "offered from 0 GB up" in html
    assert f'href="/models?model={TINY}&amp;group_size=32#quantize-status"' in html
    settings = Settings()
    info = model_info(str(TINY), settings)
    choice = qlora_choice(info, trainable_params(info), 4, 256, False, True, 10**9)
    assert choice is not None and choice["group_size"] == 32 and choice["weights"] < choice["current_weights"] / 4
    assert qlora_choice(info, trainable_params(info), 4, 256, False, True, 10**9,
                        min_weight_bytes=choice["current_weights"] + 1) is None
    _, _, raw = srv.request("GET", f"/models/info?model={srv.models_dir / made['names']['quantized']}")
    assert "model-qlora" not in raw.decode()  # already 4-bit: nothing to offer


def test_leftover_temporary_model_folders_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead, alive, model = tmp_path / ".gone.tmp999999999", tmp_path / f".busy.tmp{os.getpid()}", tmp_path / "kept"
    for folder in (dead, alive, model):
        folder.mkdir()
    assert remove_leftover_model_temps(Settings(models_dir=tmp_path)) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "kept"]


def test_a_checkpoint_whose_file_was_deleted_is_refused_before_any_job(tmp_path: Path) -> None:
    settings = Settings(data_dir=PROJECT_DIR / "data", db_path=tmp_path / "db.sqlite", adapters_dir=tmp_path / "a")
    with Session(make_engine(settings.database_path)) as session:
        run = Run(name="r", status="completed", config_json=json.dumps({"model": str(TINY)}))
        session.add(run)
        session.commit()
        assert run.id is not None
        session.add(Checkpoint(run_id=run.id, iteration=20, filename="0000020_adapters.safetensors", size_bytes=1,
                               sha256="0"))
        session.commit()
        with pytest.raises(ModelJobRefused) as gone:
            prepare_fuse(session, settings, run, 20, FuseRequest())
        assert gone.value.status == 410
        assert str(gone.value) == (f"the file of checkpoint 20 (0000020_adapters.safetensors) was deleted from "
                                   f"{tmp_path / 'a' / f'run-{run.id:04d}'}")
        with pytest.raises(ModelJobRefused) as missing:
            prepare_fuse(session, settings, run, 30, FuseRequest())
        assert missing.value.status == 404 and "no checkpoint at iteration 30" in str(missing.value)
        assert session.exec(select(Job)).all() == []
