"""The "use this checkpoint" page and the models page in a real Chromium: fuse from the page, watch the progress,
the model appears there and on the models page with its origin; screenshots of both pages."""

from __future__ import annotations

import shutil
import uuid
from typing import Any

import pytest
from conftest import row_action, shot
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("checkpoint_use")]



def test_fuse_from_the_checkpoint_page_then_find_it_on_the_models_page(lora_run: dict[str, Any], page: Page) -> None:
    srv, run_id, iteration = lora_run["server"], lora_run["run_id"], lora_run["iterations"][0]
    name = f"page-fused-{uuid.uuid4().hex[:8]}"
    try:
        page.goto(f"{srv.url}/runs/{run_id}")
        row_action(page.locator(f"#checkpoint-table tr[data-iteration='{iteration}']"), "a.use-link").click()
        expect(page).to_have_url(f"{srv.url}/runs/{run_id}/checkpoints/{iteration}")
        adapter = f"{srv.root}/adapters/run-{run_id:04d}/checkpoints/{iteration:07d}"
        expect(page.locator("#adapter-dir")).to_have_text(adapter)
        generate = page.locator("[data-command-name=generate] pre")
        expect(generate).to_contain_text(f"python -m mlx_lm generate --model {lora_run['model']} --adapter-path "
                                         f"{adapter}")
        expect(page.locator("#try-playground")).to_have_attribute(
            "href", f"/playground?run_id={run_id}&iteration={iteration}")
        page.fill("#fuse-name", "tiny-mistral")
        page.click("#fuse-button")
        expect(page.locator("#fuse-error")).to_contain_text("tiny-mistral already exists; choose another name")
        page.fill("#fuse-name", name)
        page.click("#fuse-button")
        expect(page.locator("#use-fuse .job-progress")).to_be_visible()
        expect(page.locator("#fuse-button")).to_be_disabled()  # one fuse of this checkpoint at a time
        fused = page.locator(f"#fused-models li[data-model-name='{name}']")
        expect(fused).to_be_visible(timeout=300_000)  # the card reloaded itself when the job ended
        expect(fused).to_contain_text(f"fused from run {run_id} @ {iteration}")
        expect(page.locator("#use-fuse .job-progress")).to_have_attribute("data-status", "completed")
        shot(page, "use-checkpoint")

        page.goto(f"{srv.url}/models")
        card = page.locator(f"article.model-card[data-model-name='{name}']")
        expect(card.locator("[data-role=origin]")).to_have_text(f"fused from run {run_id} @ {iteration}")
        expect(card.locator("[data-role=command] pre")).to_contain_text(
            f"python -m mlx_lm fuse --model {lora_run['model']} --adapter-path {adapter} --save-path "
            f"{srv.models_dir.resolve() / name}")
        expect(card.locator("a.archive-link")).to_have_attribute("href", f"/api/models/{name}/archive")
        embedded = page.locator("article.model-card[data-model-name='tiny-mistral']")
        expect(embedded.locator("[data-role=origin]")).to_have_text("local folder")
        embedded.locator(".quantize-form select[name=group_size]").select_option("64")
        embedded.locator(".quantize-form button[type=submit]").click()
        expect(page.locator("#quantize-error")).to_have_text(
            "intermediate_size 352 is not a multiple of group_size 64; 32 works")
        shot(page, "models-page")
    finally:
        shutil.rmtree(srv.models_dir / name, ignore_errors=True)
