"""Importing runs trained with the mlx_lm lora CLI (POST /api/imports): a real run of the installed CLI, a
hand-written classic log, a folder without a log, and bad inputs that leave nothing behind (real server)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_DIR, TERMINAL, Server, base_env, points, shot
from playwright.sync_api import Page, expect

# The installed `mlx_lm lora` CLI, its matrix products routed to OpenBLAS as loraboard's workers do (seconds
# instead of a minute on CPU); everything else is mlx_lm's own code and output.
CLI = """
import runpy, sys
sys.path.insert(0, {project!r})
from app.contract.settings import get_settings
from worker.blas import route_blas
route_blas(get_settings().compiled_cache_dir, True, 1)
sys.argv = ["mlx_lm", "lora", *sys.argv[1:]]
runpy.run_module("mlx_lm", run_name="__main__")
"""
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory, default_model: Path, short_data: Path) -> Path:
    """A 30-iteration run of the mlx_lm CLI on the sample's examples cut short: its adapters folder (relative
    --adapter-path) and its log."""
    work = tmp_path_factory.mktemp("mlx-cli")
    with (work / "train.log").open("wb") as log:
        subprocess.run(
            [sys.executable, "-c", CLI.format(project=str(PROJECT_DIR)), "--model", str(default_model),
             "--data", str(short_data), "--train", "--iters", "30", "--steps-per-report", "5", "--steps-per-eval", "10",
             "--save-every", "10", "--adapter-path", "adapters", "--batch-size", "4", "--num-layers", "2",
             "--val-batches", "2", "--max-seq-length", "256", "--learning-rate", "1e-4"],
            cwd=work, env=base_env(), stdout=log, stderr=subprocess.STDOUT, check=True, timeout=300)
    return work


def folder_entries(server: Server) -> set[str]:
    adapters = server.root / "adapters"
    return {p.name for p in adapters.iterdir()} if adapters.is_dir() else set()


def run_count(server: Server) -> int:
    return len(server.get("/api/runs"))


def test_a_run_of_the_mlx_lm_cli_imports_with_its_curves_and_checkpoints(shared_server: Server, cli_run: Path) -> None:
    text = ANSI.sub("", (cli_run / "train.log").read_text())
    train = [(int(it), float(loss), float(toks.replace(",", "")), round(float(k) * 1000))
             for it, loss, toks, k in re.findall(r"^\s+(\d+)\s+([\d.]+) [▼▲]\s+([\d,]+)\s+([\d.]+)k$", text, re.M)]
    val = [(int(it), float(loss)) for it, loss in re.findall(r"^\s+(\d+)\s+val ([\d.]+)\s", text, re.M)]
    assert len(train) == 6 and [it for it, _ in val] == [1, 10, 20, 30], text

    status, answer = shared_server.post("/api/imports", {"adapter_dir": str(cli_run / "adapters"),
                                                         "log": str(cli_run / "train.log")})
    assert status == 201, answer
    run_id = answer["id"]
    assert answer["status"] == "completed" and answer["name"] == "adapters"
    assert answer["import"]["copied"] and answer["import"]["log_counts"]["style"] == "table"
    assert answer["import"]["log_counts"]["unrecognised"] == 0
    assert answer["config"]["num_layers"] == 2 and answer["config"]["iters"] == 30
    assert answer["config"]["model"] == str(PROJECT_DIR / "data" / "models" / "tiny-mistral")
    counted = re.search(r"^Trainable parameters: [\d.]+% \(([\d.]+)M/([\d.]+)M\)$", text, re.M)
    assert counted is not None, text  # what the log states, the report shows (not "counted when training starts")
    assert (answer["trainable_params"], answer["total_params"]) == (round(float(counted[1]) * 1e6),
                                                                     round(float(counted[2]) * 1e6))

    metrics = shared_server.get(f"/api/runs/{run_id}/metrics")
    assert [(p["iteration"], p["train_loss"], p["tokens_per_second"], p["trained_tokens"])
            for p in metrics["train"]] == train
    assert all(p["learning_rate"] == 1e-4 for p in metrics["train"])  # the config's constant rate
    assert [(p["iteration"], p["val_loss"]) for p in metrics["val"]] == val

    checkpoints = shared_server.get(f"/api/runs/{run_id}/checkpoints")
    assert [c["iteration"] for c in checkpoints] == [10, 20, 30]  # adapters.safetensors is iteration 30's
    for c in checkpoints:
        source = cli_run / "adapters" / f"{c['iteration']:07d}_adapters.safetensors"
        assert (c["sha256"], c["size_bytes"]) == (sha(source), source.stat().st_size)
        assert c["val_loss"] == dict(val)[c["iteration"]]
    folder = shared_server.root / "adapters" / f"run-{run_id:04d}"
    assert not (folder / "0000030_adapters.safetensors").is_symlink()

    status, _, raw = shared_server.request("GET", f"/api/runs/{run_id}/checkpoints/30/download")
    assert status == 200
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        assert hashlib.sha256(archive.read("adapters.safetensors")).hexdigest() == checkpoints[-1]["sha256"]
        assert json.loads(archive.read("adapter_config.json"))["num_layers"] == 2
    marks = shared_server.get(f"/api/runs/{run_id}/annotations")
    assert marks["val_min"] == {"iteration": 30, "val_loss": min(loss for _, loss in val)}
    status, _, html = shared_server.request("GET", f"/runs/{run_id}")
    assert status == 200 and b"on mlx_lm CLI (imported)" in html

    # No optimizer state: it continues with the weights, iteration count and schedule; the moments start afresh
    status, resumed = shared_server.post("/api/runs", {
        **answer["config"], "name": "continued", "iters": 35, "steps_per_report": 5, "steps_per_eval": 5,
        "save_every": 5, "val_batches": 2, "resume_from": {"run_id": run_id, "iteration": 30}})
    assert status == 201, resumed
    done = shared_server.wait_terminal(resumed["id"])
    assert done["status"] == "completed", done
    continued = shared_server.get(f"/api/runs/{resumed['id']}/metrics")
    assert [p["iteration"] for p in continued["train"]] == [35]  # the count goes on from 30
    status, _, html = shared_server.request("GET", f"/runs/{resumed['id']}")
    assert status == 200 and b"the optimizer's moments started afresh" in html

    # and its checkpoints evaluate like any run's
    status, body = shared_server.post(f"/api/runs/{run_id}/evaluations",
                                      {"checkpoints": [30], "include_base": False, "batches": 2})
    assert status == 201, body
    job = shared_server.poll(f"/api/jobs/{body['job_id']}", lambda j: j["status"] in TERMINAL, what="ended")
    assert job["status"] == "completed", job
    assert [row["iteration"] for row in shared_server.get(f"/api/runs/{run_id}/evaluations")] == [30]


CLASSIC_LOG = """Loading pretrained model
Training
Iter 1: Val loss 4.600, Val took 0.500s
Iter 5: Train loss 4.700, Learning Rate 1.000e-04, It/sec 2.500, Tokens/sec 900.125, Trained Tokens 1800, Peak mem 0.125 GB
this line is not mlx_lm's
Iter 10: Train loss 4.500, Learning Rate 9.000e-05, It/sec 2.400, Tokens/sec 880.500, Trained Tokens 3600, Peak mem 0.126 GB
Iter 10: Val loss 4.400, Val took 0.400s
Iter 10: Saved adapter weights to a/adapters.safetensors and a/0000010_adapters.safetensors.
%%% nor this one
Iter 15: Train loss 4.300, Learning Rate 8.000e-05, It/sec 2.450, Tokens/sec 890.000, Trained Tokens 5400, Peak mem 0.126 GB
Iter 15: Val loss 4.350, Val took 0.450s
Saved final weights to a/adapters.safetensors.
"""  # noqa: E501


@pytest.fixture
def classic_folder(tmp_path: Path, cli_run: Path) -> Path:
    """A folder as an older mlx_lm leaves it: checkpoint 10, and the final adapter of iteration 15 (real weights)."""
    folder = tmp_path / "classic-run"
    folder.mkdir()
    config = json.loads((cli_run / "adapters" / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "iters": 15, "learning_rate": 1e-4,
                                                            "use_dora": False}))
    shutil.copy(cli_run / "adapters" / "0000010_adapters.safetensors", folder)
    shutil.copy(cli_run / "adapters" / "0000020_adapters.safetensors", folder / "adapters.safetensors")
    (tmp_path / "classic.log").write_text(CLASSIC_LOG)
    return folder


def test_a_classic_log_links_its_files_and_counts_its_junk(shared_server: Server, classic_folder: Path) -> None:
    status, answer = shared_server.post("/api/imports", {"adapter_dir": str(classic_folder), "name": "older mlx-lm",
                                                         "log": str(classic_folder.parent / "classic.log"),
                                                         "copy": False})
    assert status == 201, answer
    assert answer["name"] == "older mlx-lm" and answer["import"]["linked"]
    assert answer["import"]["log_counts"]["unrecognised"] == 2
    assert answer["import"]["dropped_config_keys"] == ["use_dora"]
    metrics = shared_server.get(f"/api/runs/{answer['id']}/metrics")
    assert [(p["iteration"], p["train_loss"], p["learning_rate"], p["iterations_per_second"], p["tokens_per_second"],
             p["trained_tokens"], p["peak_memory"]) for p in metrics["train"]] == [
        (5, 4.7, 1e-4, 2.5, 900.125, 1800, 0.125), (10, 4.5, 9e-5, 2.4, 880.5, 3600, 0.126),
        (15, 4.3, 8e-5, 2.45, 890.0, 5400, 0.126)]
    assert [(p["iteration"], p["val_loss"]) for p in metrics["val"]] == [(1, 4.6), (10, 4.4), (15, 4.35)]
    checkpoints = shared_server.get(f"/api/runs/{answer['id']}/checkpoints")
    assert [(c["iteration"], c["val_loss"]) for c in checkpoints] == [(10, 4.4), (15, 4.35)]
    assert checkpoints[1]["sha256"] == sha(classic_folder / "adapters.safetensors")
    linked = shared_server.root / "adapters" / f"run-{answer['id']:04d}" / "0000015_adapters.safetensors"
    assert linked.is_symlink() and linked.resolve() == (classic_folder / "adapters.safetensors").resolve()


def test_a_folder_without_a_log_registers_its_checkpoints_only(shared_server: Server, classic_folder: Path) -> None:
    status, answer = shared_server.post("/api/imports", {"adapter_dir": str(classic_folder)})
    assert status == 201, answer
    assert shared_server.get(f"/api/runs/{answer['id']}/metrics") == {"train": [], "val": []}
    checkpoints = shared_server.get(f"/api/runs/{answer['id']}/checkpoints")
    assert [(c["iteration"], c["val_loss"]) for c in checkpoints] == [(10, None), (15, None)]  # 15: the config's iters


def test_bad_folders_and_logs_are_422_naming_the_file_and_leave_nothing(
    shared_server: Server, classic_folder: Path, tmp_path: Path,
) -> None:
    runs, entries = run_count(shared_server), folder_entries(shared_server)
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    junk_log = tmp_path / "junk.log"
    junk_log.write_text("Loading pretrained model\nsomething else\n")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"adapter_dir": str(no_config)}, f"{no_config / 'adapter_config.json'} does not exist"),
        ({"adapter_dir": str(classic_folder), "log": str(junk_log)}, f"log {junk_log} gives no train or validation"),
        ({"adapter_dir": str(classic_folder), "log": str(tmp_path / "missing.log")}, "missing.log does not exist"),
        ({"adapter_dir": "relative/folder"}, "must be an absolute path"),
        ({"adapter_dir": "/etc"}, "outside the folders loraboard reads"),
    ]
    (classic_folder.parent / "broken").mkdir()
    (classic_folder.parent / "broken" / "adapter_config.json").write_text("{not json")
    cases.append(({"adapter_dir": str(classic_folder.parent / "broken")}, "adapter_config.json is not valid JSON"))
    for body, expected in cases:
        status, answer = shared_server.post("/api/imports", body)
        assert status == 422 and expected in answer["detail"], (body, answer)
    status, answer = shared_server.post("/api/imports", {"adapter_dir": str(classic_folder), "copy": "maybe"})
    assert status == 422 and answer["detail"][0]["loc"] == ["body", "copy"]
    assert run_count(shared_server) == runs and folder_entries(shared_server) == entries


@pytest.mark.browser
def test_an_imported_run_page_draws_its_curves_and_checkpoints(shared_server: Server, cli_run: Path,
                                                               page: Page) -> None:
    status, answer = shared_server.post("/api/imports", {"adapter_dir": str(cli_run / "adapters"), "name": "page",
                                                         "log": str(cli_run / "train.log")})
    assert status == 201, answer
    page.goto(f"{shared_server.url}/runs/{answer['id']}")
    expect(page.locator("#loss-chart")).to_have_attribute("data-train-points", "6")
    assert points(page, "val") == 4
    val = {p["iteration"]: p["val_loss"] for p in shared_server.get(f"/api/runs/{answer['id']}/metrics")["val"]}
    for iteration in (10, 20, 30):  # each checkpoint's row carries its validation loss from the log
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name="Download")).filter(
            has_text=re.compile(rf"^\s*{iteration}\b[\s\S]*{val[iteration]:.3f}"))
        expect(row).to_have_count(1)
    expect(page.locator(".stat", has_text="peak memory").first).to_contain_text("—")  # the table log has none
    shot(page, "import-run-page")
