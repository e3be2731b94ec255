"""Serving a checkpoint through mlx-lm's OpenAI-compatible server: one real server (a `serve` job of the trained
LoRA run's final checkpoint) for the module, called with the official openai client, refused a second time, kept
across a dashboard restart, shown on the pages, and stopped with no process left; serving what does not exist is
refused in-process."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from conftest import PROJECT_DIR, TERMINAL, InProcess, Server, base_env, row_action, shot
from fastapi.templating import Jinja2Templates
from openai import OpenAI
from playwright.sync_api import Page, expect
from sqlmodel import Session

from app.serving.requests import Target
from app.serving.view import curl_snippet, panel, prompt_messages, python_snippet, state_of
from app.tables import Job, Run
from app.templating import register_filters

pytestmark = pytest.mark.xdist_group("checkpoint_use")

PROMPT = "What is the capital of France?"
MAX_TOKENS = 16


def job_of(server: Server, job_id: int) -> dict[str, Any]:
    return server.get(f"/api/jobs/{job_id}")


def is_serving(job: dict[str, Any]) -> bool:
    return job["status"] in TERMINAL or (job["status"] == "running" and (job["detail"] or "").startswith("serving"))


def complete(base_url: str, model: str, max_tokens: int = MAX_TOKENS) -> str:
    client = OpenAI(base_url=base_url + "/v1", api_key="not-needed", timeout=120, max_retries=0)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                           temperature=0, max_tokens=max_tokens)
    return reply.choices[0].message.content or ""


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def server_processes(port: int) -> list[psutil.Process]:
    """mlx_lm server processes listening (by their command line) on the port."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if "mlx_lm" in args and "server" in args and str(port) in args:
            found.append(proc)
    return found


def exited(proc: psutil.Process) -> bool:
    """Whether the process has ended: gone, or a zombie its parent has not reaped yet."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def worker_processes(server: Server, job_id: int) -> list[psutil.Process]:
    """This dashboard's worker of the job (`python -m worker job --job-id N`, a descendant of its server; a forked
    worker's command line is its title, one string), if still there."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if " ".join(proc.info["cmdline"] or []).split()[-3:] != ["job", "--job-id", str(job_id)]:
            continue
        with contextlib.suppress(psutil.Error):
            if server.process.pid in [parent.pid for parent in proc.parents()]:
                found.append(proc)
    return found


@pytest.fixture(scope="module")
def served(lora_run: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The final checkpoint served (the module's one server); stopped at the end whatever happened."""
    srv: Server = lora_run["server"]
    run_id, iteration = lora_run["run_id"], lora_run["iterations"][-1]
    status, answer = srv.post(f"/api/runs/{run_id}/checkpoints/{iteration}/serve")
    assert status == 201, answer
    assert set(answer) == {"job_id", "base_url", "model"}
    try:
        job = srv.poll(f"/api/jobs/{answer['job_id']}", is_serving, timeout=300, what="serving")
        assert job["status"] == "running", job
        yield {**answer, "server": srv, "run_id": run_id, "iteration": iteration,
               "port": int(answer["base_url"].rsplit(":", 1)[1]), "lora_run": lora_run}
    finally:  # never leave a server behind: every live server job of this dashboard is cancelled
        for job in srv.get("/api/jobs?kind=serve"):
            if job["status"] not in TERMINAL:
                srv.post(f"/api/jobs/{job['id']}/cancel")
                srv.poll(f"/api/jobs/{job['id']}", lambda j: j["status"] in TERMINAL, timeout=60)


def test_the_openai_client_gets_the_greedy_answer_of_mlx_lm_generate(served: dict[str, Any]) -> None:
    srv: Server = served["server"]
    assert served["base_url"].startswith("http://127.0.0.1:") and served["model"] == "default_model"
    job = job_of(srv, served["job_id"])
    assert job["kind"] == "serve" and job["params"]["base_url"] == served["base_url"]
    assert job["detail"] == f"serving run {served['run_id']}, checkpoint {served['iteration']} at {served['base_url']}"
    folder = job["params"]["adapter_path"]
    assert folder.endswith(f"checkpoints/{served['iteration']:07d}")
    text = complete(served["base_url"], served["model"])
    expected = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "generate", "--model", served["lora_run"]["model"], "--adapter-path", folder,
         "--prompt", PROMPT, "--temp", "0", "--max-tokens", str(MAX_TOKENS), "--verbose", "False"],
        cwd=PROJECT_DIR, env=base_env(), capture_output=True, text=True, timeout=300, check=True).stdout
    assert text and text == expected.removesuffix("\n"), (text, expected)


def test_a_second_server_of_the_same_checkpoint_is_refused(served: dict[str, Any]) -> None:
    srv: Server = served["server"]
    status, answer = srv.post(f"/api/runs/{served['run_id']}/checkpoints/{served['iteration']}/serve")
    assert status == 409, answer
    assert f"job {served['job_id']}" in answer["detail"] and served["base_url"] in answer["detail"]
    live = [j for j in srv.get("/api/jobs?kind=serve") if j["status"] not in TERMINAL]
    assert [j["id"] for j in live] == [served["job_id"]]


def test_serving_a_checkpoint_or_model_that_does_not_exist_is_404(app_client: InProcess) -> None:
    with Session(app_client.engine) as session:  # a run that ended without a checkpoint at 999,999
        run = Run(name="lora for use", status="completed", config_json="{}", total_iters=40, iteration=40)
        session.add(run)
        session.commit()
        run_id = run.id
    status, answer = app_client.post(f"/api/runs/{run_id}/checkpoints/999999/serve")
    assert status == 404 and "no checkpoint at iteration 999,999" in answer["detail"], answer
    status, answer = app_client.post("/api/models/no-such-model/serve")
    assert status == 404 and "no model folder no-such-model" in answer["detail"], answer


def test_the_server_survives_a_dashboard_restart(served: dict[str, Any]) -> None:
    srv: Server = served["server"]
    before = job_of(srv, served["job_id"])
    srv.restart()
    srv.poll(f"/api/jobs/{served['job_id']}", lambda j: j["status"] == "running", timeout=30)
    time.sleep(1.5)  # a few supervisor ticks of the new dashboard: the job stays running
    after = job_of(srv, served["job_id"])
    assert after["status"] == "running" and after["detail"] == before["detail"], after
    assert complete(served["base_url"], served["model"], max_tokens=4)
    html = srv.request("GET", f"/runs/{served['run_id']}/checkpoints/{served['iteration']}/serve")[2].decode()
    assert 'data-state="serving"' in html and served["base_url"] in html and "default_model" in html


def test_the_serve_button_shows_a_snippet_that_works(served: dict[str, Any], page: Page) -> None:
    srv: Server = served["server"]
    page.goto(f"{srv.url}/runs/{served['run_id']}")
    row = page.locator(f'#checkpoint-table tr[data-iteration="{served["iteration"]}"]')
    expect(row_action(row, ".serve-button")).to_have_text("Serve")
    shot(page, "serve_run_page")
    row.locator(".serve-button").click()
    panel = page.locator(".serve-panel[data-state='serving']")
    expect(panel).to_be_visible(timeout=30_000)
    expect(panel.locator("[data-role=base-url]")).to_have_text(served["base_url"])
    expect(panel.locator("[data-role=model]")).to_have_text("default_model")
    snippet = panel.locator(".serve-snippet[data-snippet=python] pre").inner_text()
    assert re.search(r'base_url="http://127\.0\.0\.1:\d+/v1"', snippet), snippet
    shot(page, "serve_panel")
    ran = subprocess.run([sys.executable, "-c", snippet], cwd=PROJECT_DIR, env=base_env(), capture_output=True,
                         text=True, timeout=120)
    assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr
    curl = panel.locator(".serve-snippet[data-snippet=curl] pre").inner_text()
    assert curl.startswith(f"curl {served['base_url']}/v1/chat/completions")
    live = [j for j in srv.get("/api/jobs?kind=serve") if j["status"] not in TERMINAL]
    assert [j["id"] for j in live] == [served["job_id"]]  # the click showed the running server, made no other
    assert live[0]["eta_s"] is None  # a server runs until it is stopped: no ETA

    page.goto(f"{srv.url}/jobs")  # a running server shows its address and uptime, not a full bar and "ETA 0s"
    progress = page.locator(f"#job-{served['job_id']}-progress")
    expect(progress.locator("[data-role=uptime]")).to_contain_text(f"serving at {served['base_url']} · up ")
    expect(progress).not_to_contain_text("ETA")
    expect(progress.locator("[data-role=detail]")).to_have_count(0)  # its detail would say the address again
    expect(progress.locator(".job-bar")).to_have_count(0)
    shot(page, "serve_jobs_page")


def test_a_killed_worker_takes_its_server_with_it(served: dict[str, Any]) -> None:
    """SIGKILL on the serve job's worker (no cancel, no handler runs): its mlx_lm server ends too, and the job is
    marked interrupted by the dead-worker rule."""
    srv: Server = served["server"]
    first = served["lora_run"]["iterations"][0]  # another checkpoint: one server per checkpoint
    status, answer = srv.post(f"/api/runs/{served['run_id']}/checkpoints/{first}/serve")
    assert status == 201, answer
    srv.poll(f"/api/jobs/{answer['job_id']}", is_serving, timeout=300, what="serving")
    port = int(answer["base_url"].rsplit(":", 1)[1])
    assert len(server_processes(port)) == 1
    workers = worker_processes(srv, answer["job_id"])
    assert len(workers) == 1
    workers[0].kill()
    _, alive = psutil.wait_procs(server_processes(port), timeout=15)
    assert [proc for proc in alive if not exited(proc)] == []
    deadline = time.monotonic() + 15
    while port_open(port) and time.monotonic() < deadline:  # the kernel closes the socket as the process goes
        time.sleep(0.2)
    assert not port_open(port)
    job = srv.poll(f"/api/jobs/{answer['job_id']}", lambda j: j["status"] in TERMINAL, timeout=60)
    assert job["status"] == "interrupted", job


def test_stopping_the_server_leaves_no_process(served: dict[str, Any], page: Page) -> None:
    srv: Server = served["server"]
    assert port_open(served["port"]) and server_processes(served["port"])
    status, _ = srv.post(f"/api/jobs/{served['job_id']}/cancel")
    assert status == 202
    job = srv.poll(f"/api/jobs/{served['job_id']}", lambda j: j["status"] in TERMINAL, timeout=60)
    assert job["status"] == "stopped", job
    assert job["result"]["base_url"] == served["base_url"]
    assert not port_open(served["port"])
    assert server_processes(served["port"]) == []
    _, alive = psutil.wait_procs(worker_processes(srv, served["job_id"]), timeout=15)  # it ends after its row
    assert [proc for proc in alive if not exited(proc)] == []


def test_the_page_starts_and_stops_a_server_and_sees_it_die(served: dict[str, Any], page: Page) -> None:
    srv: Server = served["server"]
    page.goto(f"{srv.url}/runs/{served['run_id']}/checkpoints/{served['iteration']}")
    panel = page.locator(".serve-panel")
    expect(panel).to_have_attribute("data-state", "ended")
    expect(panel.locator("[data-role=ended]")).to_contain_text(f"The server at {served['base_url']} was stopped")
    panel.locator(".serve-start").click()  # "Serve again", then Stop at once (while it starts, or waits)
    expect(panel).to_have_attribute("data-state", re.compile("waiting|starting|serving"))
    stopped_id = int(panel.get_attribute("data-job-id") or 0)
    panel.locator(".serve-stop").click()
    expect(panel).to_have_attribute("data-state", "ended", timeout=30_000)
    stopped = srv.get(f"/api/jobs/{stopped_id}")
    assert stopped["status"] == "stopped", stopped
    _, alive = psutil.wait_procs(server_processes(stopped["params"]["port"]), timeout=15)
    assert [proc for proc in alive if not exited(proc)] == [] and not port_open(stopped["params"]["port"])

    panel.locator(".serve-start").click()
    expect(panel).to_have_attribute("data-state", "serving", timeout=120_000)
    dying_id = int(panel.get_attribute("data-job-id") or 0)
    port = srv.get(f"/api/jobs/{dying_id}")["params"]["port"]
    children = server_processes(port)
    assert len(children) == 1
    children[0].kill()  # the mlx_lm server dies: the job fails, with the end of the server's log
    expect(panel).to_have_attribute("data-state", "ended", timeout=30_000)
    expect(panel.locator("[data-role=ended]")).to_contain_text("the mlx_lm server was killed by signal 9 (SIGKILL)")
    shot(page, "serve_dead")
    dead = srv.get(f"/api/jobs/{dying_id}")
    assert dead["status"] == "failed" and dead["error"].endswith("was killed by signal 9 (SIGKILL)"), dead
    expect(panel.locator(".serve-start")).to_have_text("Serve again")


def test_the_panel_of_a_waiting_server_says_why_and_offers_to_start_anyway() -> None:
    templates = Jinja2Templates(directory=PROJECT_DIR / "templates")
    register_filters(templates)
    target = Target(run_id=3, iteration=40)
    params = {"base_url": "http://127.0.0.1:5555", "client_model": "default_model", "port": 5555}
    waiting = Job(id=7, kind="serve", status="queued", params_json=json.dumps(params),
                  waiting_reason="waits for run 5 (training) to finish")
    html = templates.get_template("_serve.html").render(serve=panel(target, waiting))
    assert 'data-state="waiting"' in html and "waits for run 5 (training) to finish" in html
    assert 'hx-post="/serve/jobs/7/start-anyway"' in html and 'hx-trigger="every 2s' in html
    assert 'base_url="http://127.0.0.1:5555/v1"' in html.replace("&#34;", '"')
    assert state_of(None) == "idle" and state_of(Job(status="running", detail="starting mlx_lm")) == "starting"
    assert state_of(Job(status="running", detail="serving run 3, checkpoint 40 at http://x")) == "serving"
    ended = Job(id=8, kind="serve", status="failed", params_json=json.dumps(params), error="<b>boom</b>")
    html = templates.get_template("_serve.html").render(serve=panel(target, ended, error=None))
    assert "hx-trigger" not in html and "&lt;b&gt;boom&lt;/b&gt;" in html and "Serve again" in html


def test_a_served_model_folder_names_no_adapter_and_a_checkpoint_does() -> None:
    templates = Jinja2Templates(directory=PROJECT_DIR / "templates")
    register_filters(templates)
    params = {"base_url": "http://127.0.0.1:5555", "client_model": "default_model", "port": 5555}
    serving = Job(id=9, kind="serve", status="running", detail="serving at http://127.0.0.1:5555",
                  params_json=json.dumps({**params, "model": "/models/fused"}))
    folder = templates.get_template("_serve.html").render(serve=panel(Target(model_name="fused"), serving))
    assert "without the adapter" not in folder and "the checkpoint's adapter" not in folder
    with_adapter = Job(id=10, kind="serve", status="running", detail="serving at http://127.0.0.1:5555",
                       params_json=json.dumps({**params, "adapter_path": "/adapters/run-0003"}))
    checkpoint = templates.get_template("_serve.html").render(serve=panel(Target(run_id=3, iteration=40), with_adapter))
    assert "with the checkpoint's adapter" in checkpoint
    assert "its own path would load it without the adapter" in checkpoint


def test_the_snippets_ask_the_datas_own_first_prompt_quoted_for_the_shell() -> None:
    chat = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "It's late, isn't it?"},
                         {"role": "assistant", "content": "Issue: delay"}]}
    assert prompt_messages(json.dumps(chat).encode()) == chat["messages"][:2]
    assert prompt_messages(b'{"prompt": "Summarise: ...", "completion": "x"}') == [
        {"role": "user", "content": "Summarise: ..."}]
    assert prompt_messages(b'{"text": "<|user|>hi<|assistant|>yo"}') is None  # no turns to take apart
    assert prompt_messages(b"not json") is None and prompt_messages(b"[1]") is None
    messages = chat["messages"][:2]
    curl = curl_snippet("http://127.0.0.1:5555", "default_model", messages)
    words = shlex.split(curl.replace("\\\n", " "))  # as the shell reads it: the quote in the prompt survives
    assert json.loads(words[words.index("-d") + 1])["messages"] == messages
    python = python_snippet("http://127.0.0.1:5555", "default_model", messages)
    assert f"messages={json.dumps(messages)}" in python and compile(python, "snippet", "exec")


def a_live_server(srv: Server, served: dict[str, Any]) -> int:
    """The job id of a server of the checkpoint that is up: the module's, if the tests that stop it have not run,
    else a new one."""
    live = [job["id"] for job in srv.get("/api/jobs?kind=serve") if job["status"] not in TERMINAL]
    if live:
        job_id = live[0]
    else:
        status, answer = srv.post(f"/api/runs/{served['run_id']}/checkpoints/{served['iteration']}/serve")
        assert status == 201, answer
        job_id = answer["job_id"]
    assert srv.poll(f"/api/jobs/{job_id}", is_serving, timeout=120, what="serving")["status"] == "running"
    return int(job_id)


def start_from_the_form(page: Page, srv: Server, answer: str) -> int:
    """Start the form's defaults while a server is up: the form asks first (nothing is queued yet); `answer` is
    the button clicked. Returns the new run's id."""
    before = {run["id"] for run in srv.get("/api/runs")}
    page.goto(f"{srv.url}/runs/new")
    page.locator("#start-button").click()  # a whole-page POST: the form is checked and drawn again, estimates and all
    expect(page.locator("#serving-question")).to_contain_text("holds the model's memory", timeout=20_000)
    assert {run["id"] for run in srv.get("/api/runs")} == before
    shot(page, "new-run-asks-about-the-server")
    page.locator(answer).click()
    expect(page).to_have_url(re.compile(r"/runs/\d+$"))
    return int(page.url.rsplit("/", 1)[1])


@pytest.mark.browser
def test_a_run_behind_a_server_asks_first_says_why_it_waits_and_one_click_frees_it(
    served: dict[str, Any], page: Page,
) -> None:
    """A server holds the memory. Start on the form asks: stop the server, or queue behind it. Queued, the run says
    what it waits for on its page, the runs list and the queue, beside the button that stops the server; one click
    there and it trains. The other answer stops the server at once."""
    srv: Server = served["server"]
    page.on("dialog", lambda dialog: dialog.accept())  # the free button asks before it stops the server
    job_id = a_live_server(srv, served)
    run_ids = []
    try:
        run_ids.append(start_from_the_form(page, srv, "#queue-behind-server"))
        reason = f"waits for the server (job {job_id}) to be stopped"
        run = srv.get(f"/api/runs/{run_ids[0]}")
        assert (run["status"], run["waiting_reason"], run["waiting_for"]) == ("queued", reason, f"serve {job_id}")
        expect(page.locator("#run-waiting [data-role=waiting]")).to_have_text(reason)
        expect(page.locator("#run-waiting [data-role=free]")).to_have_text("Stop the server")
        page.goto(f"{srv.url}/")
        row = page.locator(f"#run-row-{run_ids[0]}")
        expect(row.locator("[data-role=waiting]")).to_have_text(reason)
        expect(page.locator(f"#queue-item-{run_ids[0]} [data-role=waiting]")).to_have_text(reason)
        shot(page, "runs-waiting-for-server")
        row.locator("[data-role=free]").click()
        expect(row).to_have_attribute("data-status", re.compile("starting|running"), timeout=60_000)
        expect(row.locator("[data-role=waiting]")).to_have_count(0)
        assert srv.get(f"/api/jobs/{job_id}")["status"] == "stopped"
        srv.post(f"/api/runs/{run_ids[0]}/stop")
        srv.wait_terminal(run_ids[0], 120)

        job_id = a_live_server(srv, served)
        run_ids.append(start_from_the_form(page, srv, "#stop-server-and-start"))
        srv.wait_for(run_ids[1], lambda r: r["status"] in ("starting", "running"), 60, "training")
        assert srv.get(f"/api/jobs/{job_id}")["status"] == "stopped"
    finally:
        for run_id in run_ids:
            srv.post(f"/api/runs/{run_id}/stop")
        for job in srv.get("/api/jobs?kind=serve"):
            if job["status"] not in TERMINAL:
                srv.post(f"/api/jobs/{job['id']}/cancel")
    for run_id in run_ids:
        srv.wait_terminal(run_id, 120)
