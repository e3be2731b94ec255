"""Evaluating checkpoints: real `evaluate` jobs on the tiny model through a real server.

One job measures the shared trained run (base model and every checkpoint, test loss and task answers); the tests
read it. Bad requests are refused before a job exists; a checkpoint that breaks mid-way fails the job with its
name while the models measured before it are kept.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_DIR, QUICK_RUN, TERMINAL, Server, base_env, short_examples, small_valid_data

from app.evaluation.verdict import checkpoint_verdict
from worker.blas import build_shim

pytestmark = pytest.mark.xdist_group("trained_run")  # the session's trained run is made once per test process
MODEL = PROJECT_DIR / "data" / "models" / "tiny-mistral"
TASK = {"max_examples": 16, "max_tokens": 56, "batch_size": 16}


def openblas_env() -> dict[str, str]:
    """The environment of a plain `python -m mlx_lm` process, with loraboard's OpenBLAS shim preloaded as the
    worker loads it (same BLAS, same sums; and several times quicker than MLX's reference BLAS)."""
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or spec.origin is None:
        return base_env()
    shim = build_shim(PROJECT_DIR / "data" / ".cache", Path(spec.origin).parent / "lib")
    return base_env(LD_PRELOAD=str(shim), OPENBLAS_NUM_THREADS="1")


def wait_job(srv: Server, job_id: int, timeout: float = 600) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The job once it has ended, and every state seen while it ran."""
    seen: list[dict[str, Any]] = []

    def ended(job: dict[str, Any]) -> bool:
        seen.append(job)
        return job["status"] in TERMINAL

    return srv.poll(f"/api/jobs/{job_id}", ended, timeout, "ended", every_s=0.2), seen


def job_count(srv: Server, run_id: int) -> int:
    return len(srv.get(f"/api/jobs?run_id={run_id}"))


def refused(srv: Server, run_id: int, body: dict[str, Any], *needles: str) -> str:
    """POST the request: 422 whose message holds every needle, and no job created."""
    before = job_count(srv, run_id)
    status, answer = srv.post(f"/api/runs/{run_id}/evaluations", body)
    assert status == 422, (status, answer)
    message = " ".join(str(item.get("msg", "")) + " " + str(item.get("loc", "")) for item in answer["detail"])
    for needle in needles:
        assert needle in message, (needle, message)
    assert job_count(srv, run_id) == before
    return message


@pytest.fixture(scope="module")
def evaluated(trained_run: dict[str, Any]) -> dict[str, Any]:
    """One evaluation of the trained run: base model and every checkpoint, test loss and the task."""
    srv: Server = trained_run["server"]
    run_id = trained_run["run_id"]
    body = {"checkpoints": "all", "include_base": True, "split": "test", "batches": -1, "task": TASK}
    status, answer = srv.post(f"/api/runs/{run_id}/evaluations", body)
    assert status == 201, answer
    job, seen = wait_job(srv, answer["job_id"])
    assert job["status"] == "completed", job
    rows = srv.get(f"/api/runs/{run_id}/evaluations?job_id={job['id']}")
    return {**trained_run, "job": job, "seen": seen, "rows": {row["iteration"]: row for row in rows}}


# One job measures the base model and every checkpoint -----------------------------------------------------------


def test_every_model_has_a_row_with_loss_perplexity_and_tokens(evaluated: dict[str, Any]) -> None:
    rows = evaluated["rows"]
    assert sorted(rows) == [0, *evaluated["iterations"]]
    for row in rows.values():
        assert row["split"] == "test" and row["batches"] == 8 and row["tokens"] > 0
        assert math.isclose(row["perplexity"], math.exp(row["loss"]), rel_tol=1e-5)
        assert row["task"]["examples"] == TASK["max_examples"]
    assert len({row["tokens"] for row in rows.values()}) == 1  # every model saw the same batches
    result = evaluated["job"]["result"]
    assert result["evaluated"] == [0, *evaluated["iterations"]]
    assert {int(it): loss for it, loss in result["losses"].items()} == {it: r["loss"] for it, r in rows.items()}
    assert set(result["scores"]) == {str(it) for it in rows}


def test_progress_reached_total_and_detail_was_shown_while_running(evaluated: dict[str, Any]) -> None:
    job = evaluated["job"]
    models = 1 + len(evaluated["iterations"])
    assert job["progress"] == {"done": models * (8 + 16), "total": models * (8 + 16), "unit": "steps"}
    details = [s["detail"] for s in evaluated["seen"] if s["status"] == "running" and s["detail"]]
    assert any(re.fullmatch(r"(base model|checkpoint [\d,]+) \(\d of \d\): test loss, batch \d of 8", d)
               for d in details), details
    assert any(re.fullmatch(r"(base model|checkpoint [\d,]+) \(\d of \d\): answers, \d+ of 16", d)
               for d in details), details
    assert any(s["eta_s"] is not None for s in evaluated["seen"] if s["status"] == "running")


def test_the_loss_equals_mlx_lm_lora_test(evaluated: dict[str, Any], tmp_path: Path) -> None:
    srv: Server = evaluated["server"]
    run = srv.get(f"/api/runs/{evaluated['run_id']}")
    iteration = evaluated["iterations"][-1]
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    run_folder = srv.root / "adapters" / f"run-{evaluated['run_id']:04d}"
    shutil.copy(run_folder / f"{iteration:07d}_adapters.safetensors", adapters / "adapters.safetensors")
    shutil.copy(run_folder / "adapter_config.json", adapters / "adapter_config.json")
    config = run["config"]
    out = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "lora", "--model", str(MODEL), "--adapter-path", str(adapters),
         "--data", str(evaluated["data"]), "--test", "--test-batches", "-1", "--batch-size",
         str(config["batch_size"]), "--max-seq-length", str(config["max_seq_length"]), "--seed",
         str(config.get("seed", 0)), *(["--mask-prompt"] if config.get("mask_prompt") else [])],
        cwd=tmp_path, env=openblas_env(), capture_output=True, text=True, timeout=300, check=True)
    printed = re.search(r"Test loss (\d+\.\d+), Test ppl", out.stdout)
    assert printed, out.stdout + out.stderr
    assert f"{evaluated['rows'][iteration]['loss']:.3f}" == printed[1]


def test_the_best_checkpoint_beats_the_base_model_on_loss_and_task(evaluated: dict[str, Any]) -> None:
    srv: Server = evaluated["server"]
    checkpoints = srv.get(f"/api/runs/{evaluated['run_id']}/checkpoints")
    best = next(c["iteration"] for c in checkpoints if c["is_best"])
    rows = evaluated["rows"]
    assert rows[best]["loss"] < rows[0]["loss"]
    assert rows[best]["task"]["score"] > rows[0]["task"]["score"]
    assert rows[best]["task"]["format"] == "lines"
    assert set(rows[best]["task"]["fields"]) >= {"Issue", "CSAT", "Churn risk"}


def test_examples_worst_and_best_with_base_answers_and_field_outcomes(evaluated: dict[str, Any]) -> None:
    srv: Server = evaluated["server"]
    best = max(evaluated["iterations"], key=lambda it: evaluated["rows"][it]["task"]["score"])
    base = f"/api/runs/{evaluated['run_id']}/evaluations/examples?iteration={best}&limit=5"
    worst = srv.get(base + "&order=worst")
    assert worst["total"] == 16 and worst["job_id"] == evaluated["job"]["id"] and len(worst["examples"]) == 5
    scores = [e["score"] for e in worst["examples"]]
    assert scores == sorted(scores)
    for example in worst["examples"]:
        assert example["line"] >= 1 and "<|assistant|>" in example["prompt"]
        assert example["reference"].startswith("Issue:") and isinstance(example["output"], str)
        assert example["base_output"] is not None
        assert set(example["fields"]) >= {"Issue", "CSAT"}
        assert all("expected" in f and "got" in f and "score" in f for f in example["fields"].values())
    top = srv.get(base + "&order=best")
    top_scores = [e["score"] for e in top["examples"]]
    assert top_scores == sorted(top_scores, reverse=True) and top_scores[0] >= scores[-1]


# Refused before a job exists ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def throwaway(evaluated: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A short run on short examples without test.jsonl, checkpoints at 10, 20 and 30."""
    srv: Server = evaluated["server"]
    data = short_examples(tmp_path_factory.mktemp("throwaway") / "data")
    status, run = srv.post("/api/runs", {**QUICK_RUN, "name": "throwaway", "data": str(data), "iters": 30,
                                         "save_every": 10, "steps_per_eval": 10, "val_batches": 1})
    assert status == 201, run
    assert srv.wait_terminal(run["id"])["status"] == "completed"
    folder = srv.root / "adapters" / f"run-{run['id']:04d}"
    assert (folder / "0000030_adapters.safetensors").is_file()
    return {"server": srv, "run_id": run["id"], "data": data, "folder": folder}


def test_a_run_without_checkpoints_is_refused(throwaway: dict[str, Any]) -> None:
    srv: Server = throwaway["server"]
    status, run = srv.post("/api/runs", {**QUICK_RUN, "name": "fresh", "data": str(throwaway["data"]),
                                         "iters": 1000, "save_every": 1000, "steps_per_eval": 1000})
    assert status == 201, run
    try:
        refused(srv, run["id"], {"checkpoints": "all"}, f"run {run['id']} has no checkpoints to evaluate",
                "checkpoints")
    finally:
        srv.post(f"/api/runs/{run['id']}/stop")
        srv.wait_terminal(run["id"])


def test_bad_requests_are_refused_naming_the_problem(throwaway: dict[str, Any]) -> None:
    srv: Server = throwaway["server"]
    rid = throwaway["run_id"]
    refused(srv, rid, {"checkpoints": [12345], "split": "valid"}, "no checkpoint at iteration 12,345",
            "10, 20, 30")
    refused(srv, rid, {"split": "valid", "task": {"max_examples": 0}}, "max_examples must be at least 1")
    refused(srv, rid, {"split": "test"}, "test.jsonl does not exist")
    test_file = throwaway["data"] / "test.jsonl"
    valid_lines = (throwaway["data"] / "valid.jsonl").read_text().splitlines(True)
    try:
        test_file.write_text("".join(valid_lines[:3]) + "{not json\n" + "".join(valid_lines[3:8]))
        refused(srv, rid, {"split": "test"}, "line 4")
        test_file.write_text("".join(valid_lines[:2]))
        refused(srv, rid, {"split": "test"}, "fewer than one batch")
    finally:
        test_file.unlink()


def test_text_records_are_asked_raw_up_to_the_assistant_marker_and_scored_on_the_seeds_fields(
        throwaway: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    from worker.seed_shaped import FIELDS, write_seed_shaped

    srv: Server = throwaway["server"]
    rid = throwaway["run_id"]
    tokenizer = AutoTokenizer.from_pretrained(str(MODEL))
    test_file = throwaway["data"] / "test.jsonl"
    try:
        test_file.write_text('{"text": "a text with no marker"}\n' * 4)
        refused(srv, rid, {"split": "test", "task": TASK}, "text format with no <|assistant|>")
        write_seed_shaped(throwaway["data"], lambda text: len(tokenizer.encode(text, add_special_tokens=False)),
                          scale=0.1, sizes={"test": 8})  # ~116 tokens a record, under the run's max_seq_length
        texts = [json.loads(line)["text"] for line in test_file.read_text().splitlines()]
        task = {"max_examples": 4, "max_tokens": 40, "batch_size": 4}
        status, answer = srv.post(f"/api/runs/{rid}/evaluations", {"checkpoints": [30], "include_base": False,
                                                                    "split": "test", "batches": 1, "task": task})
        assert status == 201, answer
        job, _ = wait_job(srv, answer["job_id"])
    finally:
        test_file.unlink()
    assert job["status"] == "completed", job
    [row] = srv.get(f"/api/runs/{rid}/evaluations?job_id={job['id']}")
    assert row["task"]["format"] == "lines" and row["task"]["examples"] == 4
    assert list(row["task"]["fields"]) == list(FIELDS)  # Quality, Issue, CSAT, Churn risk, Journey, Coaching
    assert row["task"]["fields"]["Quality"]["kind"] == row["task"]["fields"]["CSAT"]["kind"] == "number"
    examples = srv.get(f"/api/runs/{rid}/evaluations/examples?iteration=30&limit=10&split=test")
    assert sorted(e["line"] for e in examples["examples"]) == [1, 2, 3, 4]
    for example in examples["examples"]:
        text = texts[example["line"] - 1]
        cut = text.index("<|assistant|>") + len("<|assistant|>")
        assert example["prompt"] == text[:cut]  # the raw text as trained on, no chat template around it
        assert example["reference"] == text[cut:].strip() and example["reference"].startswith("Quality: ")
        assert list(example["fields"]) == list(FIELDS)


def test_a_checkpoint_whose_file_was_deleted_is_refused(throwaway: dict[str, Any]) -> None:
    srv: Server = throwaway["server"]
    path = throwaway["folder"] / "0000030_adapters.safetensors"
    kept = path.read_bytes()
    path.unlink()
    try:
        refused(srv, throwaway["run_id"], {"checkpoints": "all", "split": "valid"}, "checkpoint 30",
                "0000030_adapters.safetensors", "deleted")
    finally:
        path.write_bytes(kept)


def test_a_checkpoint_that_breaks_mid_way_fails_the_job_and_keeps_earlier_models(throwaway: dict[str, Any]) -> None:
    srv: Server = throwaway["server"]
    path = throwaway["folder"] / "0000020_adapters.safetensors"
    kept = path.read_bytes()
    status, answer = srv.post(f"/api/runs/{throwaway['run_id']}/evaluations",
                              {"checkpoints": [10, 20, 30], "split": "valid", "batches": 1})
    assert status == 201, answer
    path.write_bytes(kept[: len(kept) // 2])  # after the checks: the job finds it broken
    try:
        job, _ = wait_job(srv, answer["job_id"])
    finally:
        path.write_bytes(kept)
    assert job["status"] == "failed", job
    assert job["error"].startswith("checkpoint 20 (0000020_adapters.safetensors): "), job["error"]
    rows = srv.get(f"/api/runs/{throwaway['run_id']}/evaluations?job_id={job['id']}")
    assert [row["iteration"] for row in rows] == [0, 10]


def test_a_cancel_keeps_the_models_already_measured(throwaway: dict[str, Any]) -> None:
    srv: Server = throwaway["server"]
    rid = throwaway["run_id"]
    status, answer = srv.post(f"/api/runs/{rid}/evaluations",
                              {"checkpoints": [10, 20, 30], "split": "valid", "task": TASK})
    assert status == 201, answer
    path = f"/api/runs/{rid}/evaluations?job_id={answer['job_id']}"
    srv.poll(path, lambda rows: len(rows) >= 1, 300, "one model measured", every_s=0.1)
    assert srv.post(f"/api/jobs/{answer['job_id']}/cancel")[0] == 202
    job, _ = wait_job(srv, answer["job_id"])
    assert job["status"] == "stopped", job
    kept = [row["iteration"] for row in srv.get(path)]
    assert 1 <= len(kept) < 4 and kept == job["result"]["evaluated"] == [0, 10, 20, 30][:len(kept)]
    assert set(job["result"]["losses"]) == {str(it) for it in kept}


# Training that made things worse ----------------------------------------------------------------------------------


def test_a_run_whose_base_model_beats_every_checkpoint_gets_no_plain_best(evaluation_server: Server,
                                                                          tmp_path: Path) -> None:
    data = small_valid_data(tmp_path / "data")
    status, run = evaluation_server.post("/api/runs", {
        **QUICK_RUN, "name": "too hot", "data": str(data), "iters": 10, "learning_rate": 5e-3,
        "steps_per_eval": 5, "save_every": 5, "val_batches": -1})  # validation loss 4.5 at 0, 10.5 at 5, 6.6 at 10
    assert status == 201, run
    assert evaluation_server.wait_terminal(run["id"])["status"] == "completed"
    checkpoints = evaluation_server.get(f"/api/runs/{run['id']}/checkpoints")
    val = evaluation_server.get(f"/api/runs/{run['id']}/metrics")["val"]
    base_val = next(v["val_loss"] for v in val if v["iteration"] == 0)
    rows = [type("Row", (), {"iteration": c["iteration"], "val_loss": c["val_loss"]})() for c in checkpoints]
    assert all(c["val_loss"] > base_val for c in checkpoints), (base_val, checkpoints)
    verdict = checkpoint_verdict(base_val, rows, {}, {})
    assert verdict.best_label == "least bad" and verdict.recommended is None
    assert verdict.warning is not None and "no checkpoint improved on the base model" in verdict.warning
