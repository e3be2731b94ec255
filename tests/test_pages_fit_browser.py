"""Every page in real headless Chromium at 1280x800 and 1440x900, with runs in each state (queued, running,
completed with evaluation): no console error, no card or table wider than its box where it is not meant to scroll,
no element covering another's text. Shares the evaluated run of the trained_run group (test_evaluation*.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ARTIFACTS, QUICK_RUN, Server, shot
from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("trained_run")]

SIZES = ((1280, 800), (1440, 900))

# What does not fit, as the page sees it: a card, table or table frame whose content is wider than its box, unless
# it is meant to scroll sideways (a <pre>, or an element marked data-scrolls), and the page itself wider than the
# window. Each finding names the element (tag, id, class) and the two widths.
OVERFLOW = """() => {
  const name = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (el.className && typeof el.className === 'string' ? '.' + el.className.trim().split(/\\s+/).join('.') : '');
  const found = [];
  if (document.documentElement.scrollWidth > window.innerWidth + 1)
    found.push(`the page: ${document.documentElement.scrollWidth} > ${window.innerWidth}`);
  for (const el of document.querySelectorAll('.card, .table-wrap, table')) {
    if (el.closest('[data-scrolls], pre') || !el.offsetParent) continue;
    const inner = el.querySelector('table[id]');
    if (el.scrollWidth > el.clientWidth + 1)
      found.push(`${name(el)}${inner ? ' (' + inner.id + ')' : ''}: ${el.scrollWidth} > ${el.clientWidth}`);
  }
  return found;
}"""

# Text that something else covers: for every visible piece of text in the window (headers, cells, labels, buttons,
# links, badges, paragraphs), the element at its centre must be it, inside it or around it. The page is checked
# one window's height at a time from the top. Charts (Plotly's own layers) are left out.
COVERED = """async () => {
  const name = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (el.className && typeof el.className === 'string' ? '.' + el.className.trim().split(/\\s+/).join('.') : '');
  const found = new Set();
  const height = document.documentElement.scrollHeight;
  for (let top = 0; top < height; top += window.innerHeight) {
    window.scrollTo(0, top);
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    for (const el of document.querySelectorAll('th, td, label, button, a, h1, h2, h3, p, .badge, summary, input')) {
      if (el.closest('.js-plotly-plot, [hidden], details:not([open]) > :not(summary)')) continue;
      const text = el.tagName === 'INPUT' ? ['text', ''].includes(el.getAttribute('type') || '') &&
        (el.value || el.placeholder) : [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
      if (!text) continue;
      const style = getComputedStyle(el);
      if (style.visibility !== 'visible' || style.opacity === '0') continue;
      const r = el.getBoundingClientRect();
      if (r.width < 2 || r.height < 2) continue;
      const y = r.top + r.height / 2;  // both ends of its box: a neighbour may cover either
      for (const x of [r.left + Math.min(r.width / 2, 4), r.right - Math.min(r.width / 2, 4)]) {
        if (x < 0 || y < 0 || x >= window.innerWidth || y >= window.innerHeight) continue;
        const hit = document.elementFromPoint(x, y);
        if (!hit || hit === el || el.contains(hit) || hit.contains(el)) continue;
        const words = (el.value || el.placeholder || el.textContent).trim().slice(0, 40);
        found.add(`${name(el)} "${words}" under ${name(hit)}`);
      }
    }
  }
  window.scrollTo(0, 0);
  return [...found];
}"""


@pytest.fixture
def live_runs(trained_run: dict[str, Any]) -> Iterator[dict[str, int]]:
    """A run training and one queued behind it (one run at a time), both stopped afterwards; the trained run has
    been evaluated first (an evaluation waits while a run trains)."""
    evaluated(trained_run)
    server: Server = trained_run["server"]
    ids = {}
    try:
        for state, name in (("running", "training for the page check"), ("queued", "waiting for the page check")):
            status, run = server.post("/api/runs", {**QUICK_RUN, "iters": 100_000, "name": name,
                                                    "data": str(trained_run["data"])})
            assert status == 201, run
            ids[state] = run["id"]
        server.wait_for(ids["running"], lambda r: r["status"] == "running" and r["iteration"] >= 5, 120, "training")
        assert server.get(f"/api/runs/{ids['queued']}")["status"] == "queued"
        yield ids
    finally:
        for run_id in ids.values():
            server.post(f"/api/runs/{run_id}/stop")
        for run_id in ids.values():
            server.wait_terminal(run_id, 120)


def evaluated(trained_run: dict[str, Any]) -> None:
    """The trained run has a completed evaluation with task scores (test_evaluation_browser's, or one made here
    when this module runs alone)."""
    server: Server = trained_run["server"]
    jobs = server.get(f"/api/jobs?kind=evaluate&run_id={trained_run['run_id']}")
    if any(job["status"] == "completed" and job["params"].get("task") for job in jobs):  # made already
        return
    status, job = server.post(f"/api/runs/{trained_run['run_id']}/evaluations",
                              {"include_base": True, "split": "test", "task": {"max_examples": 4, "max_tokens": 32}})
    assert status == 201, job
    server.poll(f"/api/jobs/{job['job_id']}", lambda j: j["status"] in ("completed", "failed", "stopped"), 300)


def pages(trained_run: dict[str, Any], live: dict[str, int]) -> tuple[list[str], list[str]]:
    """The pages seen while a run trains and one waits (those that show them), then the others."""
    server: Server = trained_run["server"]
    run_id, last = trained_run["run_id"], trained_run["iterations"][-1]
    dataset = server.get("/api/datasets")[0]["id"]
    running, queued = live["running"], live["queued"]
    return (["/", f"/runs/{running}", f"/runs/{queued}", f"/compare?ids={run_id}&ids={running}"],
            ["/runs/new", f"/runs/{run_id}", f"/runs/{run_id}/checkpoints/{last}", f"/runs/{run_id}/report",
             f"/runs/{run_id}/evaluations/examples?iteration={last}", "/datasets", f"/datasets/{dataset}", "/jobs",
             "/models", "/playground"])


def test_every_page_fits_both_sizes_with_no_error_and_nothing_covered(
    trained_run: dict[str, Any], live_runs: dict[str, int], page: Page,
) -> None:
    """Each page is loaded once at the smaller size and checked, then checked again at the larger one (the layout
    follows the window; a chart redraws to its new width). The live runs are stopped once their pages are seen."""
    server: Server = trained_run["server"]
    last = trained_run["iterations"][-1]  # best, recommended and, from here on, deployment: its row's widest cell
    status, _ = server.request("PATCH", f"/api/runs/{trained_run['run_id']}/checkpoints/{last}",
                               {"is_deployment": True})[:2]
    assert status == 200
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    problems: dict[str, Any] = {}
    with_live_runs, others = pages(trained_run, live_runs)
    for path in [*with_live_runs, *others]:
        if path == others[0]:
            for run_id in live_runs.values():
                server.post(f"/api/runs/{run_id}/stop")
        errors.clear()
        page.set_viewport_size(dict(zip(("width", "height"), SIZES[0], strict=True)))
        page.goto(f"{server.url}{path}")
        if "/runs/" in path:  # a run's page polls and streams: it never goes quiet
            page.wait_for_timeout(1500)
        else:
            page.wait_for_load_state("networkidle")
        for width, height in SIZES:
            if (width, height) != SIZES[0]:
                page.set_viewport_size({"width": width, "height": height})
                page.wait_for_timeout(400)  # Plotly redraws a chart to its new width after a resize
            found = {"console": list(errors), "overflow": page.evaluate(OVERFLOW), "covered": page.evaluate(COVERED)}
            if path == f"/runs/{live_runs['running']}":  # a training run's chart is in the first screen
                chart = page.locator("#loss-chart").bounding_box()
                assert chart is not None and chart["y"] + 250 <= height, (width, height, chart)
                page.screenshot(path=str(ARTIFACTS / f"fit-running-run-{width}.png"))  # the first screen only
            found = {kind: items for kind, items in found.items() if items}
            if found:
                problems[f"{width}x{height} {path}"] = found
                shot(page, f"fit-{width}-{path.strip('/').replace('/', '-').replace('?', '-') or 'runs'}")
    assert not problems, problems


def test_the_checks_find_what_they_look_for(page: Page) -> None:
    """On a page made to fail them: a card wider than its box and a paragraph and an input under another element."""
    page.set_viewport_size({"width": 1280, "height": 800})
    page.set_content("""<div class="card" style="width:300px;overflow:hidden"><div style="width:500px">wide</div></div>
      <p style="position:relative">covered text</p><input type="text" placeholder="a note" style="width:200px">
      <div id="cover" style="position:absolute;top:0;left:0;width:1000px;height:200px;background:red"></div>""")
    assert page.evaluate(OVERFLOW) == ["div.card: 500 > 300"]
    covered = page.evaluate(COVERED)
    assert any('p "covered text" under div#cover' in item for item in covered), covered
    assert any('input "a note" under div#cover' in item for item in covered), covered
