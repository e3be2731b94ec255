"""The run page fed by server-sent events, in real headless Chromium against a real server and real workers:
the chart gains points by stream (no polling), resumes after a server restart or a stream the server ended,
the tab title follows the run, and a watched run's end shows one browser notification."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CONTEXT, QUICK_RUN, Server, bearer, points, shot
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect

from app.runs.live.stream import tab_title

pytestmark = pytest.mark.browser

# Records every Notification the page constructs (the real one is still shown) and every stream state.
RECORDER = """
(() => {
  window.__notifications = [];
  window.__streamStates = [];
  const Real = window.Notification;
  if (typeof Real === "function") {
    class Recorded extends Real {
      constructor(title, options) {
        window.__notifications.push({ title: title, body: (options && options.body) || "" });
        super(title, options);
      }
    }
    window.Notification = Recorded;
  }
  document.addEventListener("DOMContentLoaded", () => {
    const div = document.getElementById("loss-chart");
    if (!div) return;
    const record = () => {
      const states = window.__streamStates, state = div.dataset.streamState;
      if (states[states.length - 1] !== state) states.push(state);
    };
    record();
    new MutationObserver(record).observe(div, { attributes: true, attributeFilter: ["data-stream-state"] });
    // Every count of drawn train points while the run is live, and every title the tab had: a run may end
    // between two reads from the test, so the test reads what the page went through instead.
    window.__livePoints = [];
    window.__titles = [document.title];
    new MutationObserver(() => {
      if (div.dataset.live === "true") window.__livePoints.push(Number(div.dataset.trainPoints));
    }).observe(div, { attributes: true, attributeFilter: ["data-train-points"] });
    new MutationObserver(() => window.__titles.push(document.title))
      .observe(document.querySelector("title"), { childList: true, characterData: true, subtree: true });
  });
})();
"""

LONG_RUN: dict[str, Any] = {**QUICK_RUN, "iters": 100_000, "steps_per_report": 1, "steps_per_eval": 25,
                            "save_every": 100_000}


def live_context(browser: Browser, server: Server, notifications: bool) -> BrowserContext:
    context = browser.new_context(**CONTEXT, extra_http_headers=bearer(server.token))
    if notifications:
        context.grant_permissions(["notifications"], origin=server.url)
    context.add_init_script(RECORDER)
    return context


@pytest.fixture
def context(browser: Browser, shared_server: Server) -> Iterator[BrowserContext]:
    context = live_context(browser, shared_server, notifications=True)
    yield context
    context.close()


def chart_iterations(page: Page) -> tuple[list[int], list[int]]:
    """The iterations drawn in the chart's raw train trace and its validation trace (from Plotly's data)."""
    return tuple(page.evaluate(  # type: ignore[return-value]
        "() => { const d = document.getElementById('loss-chart').data;"
        " return [d[0].customdata.map(c => c[0]), d[1].customdata.map(c => c[0])]; }"))


def api_iterations(server: Server, run_id: int) -> tuple[list[int], list[int]]:
    metrics = server.get(f"/api/runs/{run_id}/metrics")
    return [p["iteration"] for p in metrics["train"]], [p["iteration"] for p in metrics["val"]]


def shot_with_title(page: Page, name: str) -> None:
    """A screenshot with the tab's title shown in a bar over the page (headless Chromium draws no tabs)."""
    page.evaluate("""() => {
      const bar = document.createElement("div");
      bar.id = "test-title-bar";
      bar.textContent = "tab title: " + document.title;
      bar.style.cssText = "position:fixed;top:0;left:0;right:0;z-index:99;padding:6px 12px;" +
        "background:#fef9c3;border-bottom:1px solid #ca8a04;font:14px sans-serif;color:#1e293b";
      document.body.appendChild(bar);
    }""")
    shot(page, name)
    page.evaluate("() => document.getElementById('test-title-bar').remove()")


def wait_for_the_end(page: Page, server: Server, run_id: int) -> None:
    """Until the chart says the run is over; if it never does, the failure says what the run and its server did."""
    try:
        expect(page.locator("#loss-chart")).to_have_attribute("data-live", "false", timeout=120_000)
    except AssertionError as error:
        run = server.get(f"/api/runs/{run_id}")
        raise AssertionError(f"the chart still says live; the run: {run}\nthe server's log ends:\n{server.log_tail()}"
                             ) from error


def wait_more_points(page: Page, than: int) -> None:
    page.wait_for_function(f"Number(document.querySelector('#loss-chart').dataset.trainPoints) > {than}",
                           timeout=120_000)


def test_chart_streams_points_title_follows_and_the_end_notifies(
    shared_server: Server, context: BrowserContext, short_data: Path
) -> None:
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    status, run = shared_server.post("/api/runs", {**QUICK_RUN, "name": "live-demo", "data": str(short_data),
                                                   "iters": 80, "steps_per_report": 2, "steps_per_eval": 20,
                                                   "save_every": 40})
    assert status == 201
    page.goto(f"{shared_server.url}/runs/{run['id']}")
    chart = page.locator("#loss-chart")
    expect(chart).to_have_attribute("data-stream-state", "open", timeout=30_000)
    expect(page.locator("#notify")).to_have_attribute("data-permission", "granted")
    expect(page.locator("#notify-state")).to_contain_text("You will be notified when this run ends")
    wait_more_points(page, 1)
    shot_with_title(page, "live-01-streaming")

    wait_for_the_end(page, shared_server, run["id"])
    live_points = page.evaluate("window.__livePoints")
    assert len(set(live_points)) >= 2, live_points  # the chart gained points while the run trained
    running = re.compile(r"^\u25b6 running \d+\.\d{3} \u00b7 live-demo \u00b7 loraboard$")
    titles = page.evaluate("window.__titles")
    assert any(running.match(title) for title in titles), titles  # the tab's title followed the run
    expect(chart).to_have_attribute("data-stream-state", "closed")
    final = shared_server.get(f"/api/runs/{run['id']}")
    assert final["status"] == "completed"
    metrics = shared_server.get(f"/api/runs/{run['id']}/metrics")
    title = tab_title("completed", metrics["train"][-1]["train_loss"], "live-demo")
    expect(page).to_have_title(title)  # the page's title, built in the browser, as the server builds it
    assert chart_iterations(page) == api_iterations(shared_server, run["id"])  # every point, once

    notes = page.evaluate("window.__notifications")
    assert len(notes) == 1, notes
    assert notes[0]["title"] == "\u2713 completed \u00b7 live-demo"
    best = final["best_checkpoint"]
    assert f"best val loss {best['val_loss']:.3f} at iteration {best['iteration']}" in notes[0]["body"]
    expect(page.locator("#notify")).to_be_hidden()  # only while live
    # the Evaluate card, opened before the first checkpoint, lists every checkpoint once the run has ended
    landed = shared_server.get(f"/api/runs/{run['id']}/checkpoints")
    expect(page.locator("#evaluation-form input[name=iteration]")).to_have_count(len(landed), timeout=15_000)
    assert errors == [], errors

    run_path = f"/api/runs/{run['id']}"
    assert sum("/metrics" in url for url in requests) == 1  # the first overview only: no polling
    assert sum(url.endswith(run_path) for url in requests) == 0  # nor status polling
    assert sum(f"{run_path}/events" in url for url in requests) >= 1
    shot_with_title(page, "live-02-ended")

    requests.clear()
    page.reload()
    expect(page).to_have_title(title)  # rendered by the server for an ended run
    expect(chart).to_have_attribute("data-drawn", "true", timeout=30_000)
    expect(chart).to_have_attribute("data-stream-state", "closed")
    assert not [url for url in requests if "/events" in url]  # an ended run's page opens no stream
    assert len(page.evaluate("window.__notifications")) == 0  # and notifies nothing

    # the loss axis shows the training: the base model's validation (iteration 0, far above) is left out of its
    # range until the user asks (a double-click shows everything)
    base = [p["val_loss"] for p in metrics["val"] if p["iteration"] == 0]
    assert base, metrics["val"]  # the run validates before its first step
    top = "() => document.getElementById('loss-chart')._fullLayout.yaxis.range[1]"
    highest = max([p["train_loss"] for p in metrics["train"]] + [p["val_loss"] for p in metrics["val"][1:]])
    expect(chart).to_have_attribute("data-y-fit", "training")
    assert highest <= page.evaluate(top) < base[0], (highest, page.evaluate(top), base[0])
    chart.dblclick()
    expect(chart).to_have_attribute("data-y-fit", "user")
    page.wait_for_function(f"({top})() >= {base[0]}")


def test_chart_resumes_after_a_server_restart_with_no_gap_and_no_duplicate(browser: Browser,
                                                                           shared_server: Server) -> None:
    server = shared_server
    context = live_context(browser, server, notifications=False)
    page = context.new_page()
    try:
        status, run = server.post("/api/runs", LONG_RUN)
        assert status == 201
        page.goto(f"{server.url}/runs/{run['id']}")
        chart = page.locator("#loss-chart")
        expect(chart).to_have_attribute("data-stream-state", "open", timeout=30_000)
        page.click("#notify-button")  # headless Chromium answers "denied" when not granted beforehand
        expect(page.locator("#notify")).to_have_attribute("data-permission", "denied")
        expect(page.locator("#notify-button")).to_be_disabled()
        expect(page.locator("#notify-state")).to_contain_text("Notifications are blocked for this site")
        wait_more_points(page, 3)

        def while_down() -> None:
            expect(chart).to_have_attribute("data-stream-state", "reconnecting", timeout=30_000)
            expect(page.locator("#stream-hint")).to_be_visible()
            shot(page, "live-03-reconnecting")

        server.restart(while_down)  # the server only: the worker trains on
        expect(chart).to_have_attribute("data-stream-state", "open", timeout=60_000)
        expect(page.locator("#stream-hint")).to_be_hidden()
        wait_more_points(page, points(page, "train"))  # points arrive again, by the new server's stream
        states = page.evaluate("window.__streamStates")
        assert states[:2] == ["connecting", "open"] and "reconnecting" in states and states[-1] == "open", states

        server.post(f"/api/runs/{run['id']}/stop")
        expect(chart).to_have_attribute("data-live", "false", timeout=60_000)
        assert server.get(f"/api/runs/{run['id']}")["status"] == "stopped"
        train, val = chart_iterations(page)
        assert (train, val) == api_iterations(server, run["id"])  # same count, no gap, no duplicate
        assert len(train) == len(set(train)) > 5 and len(val) >= 1
        expect(page).to_have_title(re.compile(r"^\u25a0 stopped \d+\.\d{3} \u00b7 "))
        shot_with_title(page, "live-04-stopped-after-restart")
    finally:
        context.close()


def test_chart_resumes_when_the_server_ends_the_stream(shared_server: Server, context: BrowserContext) -> None:
    page = context.new_page()
    streams: list[str] = []

    def time_limited(route: Route) -> None:  # every stream the page opens is ended by the server after 2 s
        streams.append(route.request.url)
        route.continue_(url=route.request.url + "&max_s=2")

    page.route(re.compile(r"/api/runs/\d+/events"), time_limited)
    status, run = shared_server.post("/api/runs", LONG_RUN)
    assert status == 201
    page.goto(f"{shared_server.url}/runs/{run['id']}")
    chart = page.locator("#loss-chart")
    wait_more_points(page, 3)
    page.wait_for_function("() => window.__streamStates.filter(s => s === 'reconnecting').length >= 2",
                           timeout=60_000)
    wait_more_points(page, points(page, "train"))
    shared_server.post(f"/api/runs/{run['id']}/stop")
    expect(chart).to_have_attribute("data-live", "false", timeout=60_000)
    assert len(streams) >= 3
    train, val = chart_iterations(page)
    assert (train, val) == api_iterations(shared_server, run["id"])
    assert len(train) == len(set(train)) > 5
    notes = page.evaluate("window.__notifications")
    assert len(notes) == 1 and "stopped" in notes[0]["title"], notes
