"""Real Chromium on the runs list (filter, rename, notes, delete), the compare page and the run summary cards."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import QUICK_RUN, Server, shot
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser
SHORT_RUN = {**QUICK_RUN, "iters": 20, "steps_per_eval": 10, "save_every": 10}  # validations at 0, 10, 20


@pytest.fixture(scope="module")
def two_runs(shared_server: Server, short_data: Path) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Two finished quick runs on short examples with different learning rates (and the same batch size)."""
    status, fast = shared_server.post("/api/runs", {**SHORT_RUN, "name": "lr 1e-3", "data": str(short_data)})
    assert status == 201, fast
    status, slow = shared_server.post("/api/runs", {**SHORT_RUN, "name": "lr 2e-4", "learning_rate": 2e-4,
                                                    "data": str(short_data)})
    assert status == 201, slow
    yield shared_server.wait_terminal(fast["id"]), shared_server.wait_terminal(slow["id"])


def chart(page: Page, expression: str) -> Any:
    return page.evaluate(f"(() => {{ const div = document.getElementById('compare-chart'); return {expression}; }})()")


def test_compare_page_overlays_the_runs(shared_server: Server, two_runs: Any, page: Page) -> None:
    fast, slow = two_runs
    page.goto(shared_server.url + "/")
    page.check(f"#compare-{fast['id']}")
    page.check(f"#compare-{slow['id']}")
    page.click("#compare-button")
    page.wait_for_url(re.compile(r"/compare\?ids="))
    div = page.locator("#compare-chart")
    expect(div).to_have_attribute("data-drawn", "true", timeout=30_000)
    assert chart(page, "div.data.length") == 6  # per run: raw, smoothed, validation
    expect(div).to_have_attribute("data-runs-drawn", "2")
    names = chart(page, "div.data.map(t => t.name)")
    assert f"#{fast['id']} lr 1e-3" in names and f"#{slow['id']} lr 2e-4" in names
    colors = chart(page, "div.data.map(t => t.line.color)")
    assert colors[0] == colors[1] == colors[2] != colors[3] == colors[4] == colors[5]  # one color per run
    smooth = names.index(f"#{fast['id']} lr 1e-3")  # the fast run's traces: raw, smooth, val in a row
    raw, val = f"div.data[{smooth - 1}]", f"div.data[{smooth + 1}]"
    metrics = shared_server.get(f"/api/runs/{fast['id']}/metrics")
    assert chart(page, raw + ".y") == [p["train_loss"] for p in metrics["train"]]
    assert chart(page, val + ".y") == [p["val_loss"] for p in metrics["val"]]

    keys = page.locator("#compare-diff tbody tr").evaluate_all("rows => rows.map(r => r.dataset.key)")
    assert "learning_rate" in keys and "batch_size" not in keys
    expect(page.locator("#compare-diff tr[data-key='learning_rate']")).to_contain_text("0.0002")
    expect(page.locator("#compare-runs-table tbody tr")).to_have_count(2)
    shot(page, "compare-two-runs")

    smoothed = chart(page, f"div.data[{smooth}].y")
    assert smoothed != chart(page, raw + ".y")  # smoothing 0.6 by default
    page.locator("#smoothing").fill("0")
    expect(div).to_have_attribute("data-smoothing", "0.00")
    expect(page.locator("#smoothing-value")).to_have_text("0.00")
    assert chart(page, f"div.data[{smooth}].y") == pytest.approx(chart(page, raw + ".y"))  # no smoothing: raw loss
    page.locator("#smoothing").fill("0.9")
    expect(div).to_have_attribute("data-smoothing", "0.90")
    heavier = chart(page, f"div.data[{smooth}].y")
    assert heavier != smoothed and heavier[0] == pytest.approx(metrics["train"][0]["train_loss"])  # debiased start

    assert chart(page, "div.layout.yaxis.type") == "linear"
    page.check("#log-y")
    expect(div).to_have_attribute("data-log-y", "true")
    assert chart(page, "div.layout.yaxis.type") == "log"

    page.select_option("#x-axis", "tokens")
    expect(div).to_have_attribute("data-x-axis", "tokens")
    assert chart(page, raw + ".x") == [p["trained_tokens"] for p in metrics["train"]]
    assert chart(page, "div.layout.xaxis.title.text") == "trained tokens"
    shot(page, "compare-log-tokens")


def test_run_page_shows_the_summary_cards(shared_server: Server, two_runs: Any, page: Page) -> None:
    fast, _ = two_runs
    page.goto(f"{shared_server.url}/runs/{fast['id']}")
    summary = page.locator("#run-summary")
    expect(summary).to_be_visible()
    val = shared_server.get(f"/api/runs/{fast['id']}/metrics")["val"]
    best = min(p["val_loss"] for p in val)
    expect(summary.locator("#summary-best-val .stat-value")).to_have_text(f"{best:,.3f}")
    expect(summary.locator("#summary-improvement .stat-value")).to_have_text(
        f"{100 * (val[0]['val_loss'] - best) / val[0]['val_loss']:.1f}%")
    expect(page.locator("#loss-chart")).to_have_attribute("data-drawn", "true", timeout=30_000)
    shot(page, "run-summary-cards")


def test_runs_list_filter_rename_notes_and_delete(shared_server: Server, two_runs: Any, page: Page) -> None:
    _, slow = two_runs
    page.goto(shared_server.url + "/")
    rows = page.locator("#runs-list tbody tr")
    expect(rows).to_have_count(2)

    page.fill("#runs-search", "2e-4")
    page.wait_for_url(re.compile(r"q=2e-4"))  # the filter is kept in the URL
    expect(rows).to_have_count(1)
    expect(page.locator(f"#run-row-{slow['id']}")).to_be_visible()
    page.select_option("#runs-status", "failed")
    expect(page.locator("#runs-none-match")).to_be_visible()
    page.select_option("#runs-status", "completed")
    expect(rows).to_have_count(1)
    assert "status=completed" in page.url and "q=2e-4" in page.url
    shot(page, "runs-list-filtered")
    page.reload()  # the URL alone restores the filtered list
    expect(page.locator("#runs-search")).to_have_value("2e-4")
    expect(rows).to_have_count(1)

    row = page.locator(f"#run-row-{slow['id']}")
    row.locator(".runs-edit summary").click()
    row.locator("input[name='name']").fill("slow learner")
    row.locator("textarea[name='notes']").fill("lr 2e-4 learns too slowly in 20 steps")
    row.locator("button", has_text="Save").click()
    expect(row.locator(".run-link")).to_have_text("slow learner")
    expect(row.locator(".runs-notes")).to_have_text("lr 2e-4 learns too slowly in 20 steps")
    run = shared_server.get(f"/api/runs/{slow['id']}")
    assert run["name"] == "slow learner" and run["notes"] == "lr 2e-4 learns too slowly in 20 steps"

    row.locator(".runs-edit summary").click()
    row.locator("input[name='name']").fill("   ")
    row.locator("button", has_text="Save").click()
    expect(row.locator(".error")).to_have_text("name must not be blank")
    assert shared_server.get(f"/api/runs/{slow['id']}")["name"] == "slow learner"

    page.fill("#runs-search", "")
    expect(rows).to_have_count(2)
    folder = shared_server.root / "adapters" / f"run-{slow['id']:04d}"
    assert folder.exists()
    page.locator(f"#run-row-{slow['id']} .runs-edit summary").click()
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.locator(f"#run-row-{slow['id']} .runs-delete").click()
    expect(rows).to_have_count(2)
    assert folder.exists()
    messages: list[str] = []

    def accept(dialog: Any) -> None:
        messages.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.locator(f"#run-row-{slow['id']} .runs-delete").click()
    expect(page.locator("#runs-message")).to_contain_text(f"Deleted run #{slow['id']} “slow learner”")
    expect(rows).to_have_count(1)
    assert "cannot be undone" in messages[0]
    assert not folder.exists()
    status, _, _ = shared_server.request("GET", f"/api/runs/{slow['id']}")
    assert status == 404
    shot(page, "runs-list-after-delete")


def test_ticks_survive_the_live_refresh_and_compare_polls_a_live_run(
    shared_server: Server, two_runs: Any, page: Page, short_data: Path
) -> None:
    fast, _ = two_runs
    status, live = shared_server.post("/api/runs", {**QUICK_RUN, "iters": 100_000, "save_every": 100_000,
                                                    "name": "still training", "data": str(short_data)})
    assert status == 201
    try:
        shared_server.wait_for(live["id"], lambda r: r["iteration"] >= 5, what="training")
        page.goto(shared_server.url + "/")
        page.evaluate("window.tableSwaps = 0;"
                      "document.body.addEventListener('htmx:afterSwap', () => window.tableSwaps++)")
        page.check(f"#compare-{fast['id']}")
        page.check(f"#compare-{live['id']}")
        page.wait_for_function("window.tableSwaps >= 1", timeout=30_000)  # the list refreshed itself
        expect(page.locator(f"#compare-{fast['id']}")).to_be_checked()
        expect(page.locator(f"#compare-{live['id']}")).to_be_checked()
        page.locator(f"#run-row-{fast['id']} .runs-edit summary").click()
        expect(page.locator(f"#run-row-{fast['id']} textarea[name='notes']")).to_be_visible()
        shot(page, "runs-list-live-edit")

        page.click("#compare-button")
        div = page.locator("#compare-chart")
        expect(div).to_have_attribute("data-drawn", "true", timeout=30_000)
        expect(div).to_have_attribute("data-live", "true")
        page.wait_for_function("Number(document.getElementById('compare-chart').dataset.draws) >= 2",
                               timeout=30_000)  # fetched again while the run trains
    finally:
        shared_server.post(f"/api/runs/{live['id']}/stop")
    shared_server.wait_terminal(live["id"])
    expect(page.locator("#compare-chart")).to_have_attribute("data-live", "false", timeout=30_000)
