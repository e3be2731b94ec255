"""The new-run form in real headless Chromium: Advanced options, validation as you type, warnings, YAML import,
clone, presets, and a run started with advanced options that reports its test loss."""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PROJECT_DIR, QUICK_RUN, Server, click_start, shot
from playwright.sync_api import Page, expect

from app.contract.run_config import RunConfig
from app.contract.settings import Settings
from app.runs.form.fields import FORM_KEYS, form_values
from app.runs.form.presets import REAL_MODEL_DEMO, preset_config

pytestmark = pytest.mark.browser

ADVANCED_YAML = """\
# an mlx_lm lora config with loraboard's own keys
model: {model}
data: {data}
train: true
adapter_path: somewhere/else
fine_tune_type: lora
optimizer: adamw
optimizer_config:
  adamw:
    weight_decay: 0.02
num_layers: 4
batch_size: 4
iters: 20
learning_rate: 1e-3
lr_schedule:
  name: cosine_decay
  arguments: [1e-3, 20]
  warmup: 4
  warmup_init: 1e-5
lora_parameters:
  rank: 4
  scale: 10.0
  dropout: 0.0
  keys: [self_attn.q_proj, self_attn.v_proj]
max_seq_length: 512
grad_accumulation_steps: 2
steps_per_report: 5
steps_per_eval: 10
save_every: 10
val_batches: 5
test: true
test_batches: 3
seed: 3
loraboard:
  name: from yaml
  early_stopping: {{patience: 4, min_delta: 0.0}}
"""


def form_state(page: Page) -> dict[str, Any]:
    """Every named input and select of the form: value, or checked for a checkbox."""
    pairs = page.eval_on_selector_all(
        "#new-run-form input[name], #new-run-form select[name]",
        "els => els.map(e => [e.name, e.type === 'checkbox' ? e.checked : e.value])",
    )
    return {name: value for name, value in pairs if name in FORM_KEYS}


def test_advanced_section_live_errors_and_warnings(shared_server: Server, page: Page) -> None:
    before = len(shared_server.get("/api/runs"))
    page.goto(shared_server.url + "/runs/new")
    expect(page.locator("#f-iters")).to_have_value("300")
    expect(page.locator("#f-steps_per_eval")).to_be_hidden()  # under Advanced, closed
    expect(page.locator("#field-iters .help")).to_contain_text("Blank: 1000")
    expect(page.locator("#iterations-note")).to_contain_text("300 iterations = 1.00 epochs")
    shot(page, "new-run-01-essentials")

    page.click("#advanced summary")
    for group in ("Learning-rate schedule", "LoRA", "Evaluation & checkpoints", "Memory", "Optimizer"):
        expect(page.locator("#advanced legend", has_text=group)).to_be_visible()
    expect(page.locator("#f-steps_per_eval")).to_be_visible()
    expect(page.locator("#field-optimizer_config .optimizer-options")).to_contain_text("weight_decay=0.01")
    shot(page, "new-run-02-advanced-open")

    # a bad value shows its error next to the field before anything is submitted
    page.fill("#f-iters", "0")
    expect(page.locator("#err-iters")).to_have_text("iters must be at least 1")
    page.fill("#f-lora_parameters\\.dropout", "1.5")
    expect(page.locator("#err-lora_parameters-dropout")).to_contain_text("less than 1")
    page.select_option("#f-optimizer", "adam")
    page.fill("#f-optimizer_config", "weight_decay=0.1")
    expect(page.locator("#err-optimizer_config")).to_contain_text("adam has no option weight_decay")
    expect(page.locator("#config-problems")).to_contain_text("3 to fix before starting")
    shot(page, "new-run-03-live-errors")
    page.fill("#f-iters", "300")
    page.fill("#f-lora_parameters\\.dropout", "0")
    page.fill("#f-optimizer_config", "")
    expect(page.locator("#err-iters")).to_be_empty()
    expect(page.locator("#config-problems")).to_have_count(0)

    # a warning (not a refusal) when checkpoints fall between validations; epochs show as iterations
    page.fill("#f-steps_per_eval", "50")
    page.fill("#f-save_every", "30")
    expect(page.locator("#config-warnings")).to_contain_text("save_every (30) is not a multiple of steps_per_eval "
                                                             "(50)")
    page.fill("#f-epochs", "2")
    expect(page.locator("#iterations-note")).to_contain_text("2 epochs = 600 iterations")
    page.locator("#config-warnings").scroll_into_view_if_needed()
    shot(page, "new-run-04-warnings")

    # the server checks again on submit: a 422 page names the field, keeps the warnings, creates nothing
    page.fill("#f-batch_size", "0")
    click_start(page)
    expect(page.locator(".error-box")).to_contain_text("batch_size")
    expect(page.locator("#f-batch_size")).to_have_value("0")
    expect(page.locator("#f-epochs")).to_have_value("2")
    expect(page.locator("#config-warnings")).to_contain_text("save_every (30) is not a multiple")
    shot(page, "new-run-05-submitted-errors")
    assert len(shared_server.get("/api/runs")) == before
    page.fill("#f-batch_size", "4")
    page.fill("#f-data", "/nonexistent/data-folder")
    expect(page.locator("#err-data")).to_contain_text("does not exist")
    assert len(shared_server.get("/api/runs")) == before


def test_yaml_import_then_run_with_advanced_options_and_export(shared_server: Server, page: Page,
                                                               default_model: Any, short_data: Path) -> None:
    text = ADVANCED_YAML.format(model=default_model, data=short_data)
    page.goto(shared_server.url + "/runs/new")
    page.click("#yaml-import summary")
    page.fill("#yaml-text", "iters: 0\nlearning_rte: 1e-5\n")
    page.click("#yaml-load")
    expect(page.locator("#yaml-errors")).to_contain_text("line 1, column 1: iters: Input should be greater than")
    expect(page.locator("#yaml-errors")).to_contain_text("line 2, column 1: learning_rte: unknown key")
    expect(page.locator("#f-iters")).to_have_value("300")  # the form is left as it was
    shot(page, "new-run-06-yaml-errors")

    page.set_input_files("#yaml-file", files=[{"name": "short.yaml", "mimeType": "application/yaml",
                                                "buffer": b"iters: 77\nbatch_size: 2\ntrain: true\n"
                                                          b"data: /nonexistent/yaml-data\n"}])
    page.click("#yaml-load")
    expect(page.locator("#form-notice")).to_contain_text("Loaded 3 settings from short.yaml")
    expect(page.locator("#f-iters")).to_have_value("77")
    expect(page.locator("#f-batch_size")).to_have_value("2")
    expect(page.locator("#err-data")).to_contain_text("/nonexistent/yaml-data does not exist")  # said at once

    page.click("#yaml-import summary")
    page.fill("#yaml-text", text)
    page.click("#yaml-load")
    expect(page.locator("#form-notice")).to_contain_text("Loaded")
    expect(page.locator("#yaml-ignored")).to_contain_text("adapter_path")
    assert form_state(page) == form_values(RunConfig.model_validate(_flatten_yaml(text)))
    expect(page.locator("#f-optimizer_config")).to_have_value("weight_decay=0.02")
    expect(page.locator("#f-lora_parameters\\.keys")).to_have_value("self_attn.q_proj, self_attn.v_proj")
    shot(page, "new-run-07-yaml-loaded")

    click_start(page)
    page.wait_for_url("**/runs/*")
    run_id = int(page.url.rstrip("/").split("/")[-1])
    run = shared_server.wait_terminal(run_id)
    assert run["status"] == "completed", run
    assert isinstance(run["test_loss"], float) and 0 < run["test_loss"] < 20
    config = run["config"]
    assert config["optimizer_config"] == {"adamw": {"weight_decay": 0.02}}
    assert config["lr_schedule"]["warmup"] == 4 and config["grad_accumulation_steps"] == 2
    lrs = [p["learning_rate"] for p in shared_server.get(f"/api/runs/{run_id}/metrics")["train"]]
    assert lrs[0] < 1e-3  # optimizer updates 0..2 of a 4-update warm-up (2 batches per update)

    status, _, raw = shared_server.request("GET", f"/api/runs/{run_id}/config.yaml")
    assert status == 200
    original, exported = yaml.safe_load(text), yaml.safe_load(raw)
    assert set(original) <= set(exported)
    assert set(original["loraboard"]) <= set(exported["loraboard"])
    for key, value in original.items():
        if key not in ("adapter_path", "loraboard", "learning_rate", "lr_schedule"):
            assert exported[key] == value, key
    assert exported["adapter_path"] == "adapters"
    assert exported["loraboard"]["name"] == "from yaml"
    assert exported["loraboard"]["early_stopping"] == original["loraboard"]["early_stopping"]
    assert exported["lr_schedule"] == {"name": "cosine_decay", "arguments": [1e-3, 20.0], "warmup": 4,
                                       "warmup_init": 1e-5}


def _flatten_yaml(text: str) -> dict[str, Any]:
    """The YAML's RunConfig payload (loraboard's keys lifted, managed keys dropped), as the form should show it."""
    document = yaml.safe_load(text)
    own = document.pop("loraboard")
    for key in ("train", "adapter_path"):
        document.pop(key)
    return {**document, **own}


def test_clone_prefills_every_field(shared_server: Server, page: Page, short_data: Path) -> None:
    config = {**QUICK_RUN, "data": str(short_data), "iters": 10, "name": "to clone", "fine_tune_type": "dora",
              "optimizer": "sgd", "optimizer_config": {"sgd": {"momentum": 0.9, "nesterov": True}},
              "lr_schedule": {"name": "linear_schedule", "arguments": [1e-3, 1e-4, 10], "warmup": 2,
                              "warmup_init": 1e-6},
              "lora_parameters": {"rank": 6, "scale": 12.0, "dropout": 0.1, "keys": ["mlp.up_proj"]},
              "grad_accumulation_steps": 2, "grad_checkpoint": True, "full_val_at_checkpoints": True,
              "steps_per_eval": 6, "save_every": 6, "val_batches": -1, "seed": 11, "test": True, "test_batches": 2,
              "early_stopping": {"patience": 5, "min_delta": 0.002}, "epochs": 0.125}
    status, run = shared_server.post("/api/runs", config)
    assert status == 201, run
    assert run["config"]["iters"] == 7  # 0.125 epochs of 200 examples in batches of 4 (rounded up)
    page.goto(f"{shared_server.url}/runs/{run['id']}")
    page.click("#clone-button")
    page.wait_for_url("**/runs/new?from_run=*")
    expect(page.locator("#form-notice")).to_contain_text(f"Settings copied from run #{run['id']}")
    stored = RunConfig.model_validate({**run["config"], "name": ""})
    assert form_state(page) == form_values(stored)  # every field, the advanced ones too
    state = form_state(page)
    assert state["optimizer_config"] == "momentum=0.9, nesterov=true"
    assert state["lr_schedule.name"] == "linear_schedule" and state["lr_schedule.arguments"] == "0.001, 0.0001, 10"
    assert state["early_stopping.enabled"] is True and state["early_stopping.patience"] == "5"
    assert state["epochs"] == "0.125" and state["test"] is True and state["grad_checkpoint"] is True
    page.click("#advanced summary")
    shot(page, "new-run-08-cloned")
    shared_server.wait_terminal(run["id"])

    # continuing the run from a checkpoint prefills the same settings plus resume_from, Advanced open
    page.goto(f"{shared_server.url}/runs/new?from_run={run['id']}&resume_iteration=6")
    expect(page.locator("#form-notice")).to_contain_text("from its checkpoint at iteration 6")
    expect(page.locator("#f-resume_from\\.run_id")).to_be_visible()
    state = form_state(page)
    assert (state["resume_from.run_id"], state["resume_from.iteration"]) == (str(run["id"]), "6")
    assert state["optimizer_config"] == "momentum=0.9, nesterov=true" and state["epochs"] == ""


def test_a_refused_folder_trains_after_one_click_and_is_refused_once_removed(
    shared_server: Server, page: Page, short_data: Path,
) -> None:
    """Own data outside every folder loraboard reads: the data field refuses it, with Allow this folder beside the
    refusal; one click, no restart, and the run trains on it. Removed on the Datasets page, it is refused again."""
    outside = Path(tempfile.mkdtemp(prefix="loraboard-mine-"))  # not under the server's allowed folders
    try:
        data = outside / "data"
        shutil.copytree(short_data, data)
        page.on("dialog", lambda dialog: dialog.accept())  # Remove asks first
        page.goto(f"{shared_server.url}/runs/new")
        page.fill("#f-data", str(data))
        page.fill("#f-iters", "10")
        error = page.locator("#err-data")
        expect(error).to_contain_text(f"allow {data.resolve()} with Allow this folder")
        expect(page.locator("#new-run-form").get_by_text("outside the folders loraboard reads")).to_have_count(1)
        shot(page, "new-run-refused-folder")
        # the click, then at once what a form check answering meanwhile does (the click also ends the edit of a
        # field, which asks for one): htmx swaps the refusal, button and all, while the allow request is on its way
        page.evaluate("""() => {
            const error = document.getElementById('err-data');
            error.querySelector('[data-role=allow-folder]').click();
            htmx.swap(error, error.outerHTML, {swapStyle: 'outerHTML'});
        }""")
        expect(error).to_have_text("")  # the form asks again at once: allowed
        click_start(page)
        page.wait_for_url(re.compile(r"/runs/\d+$"))
        run = shared_server.wait_terminal(int(page.url.rsplit("/", 1)[1]))
        assert run["status"] == "completed" and run["config"]["data"] == str(data.resolve()), run

        page.goto(f"{shared_server.url}/datasets")
        row = page.locator("#allowed-folders tr", has_text=str(data.resolve()))
        expect(row).to_have_count(1)
        shot(page, "datasets-allowed-folders")
        row.locator(".folder-remove").click()
        expect(page.locator("#allowed-folders-message")).to_contain_text("is no longer allowed")
        status, body = shared_server.post("/api/runs", {**QUICK_RUN, "data": str(data)})
        assert status == 422 and "outside the folders loraboard reads" in str(body), body
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_the_form_shows_an_example_as_the_trainer_sees_it_for_the_chosen_model(shared_server: Server,
                                                                                page: Page) -> None:
    """Opened, the example is the first training line through the form's model's chat template, with the tokens it
    trains on; another model or mask_prompt shows it again."""
    page.goto(f"{shared_server.url}/runs/new")
    example = page.locator("#form-example")
    example.locator("summary").click()
    tokens = example.locator("[data-role=tokens]")
    expect(tokens).to_contain_text("tokens are trained on")
    expect(example.locator("pre")).to_contain_text("<|assistant|>")  # the embedded model's template
    expect(example.locator("pre .seg-prompt")).to_have_count(0)  # the form's default: no mask
    whole = tokens.inner_text()
    smollm2 = PROJECT_DIR / "data" / "models" / "smollm2-135m-instruct"
    if smollm2.is_dir():
        page.fill("#f-model", str(smollm2))
        page.locator("#f-model").dispatch_event("change")
        expect(example.locator("pre")).to_contain_text("<|im_start|>assistant")  # SmolLM2's ChatML
        expect(tokens).not_to_have_text(whole)
    page.locator("#advanced > summary").click()
    page.check("#f-mask_prompt")
    expect(example.locator("pre .seg-prompt")).to_have_count(1)  # the prompt is masked
    shot(page, "new-run-example")


def test_a_preset_fills_the_form_in_one_click(shared_server: Server, page: Page) -> None:
    """The Real model demo preset: one click on its button fills every field with its settings (SmolLM2 under the
    server's models folder, the sample data, LoRA on the last 4 blocks, the prompt masked, early stopping on)."""
    page.goto(f"{shared_server.url}/runs/new")
    preset = page.locator('#run-presets .preset[data-preset="real-model-demo"]')
    expect(preset).to_contain_text("SmolLM2-135M-Instruct (float32)")
    preset.locator("a.btn").click()
    page.wait_for_url("**/runs/new?preset=real-model-demo")
    expect(page.locator("#form-notice")).to_contain_text("The form holds the preset Real model demo")
    settings = Settings(models_dir=shared_server.models_dir)
    assert form_state(page) == form_values(preset_config(REAL_MODEL_DEMO, settings))
    state = form_state(page)
    assert state["model"] == str(shared_server.models_dir / "smollm2-135m-instruct")
    assert state["mask_prompt"] is True and state["num_layers"] == "4" and state["fine_tune_type"] == "lora"
    assert state["early_stopping.enabled"] is True and state["data"].endswith("contact-center")
    shot(page, "new-run-09-preset")
    page.goto(f"{shared_server.url}/runs/new?preset=no-such-preset")
    expect(page.locator("#form-notice")).to_contain_text("There is no preset named 'no-such-preset'")
    assert form_state(page)["model"].endswith("tiny-mistral")


def test_a_check_the_browser_drops_mid_request_leaves_no_traceback(shared_server: Server) -> None:
    """The form's live check drops the request in flight as the user types on: the server reads a body that never
    comes, and says nothing about it."""
    log = shared_server.root / "server.log"
    start = log.stat().st_size
    with socket.create_connection(("127.0.0.1", shared_server.port), timeout=10) as sock:
        sock.sendall(f"POST /runs/new/check HTTP/1.1\r\nHost: 127.0.0.1:{shared_server.port}\r\n"
                     "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 4000\r\n\r\n"
                     "model=data%2Fmodels&iters=1".encode())
        time.sleep(0.5)  # the route is reading the body
    time.sleep(1.5)  # the server notices the closed connection at once, and would log it now
    with log.open("rb") as handle:
        handle.seek(start)
        written = handle.read().decode(errors="replace")
    assert "Traceback" not in written and "ClientDisconnect" not in written, written
