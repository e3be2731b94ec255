"""The dashboard is as closed as Jupyter: cross-site requests, foreign Host names, a missing access token and
paths out of the allowed folders are refused before anything changes. The requests are sent in-process, exactly as
given (on a real SQLite file); what the serve command itself prints or refuses is checked on a real one."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    KEPT_TOKEN_FILE,
    PROJECT_DIR,
    InProcess,
    Server,
    base_env,
    free_port,
    in_process,
    in_process_settings,
    occupy_training_slot,
)
from test_routes_layout import flat_routes

from app.access_token import ensure_token, read_token
from app.contract.paths import PathNotAllowed, confine
from app.main import create_app
from app.security import (
    BindRefused,
    cross_site_problem,
    host_allowed,
    is_loopback,
    start_lines,
    token_for_bind,
    without_param,
)

SAMPLE = PROJECT_DIR / "data" / "contact-center"
EVIL = "http://evil.example"
TOKEN = "test-token-0123456789abcdef"
# A run from the new-run form that fails at once (its model folder does not exist): no training needed.
RUN_FORM = {"name": "csrf-probe", "model": "/nonexistent/csrf-model", "iters": "10", "batch_size": "2"}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def call(server: InProcess, method: str, path: str, headers: dict[str, str] | None = None,
         form: dict[str, str] | None = None, body: Any = None, raw: bytes | None = None) -> Answer:
    """One request exactly as given: no redirects followed, no cookies kept, no headers added but Host and
    Content-Length (the client's own Accept, Origin and User-Agent are taken off, as http.client sends none)."""
    sent = dict(headers or {})
    data: bytes | None = raw
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
    elif body is not None:
        data = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    request = server.client.build_request(method, path, content=data, headers=sent)
    kept = {key.lower() for key in sent} | {"host", "content-length"}
    for key in [key for key in request.headers if key.lower() not in kept]:
        del request.headers[key]
    response = server.client.send(request, follow_redirects=False)
    server.client.cookies.clear()
    return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)


def run_ids(server: InProcess) -> set[int]:
    return {run["id"] for run in server.get("/api/runs")}


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[InProcess]:
    """The dashboard in-process, its training slot taken: the runs the tests start (whose model folder does not
    exist) wait queued, and no worker is started."""
    with in_process(tmp_path_factory.mktemp("app"), heartbeat_timeout_s=3600) as inproc:
        occupy_training_slot(inproc)
        yield inproc


# Pure rules -----------------------------------------------------------------------------------------------


def test_confine_keeps_paths_inside_the_roots(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    assert confine(root / "data", [root]) == (root / "data").resolve()
    assert confine(str(root / "not-yet"), [root]) == (root / "not-yet").resolve()  # judged by where it would be
    cases = [
        ("/etc", "/etc is outside the folders loraboard reads", "LORABOARD_ALLOWED_DIRS"),
        (f"{root}/../root/data", "must not contain '..'", ""),
        ("data/contact-center", "must be an absolute path", ""),
        ("", "is empty", ""),
        (str(tmp_path / "rootless"), "is outside the folders", ""),  # a sibling sharing the prefix
    ]
    for path, rule, setting in cases:
        with pytest.raises(PathNotAllowed) as caught:
            confine(path, [root], "dataset folder")
        assert rule in str(caught.value) and setting in str(caught.value), (path, str(caught.value))


def test_confine_refuses_a_link_out_of_the_roots(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc-link").symlink_to("/etc")
    (root / "inner").mkdir()
    (root / "inner-link").symlink_to(root / "inner")
    with pytest.raises(PathNotAllowed, match="is a link to /etc, outside the folders"):
        confine(root / "etc-link", [root])
    assert confine(root / "inner-link", [root]) == (root / "inner").resolve()  # a link that stays inside


def test_host_rules() -> None:
    for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "127.3.4.5", "app.localhost:1"):
        assert host_allowed(host, "127.0.0.1"), host
    for host in ("evil.example:8000", "", "10.0.0.5:8000", "localhost.evil.example", "127.0.0.1.evil.example"):
        assert not host_allowed(host, "127.0.0.1"), host
    assert host_allowed("dash.example:8000", "127.0.0.1", {"dash.example"})
    assert host_allowed("box.lan:8000", "box.lan")  # the name it binds
    assert host_allowed("192.168.1.5:8000", "0.0.0.0")  # an address literal cannot be a rebound name
    assert not host_allowed("evil.example:8000", "0.0.0.0")


def test_cross_site_rules() -> None:
    own = "127.0.0.1:8000"
    assert cross_site_problem({"origin": "http://127.0.0.1:8000"}, own) is None
    assert cross_site_problem({"sec-fetch-site": "same-origin"}, own) is None
    assert cross_site_problem({"sec-fetch-site": "none"}, own) is None
    assert cross_site_problem({"referer": "http://127.0.0.1:8000/runs/new"}, own) is None
    assert cross_site_problem({}, own) is None  # a script; cookies are judged by the caller
    for headers in ({"origin": EVIL}, {"origin": "null"}, {"origin": "http://127.0.0.1:9999"},
                    {"origin": "http://127.0.0.1:9999", "sec-fetch-site": "same-origin"},
                    {"sec-fetch-site": "same-site"}, {"sec-fetch-site": "cross-site"},
                    {"referer": "http://evil.example/page"}):
        assert cross_site_problem(headers, own), headers


def test_binding_off_loopback_needs_a_token() -> None:
    assert token_for_bind("127.0.0.1", None, False, []) is None
    assert token_for_bind("localhost", TOKEN, False, []) == TOKEN
    assert token_for_bind("0.0.0.0", TOKEN, False, ["192.168.1.5"]) == TOKEN
    assert token_for_bind("0.0.0.0", None, True, ["192.168.1.5"]) is None
    with pytest.raises(BindRefused, match=r"192\.168\.1\.5.*--token.*--no-token"):
        token_for_bind("0.0.0.0", None, False, ["192.168.1.5"])
    with pytest.raises(BindRefused, match="16 or more"):
        token_for_bind("0.0.0.0", "short", False, [])
    lines = start_lines("0.0.0.0", 8765, TOKEN, False, ["192.168.1.5"])
    assert lines == [f"loraboard: serving on http://127.0.0.1:8765/?token={TOKEN}",
                     f"loraboard: serving on http://192.168.1.5:8765/?token={TOKEN}"]
    assert "anyone who can reach" in start_lines("0.0.0.0", 8765, None, True, [])[-1]
    assert is_loopback("[::1]") and not is_loopback("0.0.0.0")
    assert without_param("token=abc&status=failed&ids=1&ids=2", "token") == "status=failed&ids=1&ids=2"


# Cross-site requests -----------------------------------------------------------------------


def test_a_cross_origin_form_post_starts_no_run(dashboard: InProcess) -> None:
    before = run_ids(dashboard)
    for headers in ({"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}, {"Referer": f"{EVIL}/trap.html"},
                    {"Origin": "null"}, {"Origin": f"http://127.0.0.1:{dashboard.port + 1}"}):
        answer = call(dashboard, "POST", "/runs/new", headers, form=RUN_FORM)
        assert answer.status == 403, (headers, answer.status, answer.text)
        assert "loraboard refused this cross-site request" in answer.text and "nothing was changed" in answer.text
    assert run_ids(dashboard) == before
    # the same form from the dashboard's own page (or from a script) starts the run
    same = call(dashboard, "POST", "/runs/new", {"Origin": dashboard.url}, form=RUN_FORM)
    assert same.status == 303 and same.headers["location"].startswith("/runs/")
    script = call(dashboard, "POST", "/runs/new", form=RUN_FORM)
    assert script.status == 303
    assert len(run_ids(dashboard) - before) == 2


def test_every_state_changing_route_refuses_another_origin(dashboard: InProcess, tmp_path: Path) -> None:
    before = run_ids(dashboard)
    status, run = dashboard.post("/api/runs", {"model": "/nonexistent/model", "name": "keep me", "iters": 10})
    assert status == 201
    rid = run["id"]
    folder = tmp_path / "probe-data"
    shutil.copytree(SAMPLE, folder)
    datasets = len(dashboard.get("/api/datasets"))
    routes: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/runs/new", {"form": RUN_FORM}),
        ("POST", f"/runs/{rid}/stop", {}),
        ("POST", f"/runs/{rid}/delete", {"form": {"confirm": "yes"}}),
        ("POST", f"/runs/{rid}/text", {"form": {"name": "renamed", "notes": "x"}}),
        ("POST", f"/runs/{rid}/checkpoints/10/delete", {}),
        ("POST", f"/runs/{rid}/checkpoints/10/note", {"form": {"note": "x"}}),
        ("POST", f"/runs/{rid}/early-stopping", {"form": {"patience": "3"}}),
        ("POST", "/datasets/register", {"form": {"name": "probe", "path": str(folder)}}),
        ("POST", "/api/runs", {"body": {"model": "/nonexistent/model"}}),
        ("POST", "/api/imports", {"body": {"adapter_dir": str(folder)}}),
        ("PATCH", f"/api/runs/{rid}", {"body": {"name": "renamed"}}),
        ("DELETE", f"/api/runs/{rid}", {}),
        ("POST", f"/api/runs/{rid}/stop", {}),
        ("DELETE", f"/api/runs/{rid}/checkpoints/10", {}),
        ("POST", "/api/datasets", {"body": {"name": "probe", "path": str(folder)}}),
        ("POST", "/api/datasets/subset", {"body": {"source": str(SAMPLE), "name": "probe-sub", "n": 10}}),
        ("POST", "/api/token-stats", {"body": {"data": str(folder)}}),
        ("POST", "/dataset-tools/token-stats", {"form": {"data": str(folder)}}),
        ("POST", "/dataset-tools/form-panel", {"form": {"data": str(folder)}}),
        ("POST", f"/runs/{rid}/report/token-stats", {}),
        ("POST", "/datasets/upload", {"form": {"name": "probe"}}),
        ("POST", "/runs/new/yaml", {"form": {"yaml_text": "iters: 10"}}),
        ("POST", f"/runs/{rid}/checkpoints/10/deployment", {}),
        ("POST", "/runs/queue/cancel", {}),
        ("POST", f"/runs/{rid}/queue", {"form": {"position": "top"}}),
        ("POST", "/api/runs/queue/cancel", {}),
        ("POST", f"/api/runs/{rid}/queue", {"body": {"position": "top"}}),
        ("PATCH", f"/api/runs/{rid}/checkpoints/10", {"body": {"note": "x"}}),
        ("POST", f"/api/runs/{rid}/evaluations", {"body": {"checkpoints": "all"}}),
        ("POST", f"/runs/{rid}/evaluations", {"form": {"checkpoints": "all", "split": "test"}}),
        ("POST", "/api/jobs/1/cancel", {}),
        ("PATCH", "/api/jobs/1", {"body": {"allow_while_training": True}}),
        ("POST", "/jobs/1/cancel", {}),
        ("POST", "/jobs/1/allow-while-training", {}),
        ("POST", f"/api/runs/{rid}/checkpoints/10/fuse", {"body": {"name": "probe-fused"}}),
        ("POST", f"/runs/{rid}/checkpoints/10/fuse", {"form": {"name": "probe-fused"}}),
        ("POST", "/api/models/quantize", {"body": {"model": "tiny-mistral", "group_size": 32, "name": "probe-q"}}),
        ("POST", "/models/quantize", {"form": {"model": "tiny-mistral", "group_size": "32", "name": "probe-q"}}),
        ("POST", "/models/smollm2", {}),
        ("POST", "/api/generate", {"body": {"prompt": "hi", "stream": False}}),
        ("POST", "/api/generations", {"body": {"prompt": "hi"}}),
        ("POST", "/api/prompt-sets", {"body": {"run_id": rid, "name": "probe", "prompts": [{"prompt": "hi"}]}}),
        ("POST", "/api/prompt-sets/1/run", {"body": {"columns": [None]}}),
        ("POST", "/playground/release", {}),
        ("POST", "/playground/start-anyway", {}),
        ("POST", "/prompt-sets/1/run", {"form": {"column": "base"}}),
        ("POST", f"/api/runs/{rid}/checkpoints/10/serve", {}),
        ("POST", "/api/models/probe/serve", {}),
        ("POST", f"/runs/{rid}/checkpoints/10/serve", {}),
        ("POST", "/models/probe/serve", {}),
        ("POST", "/serve/jobs/1/stop", {}),
        ("POST", "/serve/jobs/1/start-anyway", {}),
        ("POST", "/api/models/probe/gguf", {"body": {"type": "f16"}}),
        ("POST", "/models/probe/gguf", {"form": {"type": "f16"}}),
        ("POST", "/api/allowed-folders", {"body": {"path": str(folder)}}),
        ("DELETE", "/api/allowed-folders/1", {}),
        ("POST", "/allowed-folders", {"form": {"path": str(folder)}}),
        ("POST", "/allowed-folders/1/remove", {}),
        ("POST", "/dataset-tools/form-preview", {"form": {"data": str(folder)}}),
        ("POST", "/api/configs/parse", {"raw": b"iters: 10\n"}),
        ("POST", "/runs/new/check", {"form": RUN_FORM}),
        ("POST", "/api/datasets/upload", {"form": {"name": "probe"}}),
        ("POST", "/api/datasets/demo", {"body": {"name": "probe-demo"}}),
        ("POST", "/dataset-tools/subset", {"form": {"source": str(SAMPLE), "name": "probe-sub", "n": "10"}}),
        ("POST", "/dataset-tools/demo", {"form": {"name": "probe-demo"}}),
    ]
    for method, path, payload in routes:
        for headers in ({"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}):
            answer = call(dashboard, method, path, headers, **payload)
            assert answer.status == 403, (method, path, headers, answer.status, answer.text)
            assert "cross-site request" in answer.json["detail"]
    after = dashboard.get(f"/api/runs/{rid}")
    assert after["name"] == "keep me" and run_ids(dashboard) == before | {rid}
    assert len(dashboard.get("/api/datasets")) == datasets and dashboard.get("/api/allowed-folders") == []
    # the list above names every route that takes more than GET: a new one cannot be left out
    probed = [(method, path) for method, path, _ in routes]
    for route in flat_routes(dashboard.app.routes):
        for method in sorted((getattr(route, "methods", None) or set()) - {"GET", "HEAD"}):
            shape = re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(route.path)) + "$")
            assert any(m == method and shape.match(p) for m, p in probed), (method, route.path)


def test_a_browser_with_cookies_but_no_origin_needs_the_csrf_token(dashboard: InProcess) -> None:
    page = call(dashboard, "GET", "/runs/new", {"Accept": "text/html"})
    token = page.text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    assert f'name="csrf_token" value="{token}"' in page.text  # the form's hidden field
    assert f"loraboard_csrf_{dashboard.port}={token}" in page.headers["set-cookie"]
    assert "SameSite=Strict" in page.headers["set-cookie"]
    cookie = {"Cookie": f"loraboard_csrf_{dashboard.port}={token}"}
    before = run_ids(dashboard)
    refused = call(dashboard, "POST", "/runs/new", cookie, form=RUN_FORM)
    assert refused.status == 403 and "no CSRF token" in refused.text
    wrong = call(dashboard, "POST", "/runs/new", cookie, form={**RUN_FORM, "csrf_token": "x" * 43})
    assert wrong.status == 403
    assert run_ids(dashboard) == before
    assert call(dashboard, "POST", "/runs/new", cookie, form={**RUN_FORM, "csrf_token": token}).status == 303
    with_header = call(dashboard, "POST", "/runs/new", {**cookie, "X-CSRF-Token": token}, form=RUN_FORM)
    assert with_header.status == 303
    assert len(run_ids(dashboard) - before) == 2


# Host names -----------------------------------------------------------------------------


def test_a_foreign_host_name_is_refused_with_the_setting_named(dashboard: InProcess) -> None:
    for path in ("/api/runs", "/", "/runs/1/events"):
        answer = call(dashboard, "GET", path, {"Host": f"evil.example:{dashboard.port}"})
        assert answer.status == 403, path
        assert "'evil.example'" in answer.text and "LORABOARD_ALLOWED_HOSTS=evil.example" in answer.text
    for host in (f"localhost:{dashboard.port}", f"127.0.0.1:{dashboard.port}", f"[::1]:{dashboard.port}"):
        assert call(dashboard, "GET", "/api/runs", {"Host": host}).status == 200, host


@pytest.fixture(scope="module")
def named_server(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[InProcess]:
    with in_process(tmp_path_factory.mktemp("named"), allowed_hosts="dash.example, other.lan",
                    max_upload_mb=1) as inproc:
        yield inproc


def test_a_host_name_in_the_setting_is_served(named_server: InProcess) -> None:
    host = f"dash.example:{named_server.port}"
    assert call(named_server, "GET", "/api/runs", {"Host": host}).status == 200
    assert call(named_server, "GET", "/api/runs", {"Host": "other.lan"}).status == 200
    assert call(named_server, "GET", "/api/runs", {"Host": "evil.example"}).status == 403
    # its own origin may post; the loopback origin is another origin for a page on that name
    assert call(named_server, "POST", "/api/runs/99999/stop", {"Host": host, "Origin": f"http://{host}"}).status == 404
    assert call(named_server, "POST", "/api/runs/99999/stop", {"Host": host, "Origin": named_server.url}).status == 403


# An access token -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[InProcess]:
    with in_process(tmp_path_factory.mktemp("token"), token=TOKEN) as inproc:
        yield inproc


@pytest.mark.real  # the serve command's own output
def test_a_server_with_a_token_prints_the_address_with_it(tmp_path: Path, default_model: Path) -> None:
    srv = Server(tmp_path, extra_env={"LORABOARD_TOKEN": TOKEN}).start()
    try:
        log = (srv.root / "server.log").read_text()
        assert f"{srv.url}/?token={TOKEN}" in log  # the ready-to-click address
    finally:
        srv.stop()


def test_pages_api_and_event_stream_need_the_token(token_server: InProcess) -> None:
    paths = ("/", "/runs/new", "/datasets", "/api/runs", "/api/datasets", "/api/runs/99999/events",
             "/static/app.css")
    for path in paths:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Cookie": f"loraboard_token_{token_server.port}=wrong"}):
            answer = call(token_server, "GET", path, {"Accept": "text/html", **headers})
            assert answer.status == 401, (path, headers, answer.status)
            assert "LORABOARD_TOKEN" in answer.text and "Bearer" in answer.text
        assert call(token_server, "GET", path + "?token=wrong-token-0123456789").status == 401
    assert call(token_server, "POST", "/runs/new", form=RUN_FORM).status == 401
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert call(token_server, "GET", "/api/runs", bearer).status == 200
    assert call(token_server, "GET", "/api/runs/99999/events", bearer).status == 404  # reached the stream's route
    assert call(token_server, "GET", f"/api/runs?token={TOKEN}").status == 200


def test_the_first_visit_with_the_token_sets_a_cookie(token_server: InProcess) -> None:
    first = call(token_server, "GET", f"/datasets?token={TOKEN}&added=1", {"Accept": "text/html"})
    assert first.status == 303 and first.headers["location"] == "/datasets?added=1"  # the token leaves the URL
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"loraboard_token_{token_server.port}={TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = {"Cookie": cookie.split(";", 1)[0]}
    for path in ("/", "/datasets", "/api/runs", "/static/app.css"):
        assert call(token_server, "GET", path, {"Accept": "text/html", **jar}).status == 200, path
    assert call(token_server, "GET", "/api/runs/99999/events", jar).status == 404


@pytest.mark.real  # the serve command and the kept token, as another account on this machine meets them
def test_by_default_every_route_refuses_who_has_not_the_kept_token(tmp_path: Path, default_model: Path) -> None:
    """No token set: `loraboard serve` keeps one for this account (mode 0600, reused across restarts) and prints
    the address with it. Without it, every route answers 401, a cross-site request too (before the origin check's
    403); with it the same requests get through the token check."""
    srv = Server(tmp_path).start()
    try:
        kept = KEPT_TOKEN_FILE.read_text().strip()
        assert KEPT_TOKEN_FILE.stat().st_mode & 0o777 == 0o600
        log = (srv.root / "server.log").read_text()
        assert f"{srv.url}/?token={kept}" in log and f"kept in {KEPT_TOKEN_FILE}" in log
        routes = [route for route in flat_routes(create_app(in_process_settings(tmp_path / "app")).routes)
                  if getattr(route, "methods", None)]
        assert len(routes) > 100
        for route in routes:
            path = re.sub(r"\{[^}]+\}", "1", route.path)
            for method in sorted(route.methods - {"HEAD"}):
                for headers in ({}, {"Origin": "http://evil.example"}, {"Authorization": "Bearer not-the-token-01234"}):
                    request = urllib.request.Request(srv.url + path, method=method, headers=headers,
                                                     data=b"{}" if method != "GET" else None)
                    try:
                        with urllib.request.urlopen(request, timeout=30) as answer:
                            status = answer.status
                    except urllib.error.HTTPError as err:
                        status = err.code
                    assert status == 401, (method, path, headers, status)
        assert srv.request("GET", "/api/runs")[0] == 200  # with it (Server sends the kept token)
        assert srv.request("GET", f"/api/runs?token={kept}")[0] == 200
        listed = subprocess.run([sys.executable, "-m", "app", "runs", "--url", srv.url], cwd=PROJECT_DIR,
                                env={k: v for k, v in base_env().items() if k != "LORABOARD_TOKEN"},
                                capture_output=True, text=True, timeout=60, check=False)
        assert listed.returncode == 0 and "no runs yet" in listed.stdout, listed.stderr  # no flag: the kept token
    finally:
        srv.stop()
    assert KEPT_TOKEN_FILE.read_text().strip() == kept  # the next start reuses it


@pytest.mark.real  # the serve command, refused at once
def test_a_token_file_without_a_token_stops_the_start_with_what_to_do(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "token").write_text("not a token\n")
    env = {k: v for k, v in os.environ.items() if k != "LORABOARD_TOKEN"}
    env.update(LORABOARD_DATA_DIR=str(data), LORABOARD_DB_PATH=str(tmp_path / "db.sqlite"))
    result = subprocess.run([sys.executable, "-m", "app", "serve", "--port", str(free_port())], cwd=PROJECT_DIR,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "serving on" not in result.stdout
    assert f"{data / 'token'} does not hold an access token" in result.stderr and "delete it" in result.stderr
    assert not (tmp_path / "db.sqlite").exists()  # it stopped before opening anything


def test_the_kept_token_is_made_once_and_this_account_alone_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "data" / "token"
    first = ensure_token(path)
    assert path.stat().st_mode & 0o777 == 0o600 and ensure_token(path) == first == read_token(path)
    path.chmod(0o644)
    assert ensure_token(path) == first and path.stat().st_mode & 0o777 == 0o600  # made private again
    assert read_token(tmp_path / "none") is None
    assert [p.name for p in path.parent.iterdir()] == ["token"]  # no temporary file left
    assert start_lines("127.0.0.1", 8000, None, True, [])[1].startswith("loraboard: --no-token: any program or "
                                                                       "account on this machine")


# Paths ---------------------------------------------------------------------------------------


def test_folders_outside_the_allowed_ones_are_refused(dashboard: InProcess, tmp_path: Path) -> None:
    before = len(dashboard.get("/api/datasets"))
    status, body = dashboard.post("/api/datasets", {"name": "etc", "path": "/etc"})
    assert status == 422
    assert "/etc is outside the folders loraboard reads" in body["detail"]["msg"]
    assert "LORABOARD_ALLOWED_DATA_DIRS" in body["detail"]["msg"]
    page = call(dashboard, "POST", "/datasets/register", form={"name": "etc", "path": "/etc"})
    assert page.status == 422 and "outside the folders loraboard reads" in html.unescape(page.text)
    link = tmp_path / "etc-link"
    link.symlink_to("/etc")
    status, body = dashboard.post("/api/datasets", {"name": "linked", "path": str(link)})
    assert status == 422 and "is a link to /etc, outside the folders" in body["detail"]["msg"]
    status, body = dashboard.request("GET", "/api/datasets/validate?path=/etc")[:2]
    assert status == 422 and "outside the folders" in body["detail"][0]["msg"]
    assert len(dashboard.get("/api/datasets")) == before


def test_dot_dot_in_any_path_parameter_is_refused(dashboard: InProcess, tmp_path: Path) -> None:
    escape = f"{tmp_path}/../../../../etc"
    rule = "must not contain '..'"
    before = run_ids(dashboard)
    status, body = dashboard.post("/api/datasets", {"name": "dots", "path": escape})
    assert status == 422 and rule in body["detail"]["msg"]
    status, body = dashboard.request("GET", f"/api/datasets/validate?path={urllib.parse.quote(escape)}")[:2]
    assert status == 422 and rule in body["detail"][0]["msg"]
    for key in ("data", "model"):
        status, body = dashboard.post("/api/runs", {key: escape})
        assert status == 422 and body["detail"][0]["loc"] == ["body", key] and rule in body["detail"][0]["msg"]
    status, body = dashboard.post("/api/token-stats", {"data": escape})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "data"] and rule in body["detail"][0]["msg"]
    status, body = dashboard.post("/api/datasets/subset", {"source": escape, "name": "dots", "n": 5})
    assert status == 422 and body["detail"][0]["loc"][-1] == "source" and rule in body["detail"][0]["msg"]
    status, body = dashboard.request("GET", f"/api/models/info?model={urllib.parse.quote(escape)}")[:2]
    assert status == 422 and rule in body["detail"][0]["msg"]
    panel = call(dashboard, "GET", f"/models/info?model={urllib.parse.quote(escape)}")
    assert "appear once the model field is right" in html.unescape(panel.text)  # the field says why, once
    sample = dashboard.get("/api/datasets")[0]["id"]  # the sample is registered when first listed
    preview = call(dashboard, "GET", f"/datasets/{sample}/preview?model={urllib.parse.quote(escape)}")
    assert preview.status == 422 and rule in html.unescape(preview.text)
    assert run_ids(dashboard) == before


def test_a_model_folder_outside_the_allowed_ones_is_refused(dashboard: InProcess, tmp_path: Path) -> None:
    status, body = dashboard.post("/api/runs", {"model": "/usr/share"})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "model"]
    assert "LORABOARD_ALLOWED_MODEL_DIRS" in body["detail"][0]["msg"]
    link = tmp_path / "model-link"
    link.symlink_to("/usr/share")
    status, body = dashboard.request("GET", f"/api/models/info?model={link}")[:2]
    assert status == 422 and "is a link to /usr/share" in body["detail"][0]["msg"]
    status, body = dashboard.post("/api/token-stats", {"model": "/usr/share"})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "model"]
    assert dashboard.request("GET", "/api/models/info")[0] == 200  # the embedded model, inside data_dir


# Other inputs --------------------------------------------------------------------------------------------


def test_yaml_is_safe_loaded_and_trust_remote_code_is_off_unless_set(dashboard: InProcess, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = f"iters: 10\nname: !!python/object/apply:os.system ['touch {marker}']\n"
    answer = call(dashboard, "POST", "/api/configs/parse", {"Content-Type": "application/yaml"}, raw=evil.encode())
    assert answer.status == 422, answer.text
    assert not marker.exists()
    answer = call(dashboard, "POST", "/api/configs/parse", {"Content-Type": "application/yaml"},
                  raw=b"iters: 10\n")
    assert answer.status == 200 and answer.json["config"]["trust_remote_code"] is False  # off unless set
    answer = call(dashboard, "POST", "/api/configs/parse", {"Content-Type": "application/yaml"},
                  raw=b"iters: 10\ntrust_remote_code: true\n")
    assert answer.status == 200 and answer.json["config"]["trust_remote_code"] is True  # per run, when set
    checked = call(dashboard, "POST", "/runs/new/check", form={"iters": "10", "trust_remote_code": "on"})
    assert checked.status == 200 and "run its own Python code" in checked.text  # and the form warns
    quiet = call(dashboard, "POST", "/runs/new/check", form={"iters": "10"})
    assert quiet.status == 200 and "run its own Python code" not in quiet.text


def test_a_yaml_file_over_the_upload_limit_is_refused(named_server: InProcess) -> None:
    boundary = "----loraboard-test"
    big = b"iters: 10\n" + b"#" * (1024 * 1024) + b"\n"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"yaml_file\"; filename=\"big.yaml\"\r\n"
            f"Content-Type: application/yaml\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()
    answer = call(named_server, "POST", "/runs/new/yaml",
                  {"Content-Type": f"multipart/form-data; boundary={boundary}"}, raw=body)
    assert answer.status == 413  # bodies are read up to 1 MiB, whatever max_upload_mb allows datasets
    assert "the request body is larger than 1,048,576 bytes (1 MiB)" in answer.text
    assert named_server.get("/api/runs") == []
