"""Real headless Chromium (system package) driven by Playwright against a real server and worker."""

from __future__ import annotations

import itertools
import json
import zipfile
from pathlib import Path

import pytest
from conftest import QUICK_RUN, Server, click_start, overfitting_run, points, row_action, shot
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser

def test_start_watch_stop_download_from_the_browser(server: Server, page: Page, short_data: Path,
                                                    tmp_path: Path) -> None:
    page.goto(server.url + "/")
    expect(page.get_by_text("No runs yet")).to_be_visible()
    shot(page, "01-runs-empty")

    page.goto(server.url + "/runs/new")
    expect(page.locator("#f-model")).to_have_value(str(Path(__file__).parent.parent / "data/models/tiny-mistral"))
    page.fill("#f-iters", "100000")  # long enough to stop by hand
    page.fill("#f-data", str(short_data))  # short examples: points come at a third of the work
    page.click("#advanced summary")  # reporting and checkpoint settings live under Advanced
    page.fill("#f-steps_per_report", "5")
    page.fill("#f-save_every", "100000")
    shot(page, "02-new-run-form")
    click_start(page)

    page.wait_for_url("**/runs/*")
    chart = page.locator("#loss-chart")
    expect(chart).to_have_attribute("data-drawn", "true", timeout=30_000)
    page.wait_for_function("Number(document.querySelector('#loss-chart').dataset.trainPoints) >= 2", timeout=60_000)
    first = points(page, "train")
    page.wait_for_function(
        f"Number(document.querySelector('#loss-chart').dataset.trainPoints) > {first}", timeout=60_000
    )
    assert points(page, "train") > first  # the chart gains points without a reload
    assert points(page, "val") >= 1
    expect(page.locator("#run-status-badge")).to_have_text("running")
    shot(page, "03-run-training")

    # Click Stop in the first moment after the status poll replaced the button: the click must not be lost.
    page.evaluate(
        """() => new Promise(resolve => {
            document.body.addEventListener("htmx:afterSwap", function swapped(event) {
                if (event.detail.target.id !== "run-status") return;
                document.body.removeEventListener("htmx:afterSwap", swapped);
                setTimeout(() => { document.querySelector("#stop-button").click(); resolve(); }, 0);
            });
        })"""
    )
    expect(page.locator("#run-status-badge")).to_have_text("stopped", timeout=60_000)
    expect(page.locator("#checkpoint-table tbody tr").first).to_be_visible(timeout=15_000)
    expect(chart).to_have_attribute("data-live", "false", timeout=15_000)
    shot(page, "04-run-stopped")
    row = page.locator("#checkpoint-table tbody tr:not(.row-base)").first
    row.hover()  # the row's hover colour reaches into the sticky Actions cell
    colours = row.evaluate("tr => [getComputedStyle(tr).backgroundColor,"
                           " getComputedStyle(tr.lastElementChild).backgroundColor]")
    assert colours[0] == colours[1] and colours[0] != "rgba(0, 0, 0, 0)", colours

    with page.expect_download() as download_info:
        page.locator("#checkpoint-table a", has_text="Download").first.click()
    download = download_info.value
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    assert target.suffix == ".zip" and target.stat().st_size > 0

    page.goto(server.url + "/")
    expect(page.locator("#runs-table .badge-stopped")).to_have_count(1)
    shot(page, "05-runs-list")


def test_failed_run_shows_its_error(shared_server: Server, page: Page) -> None:
    server = shared_server
    page.goto(server.url + "/runs/new")
    page.fill("#f-model", "/nonexistent/model-folder")
    click_start(page)
    page.wait_for_url("**/runs/*")
    expect(page.locator("#run-status-badge")).to_have_text("failed", timeout=60_000)
    expect(page.locator("#run-error")).to_contain_text("does not exist")
    expect(page.locator("#loss-chart")).to_contain_text("the run reported no losses")
    shot(page, "06-run-failed")


def test_invalid_form_names_the_field_and_creates_nothing(shared_server: Server, page: Page) -> None:
    server = shared_server
    before = server.get("/api/runs")
    page.goto(server.url + "/runs/new")
    page.fill("#f-iters", "0")
    page.fill("#f-learning_rate", "fast")
    click_start(page)
    expect(page.locator(".error-box")).to_contain_text("iters")
    expect(page.locator(".error-box")).to_contain_text("learning_rate")
    shot(page, "07-form-errors")
    assert server.get("/api/runs") == before


def test_deployment_marker_and_download_from_the_checkpoint_table(shared_server: Server, page: Page, short_data: Path,
                                                                   tmp_path: Path) -> None:
    server = shared_server
    status, run = server.post("/api/runs", {**QUICK_RUN, "data": str(short_data), "iters": 30, "steps_per_eval": 10,
                                            "save_every": 10})
    assert status == 201
    server.wait_terminal(run["id"])
    page.goto(f"{server.url}/runs/{run['id']}")
    row = page.locator("#checkpoint-table tr[data-iteration='20']")
    row_action(row, ".deploy-button").click()
    expect(row.locator(".badge", has_text="deployment")).to_be_visible()
    expect(page.locator("#checkpoint-table .badge", has_text="deployment")).to_have_count(1)
    assert [c["iteration"] for c in server.get(f"/api/runs/{run['id']}/checkpoints") if c["is_deployment"]] == [20]

    with page.expect_download() as info:
        row.locator("a", has_text="Download").click()
    target = tmp_path / "deployment.zip"
    info.value.save_as(target)
    with zipfile.ZipFile(target) as archive:
        assert json.loads(archive.read("loraboard.json"))["iteration"] == 20
        assert {"adapters.safetensors", "adapter_config.json", "README.md"} <= set(archive.namelist())
    shot(page, "08-checkpoints-deployment")

    # deleting the deployment checkpoint asks, and a dismissed dialog deletes nothing
    page.once("dialog", lambda dialog: dialog.dismiss())
    row_action(row, ".delete-button").click()
    expect(page.locator("#checkpoint-table tr[data-iteration='20']")).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.accept())
    row_action(page.locator("#checkpoint-table tr[data-iteration='10']"), ".delete-button").click()
    expect(page.locator("#checkpoint-table tr[data-iteration='10']")).to_have_count(0)
    expect(page.locator("#checkpoint-table tr[data-iteration='20'] .badge", has_text="deployment")).to_be_visible()


def test_chart_marks_an_early_stopped_run(shared_server: Server, page: Page, tmp_path: Path) -> None:
    server = shared_server
    status, run = server.post("/api/runs", overfitting_run(tmp_path, short=True))
    assert status == 201
    page.goto(f"{server.url}/runs/{run['id']}")
    expect(page.locator("#run-status-badge")).to_have_text("early stopped", timeout=120_000)
    chart = page.locator("#loss-chart")
    expect(chart).to_have_attribute("data-live", "false", timeout=15_000)
    page.wait_for_function("Number(document.querySelector('#loss-chart').dataset.checkpointMarkers) >= 2")
    expect(page.locator("#loss-chart")).to_contain_text("early stop")
    expect(page.locator("#loss-chart")).to_contain_text("val min")
    expect(page.locator(".notice")).to_contain_text("validation loss has not improved on")
    stopped_at = server.get(f"/api/runs/{run['id']}")["iteration"]
    # the run's end refreshes the checkpoint table at once (not at the next poll): the final one is listed
    expect(page.locator(f"#checkpoint-table tr[data-iteration='{stopped_at}']")).to_have_count(1, timeout=2_000)
    expect(page.locator("#es-apply")).to_have_count(0, timeout=2_000)  # an ended run's rule is no longer editable
    shot(page, "09-early-stopped")

    # smoothing and log scale change what is drawn; the raw line stays as it was
    def trace(name: str) -> list[float]:
        return page.evaluate(
            "(n) => Array.from(document.querySelector('#loss-chart').data.find(t => t.name === n).y)", name)

    raw, smoothed = trace("train loss"), trace("train loss (smoothed)")
    assert len(raw) == len(smoothed) >= 5 and smoothed != raw
    page.locator("#smoothing").fill("0")
    expect(chart).to_have_attribute("data-smoothing", "0")
    assert trace("train loss (smoothed)") == raw and trace("train loss") == raw
    page.locator("#smoothing").fill("0.95")
    expect(chart).to_have_attribute("data-smoothing", "0.95")
    heavy = trace("train loss (smoothed)")
    assert heavy != smoothed and heavy != raw
    # heavier smoothing moves less: the smoothed curve's total variation shrinks
    variation = [sum(abs(b - a) for a, b in itertools.pairwise(ys)) for ys in (raw, heavy)]
    assert variation[1] < variation[0]
    assert page.evaluate("document.querySelector('#loss-chart').layout.yaxis.type") != "log"
    page.check("#log-y")
    expect(chart).to_have_attribute("data-log-y", "true")
    assert page.evaluate("document.querySelector('#loss-chart').layout.yaxis.type") == "log"
    shot(page, "10-smoothing-log-y")


def test_a_missing_page_says_what_is_missing_and_the_api_stays_json(shared_server: Server, page: Page) -> None:
    server = shared_server
    response = page.goto(f"{server.url}/runs/9999")
    assert response is not None and response.status == 404
    expect(page.locator("h1")).to_have_text("Not Found")
    expect(page.locator("#error-detail")).to_have_text("no run with id 9999")
    expect(page.get_by_role("link", name="Back to the runs")).to_be_visible()
    shot(page, "11-missing-run")
    status, body, _ = server.request("GET", "/api/runs/9999")
    assert status == 404 and body == {"detail": "no run with id 9999"}
    status, body, _ = server.request("GET", "/runs/9999")  # a script without Accept: text/html gets JSON
    assert status == 404 and body == {"detail": "no run with id 9999"}
