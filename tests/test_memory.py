"""The memory guard (worker memory in each report, a limit that warns or stops) and the estimate before Start."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from conftest import QUICK_RUN, Server, bearer, click_start, shot
from playwright.sync_api import Browser

from app.catalog.info import model_info, trainable_params
from app.contract.memory_guard import gb_text, memory_verdict, memory_warning, worker_memory
from app.contract.run_config import RunConfig
from app.contract.settings import Settings
from app.runs.memory.estimate import ModelShape, estimate_peak, fits, model_shape

GB = 10**9

# ---- the rule (pure) -------------------------------------------------------------------------------


def test_memory_verdict_below_at_and_above_the_limit() -> None:
    assert not memory_verdict(int(2.9 * GB), 3.0, "stop").crossed
    assert not memory_verdict(3 * GB, 3.0, "stop").crossed  # at the limit is not above it
    warn = memory_verdict(int(3.1 * GB), 3.0, "warn")
    assert warn.crossed and not warn.stop
    stop = memory_verdict(int(3.1 * GB), 3.0, "stop")
    assert stop.crossed and stop.stop
    assert stop.reason == "worker memory 3.1 GB crossed the limit 3 GB"


def test_memory_verdict_without_a_limit_or_a_reading() -> None:
    assert not memory_verdict(100 * GB, None, "stop").crossed
    assert not memory_verdict(None, 1.0, "stop").crossed


def test_worker_memory_prefers_the_footprint_and_gb_text_keeps_small_limits_readable() -> None:
    assert worker_memory(5, 7) == 7 and worker_memory(5, None) == 5 and worker_memory(None, None) is None
    assert gb_text(0.01 * GB) == "0.01 GB" and gb_text(412_345_678) == "0.412 GB" and gb_text(3.1 * GB) == "3.1 GB"


def test_memory_warning_says_what_happens() -> None:
    assert memory_warning(None, 1.0, "warn") is None and memory_warning(GB // 2, 1.0, "warn") is None
    text = memory_warning(2 * GB, 1.0, "warn")
    assert text is not None and "2 GB" in text and "limit 1 GB" in text and "goes on" in text
    assert "stops" in (memory_warning(2 * GB, 1.0, "stop") or "")


def test_memory_limit_config_fields() -> None:
    config = RunConfig.model_validate({"memory_limit_gb": 3.0, "memory_limit_action": "stop"})
    assert config.memory_limit_gb == 3.0 and config.memory_limit_action == "stop"
    assert RunConfig().memory_limit_gb is None and RunConfig().memory_limit_action == "warn"
    for bad in ({"memory_limit_gb": 0}, {"memory_limit_gb": -1}, {"memory_limit_action": "kill"}):
        with pytest.raises(ValueError):
            RunConfig.model_validate(bad)


# ---- the estimate (pure) ---------------------------------------------------------------------------

MISTRAL_7B = ModelShape(weight_bytes=7_248_023_552 * 2, num_layers=32, hidden_size=4096, intermediate_size=14336,
                        num_heads=32, num_kv_heads=8, head_dim=128, vocab_size=32768, act_bytes=2)
LORA_16x7_R8 = 10_485_760  # rank 8 on the seven linears of 16 Mistral-7B blocks, as mlx-lm counts


@pytest.mark.parametrize(("tokens", "grad_checkpoint", "measured_gb"),
                         [(1159, False, 42.0), (1159, True, 35.4), (2048, False, 67.7)])
def test_estimate_matches_the_mistral_7b_figures(tokens: int, grad_checkpoint: bool, measured_gb: float) -> None:
    estimate = estimate_peak(MISTRAL_7B, LORA_16x7_R8, 16, 4, tokens, grad_checkpoint).total_bytes / GB
    assert abs(estimate - measured_gb) / measured_gb < 0.05, estimate


def test_estimate_grows_with_batch_and_length_and_shrinks_with_grad_checkpoint() -> None:
    base = estimate_peak(MISTRAL_7B, LORA_16x7_R8, 16, 4, 1024)
    assert estimate_peak(MISTRAL_7B, LORA_16x7_R8, 16, 8, 1024).total_bytes > base.total_bytes
    assert estimate_peak(MISTRAL_7B, LORA_16x7_R8, 16, 4, 2048).total_bytes > base.total_bytes
    assert estimate_peak(MISTRAL_7B, LORA_16x7_R8, 32, 4, 1024).total_bytes > base.total_bytes
    checkpointed = estimate_peak(MISTRAL_7B, LORA_16x7_R8, 16, 4, 1024, grad_checkpoint=True)
    assert checkpointed.activations < base.activations and checkpointed.weights == base.weights
    on_cpu = replace(MISTRAL_7B, cpu=True, act_bytes=4)
    cpu_base = estimate_peak(on_cpu, LORA_16x7_R8, 16, 4, 1024)
    assert estimate_peak(on_cpu, LORA_16x7_R8, 16, 4, 1024, grad_checkpoint=True).activations < cpu_base.activations / 3
    assert base.trainable_state == LORA_16x7_R8 * 16  # float32 parameter, gradient, two Adam moments
    assert base.weights == 7_248_023_552 * 2


def test_fits_warns_only_above_what_is_free() -> None:
    assert fits(10 * GB, 20 * GB) is None and fits(10 * GB, None) is None
    warning = fits(30 * GB, 20 * GB)
    assert warning is not None and "30.0 GB" in warning and "20.0 GB" in warning


def test_model_shape_reads_the_tiny_model(default_model: Path) -> None:
    info = model_info(str(default_model), Settings())
    shape = model_shape(info, cpu_training=True)
    assert (shape.num_layers, shape.hidden_size, shape.intermediate_size) == (4, 128, 352)
    assert (shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.vocab_size) == (4, 2, 32, 1536)
    assert shape.weight_bytes == info.total_params * 4 and shape.act_bytes == 4
    trainable = trainable_params(info, "lora", 4, 8)
    estimate = estimate_peak(shape, trainable.trainable, trainable.layers_trained, 4, 256)
    measured = 107_663_824  # bench/bench_memory.py: tiny-mistral, batch 4, 256 tokens, 4 layers, rank 8 (CPU)
    assert abs(estimate.total_bytes - measured) / measured < 0.15


# ---- real runs ---------------------------------------------------------------------------------------


def test_tiny_memory_limit_stops_the_run_with_its_reason_and_a_saved_adapter(shared_server: Server,
                                                                             short_data: Path) -> None:
    status, run = shared_server.post("/api/runs", {**QUICK_RUN, "data": str(short_data), "memory_limit_gb": 0.01,
                                                   "memory_limit_action": "stop"})
    assert status == 201, run
    run = shared_server.wait_terminal(run["id"])
    assert run["status"] == "stopped", run
    assert re.fullmatch(r"worker memory [\d.]+ GB crossed the limit 0\.01 GB at iteration 5", run["stop_reason"]), run
    assert run["iteration"] == 5
    checkpoints = shared_server.get(f"/api/runs/{run['id']}/checkpoints")
    assert [c["iteration"] for c in checkpoints] == [5]  # the adapter was saved where it stopped
    train = shared_server.get(f"/api/runs/{run['id']}/metrics")["train"]
    assert train and all(p["rss_bytes"] > 10 * 10**6 for p in train)
    assert all("swap_used_bytes" in p and "footprint_bytes" in p for p in train)
    page = shared_server.request("GET", f"/runs/{run['id']}/status")[2].decode()
    assert 'id="memory-warning"' in page and "above the limit 0.01 GB" in page


def test_memory_limit_warn_keeps_training_and_the_page_warns(shared_server: Server, browser: Browser,
                                                            short_data: Path) -> None:
    status, run = shared_server.post("/api/runs", {**QUICK_RUN, "data": str(short_data), "iters": 20,
                                                   "memory_limit_gb": 0.01})
    assert status == 201, run
    run = shared_server.wait_terminal(run["id"])
    assert run["status"] == "completed" and run["stop_reason"] is None, run
    page = browser.new_page(viewport={"width": 1280, "height": 1100}, extra_http_headers=bearer(shared_server.token))
    try:
        page.goto(f"{shared_server.url}/runs/{run['id']}")
        warning = page.locator("#memory-warning")
        assert "worker memory reached" in warning.inner_text() and "training goes on" in warning.inner_text()
        assert page.locator("#worker-memory").inner_text().endswith("GB")
        page.wait_for_function("document.querySelector('#chart-mem') && document.querySelector('#chart-mem').data"
                               " && document.querySelector('#chart-mem').data.length === 2")
        traces = page.evaluate("document.querySelector('#chart-mem').data.map(t => [t.name, t.y.length,"
                               " Math.max(...t.y)])")
        assert [t[0] for t in traces] == ["MLX peak", "worker"] and traces[0][1] == traces[1][1] == 4
        assert traces[1][2] > 0.01  # the worker's resident memory, in GB
        page.locator("#chart-mem").scroll_into_view_if_needed()
        shot(page, "memory-run-page")
    finally:
        page.close()


def test_new_run_form_shows_the_estimate_and_warns_when_it_does_not_fit(
    shared_server: Server, browser: Browser
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1100}, extra_http_headers=bearer(shared_server.token))
    try:
        page.goto(f"{shared_server.url}/runs/new")
        estimate = page.locator("#memory-estimate")
        estimate.wait_for()
        first = float(estimate.inner_text().strip("≈ GB").replace(",", ""))
        assert first > 0
        assert page.locator("#model-memory-warning, .model-memory-warning").count() == 0
        shot(page, "memory-new-run-estimate")
        batch = int(page.locator("#f-batch_size").input_value())
        huge = batch * math.ceil(2 * psutil.virtual_memory().available / (first * GB))  # twice what is free
        page.locator("#f-batch_size").fill(str(huge))
        page.locator("#f-batch_size").dispatch_event("change")
        page.locator(".model-memory-warning").wait_for()
        assert "more than the" in page.locator(".model-memory-warning").inner_text()
        bigger = float(page.locator("#memory-estimate").inner_text().strip("≈ GB").replace(",", ""))
        assert bigger > first * huge / batch / 2
        shot(page, "memory-new-run-warning")

        # the limit sits in Advanced → Memory and reaches the run's config
        page.locator("#f-batch_size").fill(str(batch))
        page.click("#advanced summary")
        page.locator("#f-memory_limit_gb").fill("2.5")
        page.locator("#f-memory_limit_action").select_option("stop")
        page.locator("#f-memory_limit_gb").scroll_into_view_if_needed()
        shot(page, "memory-new-run-limit")
        click_start(page)
        page.wait_for_url("**/runs/*")
        run_id = int(page.url.rstrip("/").split("/")[-1])
        config = shared_server.get(f"/api/runs/{run_id}")["config"]
        assert (config["memory_limit_gb"], config["memory_limit_action"]) == (2.5, "stop")
        shared_server.post(f"/api/runs/{run_id}/stop")
        shared_server.wait_terminal(run_id)
    finally:
        page.close()
