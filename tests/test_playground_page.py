"""The playground page in a real Chromium: a checkpoint's Try link opens it with the column picked, two columns
stream at the same time with their figures, a prompt fills from the run's test split, the prompts are saved as a
set answered by a checkpoint on the set's page, and Release memory ends the playground job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import TERMINAL, Server, shot

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("checkpoint_use")]

RECORD = """() => { window.samples = [];
  window.sampler = setInterval(() => window.samples.push(
    [...document.querySelectorAll('#playground-answers .playground-answer')].map(
      box => [box.querySelector('.playground-text').textContent.length, box.dataset.done === 'true'])), 5); }"""


def user_message(data: Path, split: str, line: int) -> str:
    example = json.loads((data / f"{split}.jsonl").read_text().splitlines()[line - 1])
    return [m["content"] for m in example["messages"] if m["role"] == "user"][-1]


def live_playground(server: Server) -> list[dict[str, Any]]:
    return [j for j in server.get("/api/jobs?kind=playground") if j["status"] not in TERMINAL]


@pytest.fixture(scope="module")
def released(lora_run: dict[str, Any]) -> Any:
    """The run; afterwards no playground job is left holding the model."""
    yield lora_run
    server: Server = lora_run["server"]
    for job in live_playground(server):
        server.post(f"/api/jobs/{job['id']}/cancel")


def test_two_columns_stream_side_by_side(released: dict[str, Any], page: Page) -> None:
    server: Server = released["server"]
    run_id, final = released["run_id"], released["iterations"][-1]
    page.goto(f"{server.url}/runs/{run_id}")
    page.locator(f'#checkpoint-table tr[data-iteration="{final}"] a.try-link').click()
    expect(page).to_have_url(f"{server.url}/playground?run_id={run_id}&iteration={final}")
    columns = page.locator('select[name="column"]')
    expect(columns.nth(0)).to_have_value("base")
    expect(columns.nth(1)).to_have_value(f"{run_id}:{final}")
    page.select_option("#playground-example-split", "test")
    page.fill("#playground-example-line", "2")
    page.click("#playground-example-fill")
    expect(page.locator("#playground-example-note")).to_contain_text(f"test.jsonl line 2 of run {run_id}")
    expect(page.locator("#playground-text")).to_have_value(user_message(released["data"], "test", 2))
    page.fill("#playground-text", "Write a short note to a customer whose parcel is late.")
    page.fill('input[name="max_tokens"]', "64")
    page.evaluate(RECORD)
    page.click("#playground-generate")
    answers = page.locator("#playground-answers")
    expect(answers).to_have_attribute("data-status", "completed", timeout=120_000)
    samples = page.evaluate("clearInterval(window.sampler), window.samples")
    streaming = [s for s in samples if len(s) == 2 and not s[0][1] and not s[1][1] and s[0][0] and s[1][0]]
    assert len(streaming) >= 2, samples[-5:]
    first, last = streaming[0], streaming[-1]
    assert last[0][0] > first[0][0] and last[1][0] > first[1][0], (first, last)  # both grew, neither had ended
    for box in (answers.locator('[data-column="0"]'), answers.locator('[data-column="1"]')):
        expect(box).to_have_attribute("data-done", "true")
        figures = box.locator(".playground-figures")
        expect(figures).to_contain_text("tokens/s · first token after")
        assert float(figures.get_attribute("data-tps") or 0) > 0
        assert float(figures.get_attribute("data-first-token-s") or 0) > 0
    expect(answers.locator(".playground-answer-head").nth(1)).to_have_text(f"run {run_id} · iteration {final}")
    texts = answers.locator(".playground-text").all_text_contents()
    assert texts[0] and texts[1] and texts[0] != texts[1]
    expect(page.locator("#playground-job")).to_have_attribute("data-status", "running")
    expect(page.locator("#playground-job [data-role=detail]")).to_contain_text("loaded")
    expect(page.locator("#playground-kept li")).to_have_count(1)
    shot(page, "playground-two-columns")


def test_kept_prompts_become_a_set_answered_on_its_page(released: dict[str, Any], page: Page) -> None:
    server: Server = released["server"]
    run_id, first = released["run_id"], released["iterations"][0]
    page.goto(f"{server.url}/playground?run_id={run_id}&iteration={first}")
    page.fill("#playground-system", "Be brief.")
    page.fill("#playground-text", "Where is my <b>order</b>?")
    page.click("#playground-keep")
    page.fill("#playground-text", "Can I change my plan?")
    page.click("#playground-keep")
    expect(page.locator("#playground-kept li")).to_have_count(2)
    page.select_option("#playground-set-run", str(run_id))
    page.fill("#playground-set-name", "page set")
    page.click("#playground-set-save")
    page.locator("#playground-set-link").click()
    expect(page.locator("h1")).to_have_text("Prompt set: page set")
    expect(page.locator("#prompt-set-table tbody tr")).to_have_count(2)
    expect(page.locator(".prompt-set-prompt").first).to_contain_text("Where is my <b>order</b>?")  # as text
    page.select_option("#prompt-set-column", f"{run_id}:{first}")
    page.fill('#prompt-set-run input[name="max_tokens"]', "8")
    page.click("#prompt-set-run-button")
    expect(page.locator("#prompt-set-outputs")).to_have_attribute("data-columns", "1")
    expect(page.locator("#prompt-set-outputs")).to_have_attribute("data-live", "false", timeout=120_000)
    cells = page.locator(".prompt-set-cell")
    expect(cells).to_have_count(2)
    for cell in cells.all():
        assert cell.get_attribute("data-status") == "completed"
        assert cell.locator(".prompt-set-text").text_content()
    expect(page.locator("#prompt-set-table thead th").nth(2)).to_have_text(f"run {run_id} · iteration {first}")
    shot(page, "playground-prompt-set")


def test_release_memory_button_ends_the_playground_job(released: dict[str, Any], page: Page) -> None:
    server: Server = released["server"]
    live = live_playground(server)
    if not live:  # load it: one short answer
        status, _ = server.post("/api/generate", {"prompt": "hello", "max_tokens": 2, "stream": False})
        assert status == 200
        live = live_playground(server)
    assert len(live) == 1, live
    page.goto(f"{server.url}/playground")
    expect(page.locator("#playground-job")).to_have_attribute("data-status", "running")
    shot(page, "playground-job-loaded")
    page.click("#playground-release")
    expect(page.locator("#playground-idle")).to_contain_text("No model loaded", timeout=60_000)
    assert server.get(f"/api/jobs/{live[0]['id']}")["status"] == "stopped"
    assert live_playground(server) == []
