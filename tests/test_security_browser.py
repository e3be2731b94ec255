"""Real headless Chromium against a real server: a page on another origin cannot start a run, the dashboard's
own forms and htmx calls still work (also when the browser sends no origin information), and names, notes
and folder names full of markup are shown as text."""

from __future__ import annotations

import functools
import html
import re
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import PROJECT_DIR, Server, free_port, shot
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, Request, Route, expect

pytestmark = pytest.mark.browser

SAMPLE = PROJECT_DIR / "data" / "contact-center"
SCRIPT_NAME = "<script>alert(1)</script>"
IMG_NOTES = '"><img src=x onerror=alert(2)>'
IMG_FOLDER = '"><img src=x onerror=alert(3)>'


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("security-browser")).start()
    yield server
    server.stop()


@pytest.fixture
def other_origin(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain http.server on another loopback port (another origin) serving tmp_path/site."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(site))
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", site
    httpd.shutdown()
    httpd.server_close()


def run_ids(server: Server) -> set[int]:
    return {run["id"] for run in server.get("/api/runs")}


TRAP = """<!doctype html><html><body>
<form id="trap" method="post" action="{dashboard}/runs/new">
  <input name="name" value="planted run"><input name="model" value="/nonexistent/planted">
  <input name="iters" value="10"><input name="batch_size" value="2">
</form>
<script>
  fetch("{dashboard}/runs/new", {{method: "POST", mode: "no-cors",
    headers: {{"Content-Type": "application/x-www-form-urlencoded"}},
    body: "name=planted+by+fetch&model=/nonexistent/planted&iters=10&batch_size=2"}})
    .finally(() => document.getElementById("trap").submit());
</script>
</body></html>"""


def test_a_form_on_another_origin_cannot_start_a_run(srv: Server, page: Page, other_origin: tuple[str, Path]) -> None:
    origin, site = other_origin
    (site / "trap.html").write_text(TRAP.format(dashboard=srv.url))
    before = run_ids(srv)
    with page.expect_response(lambda r: r.url == f"{srv.url}/runs/new" and r.request.method == "POST"
                              and r.request.resource_type == "document") as posted:
        page.goto(f"{origin}/trap.html")
    assert posted.value.status == 403
    assert posted.value.request.headers.get("origin") == origin  # the browser said where it came from
    expect(page.locator("body")).to_contain_text("loraboard refused this cross-site request")
    shot(page, "security-01-cross-origin-refused")
    assert run_ids(srv) == before
    assert all(run["name"] not in ("planted run", "planted by fetch") for run in srv.get("/api/runs"))


def strip_origin_info(route: Route, request: Request) -> None:
    """Send the request as a browser that tells nothing of where it comes from: Playwright sends it with the
    context's cookies but without Origin, Referer and Sec-Fetch-* (Chromium would add them back)."""
    headers = {k: v for k, v in request.headers.items()
               if k.lower() not in ("origin", "referer", "cookie") and not k.lower().startswith("sec-fetch-")}
    try:
        route.fulfill(response=route.fetch(headers=headers, max_redirects=0))
    except PlaywrightError as exc:  # the page closed while a live check was in flight: nobody waits for it
        if "disposed" not in str(exc) and "closed" not in str(exc):
            raise


@pytest.mark.parametrize("origin_info", [True, False], ids=["origin-sent", "no-origin-info"])
def test_the_dashboards_own_form_and_htmx_still_work(srv: Server, page: Page, origin_info: bool) -> None:
    if not origin_info:
        page.route(f"{srv.url}/**", strip_origin_info)
    before = run_ids(srv)
    page.goto(f"{srv.url}/runs/new")
    page.fill("#f-name", f"own form {origin_info}")
    page.fill("#f-model", "/nonexistent/own-form")
    with page.expect_response(lambda r: r.url.endswith("/runs/new/check")) as checked:  # htmx, X-CSRF-Token
        page.fill("#f-iters", "12")
    assert checked.value.status == 200
    assert checked.value.request.headers.get("x-csrf-token")
    page.click("#start-button")
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    new = run_ids(srv) - before
    assert len(new) == 1
    srv.wait_terminal(new.pop(), timeout=60)
    shot(page, f"security-02-own-form-{'origin' if origin_info else 'no-origin'}")


def test_without_origin_info_a_form_lacking_the_token_is_refused(srv: Server, page: Page) -> None:
    page.route(f"{srv.url}/**", strip_origin_info)
    page.goto(f"{srv.url}/runs/new")
    page.evaluate("document.querySelector('#new-run-form input[name=csrf_token]').remove()")
    page.fill("#f-name", "no token")
    page.fill("#f-model", "/nonexistent/no-token")
    before = run_ids(srv)
    with page.expect_response(lambda r: r.url == f"{srv.url}/runs/new" and r.request.method == "POST") as posted:
        page.click("#start-button")
    assert posted.value.status == 403
    expect(page.locator("body")).to_contain_text("no CSRF token")
    assert run_ids(srv) == before


def test_markup_in_names_notes_and_folders_is_shown_as_text(srv: Server, page: Page, tmp_path: Path) -> None:
    status, run = srv.post("/api/runs", {"name": SCRIPT_NAME, "model": "/nonexistent/xss", "iters": 10})
    assert status == 201
    srv.wait_terminal(run["id"], timeout=60)
    status, _ = srv.request("PATCH", f"/api/runs/{run['id']}", {"notes": IMG_NOTES})[:2]
    assert status == 200
    status, refused = srv.post("/api/datasets", {"name": SCRIPT_NAME, "path": str(SAMPLE)})
    assert status == 422 and "name must be" in refused["detail"]["msg"]  # dataset names are folder-safe
    folder = tmp_path / IMG_FOLDER
    folder.mkdir()
    for split in ("train", "valid"):
        (folder / f"{split}.jsonl").write_text((SAMPLE / f"{split}.jsonl").read_text())
    status, dataset = srv.post("/api/datasets", {"name": "markup-folder", "path": str(folder)})
    assert status == 201, dataset

    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pages = {
        "runs-list": ("/", [SCRIPT_NAME, IMG_NOTES]),
        "run": (f"/runs/{run['id']}", [SCRIPT_NAME]),
        "compare": (f"/compare?ids={run['id']}", [SCRIPT_NAME]),
        "datasets": ("/datasets", [IMG_FOLDER]),
        "dataset": (f"/datasets/{dataset['id']}", [IMG_FOLDER]),
    }
    for label, (path, texts) in pages.items():
        page.goto(srv.url + path)
        page.wait_for_load_state("networkidle")
        body = page.inner_text("body")
        for text in texts:
            assert text in body, (label, text)
        assert page.locator("img[src='x']").count() == 0, label
        assert not page.evaluate("[...document.scripts].some(s => s.textContent.trim() === 'alert(1)')"), label
        assert html.escape(SCRIPT_NAME, quote=False) in page.content() or SCRIPT_NAME not in texts
        shot(page, f"security-03-markup-{label}")
    assert dialogs == []
