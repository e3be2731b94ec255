"""The model picker and its panel in real headless Chromium: local folders, the Hugging Face cache, live counts."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ARTIFACTS, Server, click_start, shot
from playwright.sync_api import Page, expect
from test_modelinfo import MISTRAL_7B, hub_snapshot, mistral_7b_tensors, quantize, write_model

pytestmark = pytest.mark.browser

RANK_FIELD = '[id="f-lora_parameters.rank"]'
LAYERS_FIELD = "#f-num_layers"


@pytest.fixture(scope="module")
def picker_server(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[Server]:
    """Local folders tiny-mistral and acme/tiny-q4 (4-bit); cached hub models acme/tiny and a Mistral-7B shape."""
    root = tmp_path_factory.mktemp("picker")
    shutil.copytree(default_model, root / "models" / "tiny-mistral")
    quantize(default_model, root / "models" / "acme" / "tiny-q4", q_bits=4)
    shutil.copytree(default_model, hub_snapshot(root / "hf", "acme/tiny"))
    write_model(hub_snapshot(root / "hf", "mistralai/Mistral-7B-v0.1", "7231864981174d9bee8c7687c24c8344414eae6b"),
                MISTRAL_7B, mistral_7b_tensors())  # headers with sparse data: the real shapes, no 14 GB written
    server = Server(root, extra_env={"HF_HOME": str(root / "hf"), "LORABOARD_MODELS_DIR": str(root / "models")})
    yield server.start()
    server.stop()


def model_area(page: Page, name: str) -> None:
    """A screenshot of the model field and its panel alone."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator(".field:has(#f-model)").screenshot(path=str(ARTIFACTS / f"{name}.png"))


def trainable_text(server: Server, model: str, num_layers: int, rank: int) -> str:
    info = server.get(f"/api/models/info?model={model}&num_layers={num_layers}&rank={rank}")
    return str(info["trainable"]["text"])


def test_picker_lists_models_and_the_panel_follows_the_form(picker_server: Server, page: Page) -> None:
    page.goto(picker_server.url + "/runs/new")
    trainable = page.locator("#trainable-text")
    expect(trainable).to_be_visible(timeout=30_000)
    default_model = page.locator("#f-model").input_value()
    expect(page.locator("#model-layers")).to_have_text("4")

    local = page.locator('#model-choices optgroup[label="Local folders"] option')
    cached = page.locator('#model-choices optgroup[label="Hugging Face cache"] option')
    expect(local).to_have_count(2)
    expect(local.nth(0)).to_contain_text("acme/tiny-q4")
    expect(local.nth(1)).to_contain_text("tiny-mistral")
    expect(cached).to_have_count(2)
    expect(cached.nth(0)).to_contain_text("acme/tiny")
    expect(cached.nth(1)).to_contain_text("mistralai/Mistral-7B-v0.1")
    expect(page.locator("#model-choice-list option")).to_have_count(4)
    shot(page, "models-01-new-run-form")

    # the rank changes: the count follows, as the API gives it
    num_layers = int(page.locator(LAYERS_FIELD).input_value())
    before = trainable.inner_text()
    page.fill(RANK_FIELD, "32")
    page.locator(RANK_FIELD).dispatch_event("change")
    expected = trainable_text(picker_server, "", num_layers, 32)
    expect(trainable).to_have_text(expected, timeout=30_000)
    assert expected != before
    model_area(page, "models-02-rank-32")

    # a cached hub model picked from the list: its figures, and mlx-lm's for Mistral-7B at rank 8 on 16 layers
    page.select_option("#model-choices", "mistralai/Mistral-7B-v0.1")
    expect(page.locator("#f-model")).to_have_value("mistralai/Mistral-7B-v0.1")
    expect(page.locator("#model-layers")).to_have_text("32", timeout=30_000)
    page.fill(RANK_FIELD, "8")
    page.fill(LAYERS_FIELD, "16")
    page.locator(LAYERS_FIELD).dispatch_event("change")
    expect(trainable).to_have_text("0.145% (10.486M / 7,241.732M)", timeout=30_000)
    expect(page.locator("#model-params")).to_have_text("7,241.732M")
    model_area(page, "models-03-mistral-7b")

    # the quantized local folder
    page.select_option("#model-choices", label=page.locator("#model-choices option", has_text="acme/tiny-q4")
                       .inner_text())
    expect(page.locator("#model-quantization")).to_have_text("4-bit, group 32", timeout=30_000)
    model_area(page, "models-04-quantized")

    # typed: a hub id that is not cached, then a folder that does not exist
    page.fill("#f-model", "acme/not-downloaded")
    page.locator("#f-model").dispatch_event("change")
    error = page.locator("#model-info-error")
    expect(error).to_contain_text("not in the local Hugging Face cache", timeout=30_000)
    expect(error).to_contain_text("offline")
    expect(page.locator("#model-choices")).to_have_value("")
    model_area(page, "models-05-not-cached")
    page.fill("#f-model", "/nowhere/model")
    page.locator("#f-model").dispatch_event("change")
    expect(error).to_contain_text("model folder /nowhere/model does not exist", timeout=30_000)

    # a LoRA key that names a norm: said before Start
    page.fill("#f-model", default_model)
    page.locator("#f-model").dispatch_event("change")
    expect(trainable).to_be_visible(timeout=30_000)
    page.evaluate("document.querySelectorAll('#new-run-form details').forEach((d) => { d.open = true; })")
    keys = page.locator('[name="lora_parameters.keys"]')
    keys.fill("input_layernorm")
    keys.dispatch_event("change")
    expect(page.locator("#model-trainable-error")).to_contain_text("linear and embedding layers only", timeout=30_000)
    model_area(page, "models-06-key-names-a-norm")
    keys.fill("self_attn.q_proj, self_attn.v_proj")
    keys.dispatch_event("change")
    expect(page.locator("#model-trainable")).to_contain_text("on 2 modules", timeout=30_000)


def test_a_model_picked_from_the_list_is_the_run_model(picker_server: Server, page: Page) -> None:
    page.goto(picker_server.url + "/runs/new")
    expect(page.locator("#trainable-text")).to_be_visible(timeout=30_000)
    page.select_option("#model-choices", "acme/tiny")
    expect(page.locator(".model-info-head")).to_contain_text("Hugging Face cache", timeout=30_000)
    page.fill("#f-iters", "4")
    click_start(page)
    page.wait_for_url("**/runs/*")
    run_id = int(page.url.rstrip("/").rsplit("/", 1)[-1])
    run = picker_server.wait_terminal(run_id, timeout=180)
    assert run["config"]["model"] == "acme/tiny" and run["status"] == "completed", run
