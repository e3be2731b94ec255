"""Shared fixtures: the embedded default built once, real uvicorn servers on loopback ports and in-process
dashboards; the tiers (tests of real servers, workers, browsers and programs are marked `real`, and
`make test-fast` runs the others)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from forked_serve import SERVE_EVENT, ForkedServe
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from app.contract.worker_fork import FORK_EVENT

PROJECT_DIR = Path(__file__).resolve().parent.parent
ARTIFACTS = PROJECT_DIR / "tests" / "artifacts"
TERMINAL = {"completed", "stopped", "early_stopped", "failed", "interrupted"}


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "LORABOARD_HF_OFFLINE": "true", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The embedded tiny model and sample data (built on first use, then cached in data/).

    A lock file makes parallel test processes build it once: the others wait, then find it built."""
    from worker.defaults import SPLITS, default_paths

    (PROJECT_DIR / "data").mkdir(exist_ok=True)
    model, sample = default_paths(PROJECT_DIR / "data")
    with (PROJECT_DIR / "data" / ".defaults.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (model.exists() and all((sample / split).is_file() for split in SPLITS)):  # what it would build
            subprocess.run([sys.executable, "-m", "worker", "defaults"], cwd=PROJECT_DIR, env=base_env(), check=True)
    assert (model / "config.json").exists()
    return model


SMOLLM2 = PROJECT_DIR / "data" / "models" / "smollm2-135m-instruct"  # and its 4-bit copy, SMOLLM2_4BIT
SMOLLM2_4BIT = PROJECT_DIR / "data" / "models" / "smollm2-135m-instruct-4bit"


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    """SmolLM2-135M-Instruct as `loraboard defaults` converts it: the float32 folder (its 4-bit copy, SMOLLM2_4BIT,
    beside it). Either missing fails the test with what to run; nothing is skipped."""
    for folder in (SMOLLM2, SMOLLM2_4BIT):
        if not (folder / "config.json").is_file() or not list(folder.glob("*.safetensors")):
            pytest.fail(f"{folder} is missing or incomplete: run `loraboard defaults` first (it converts SmolLM2)")
    return SMOLLM2


# The fixtures that start a real server, a trained run or Chromium; a fixture whose return type names a server, a
# browser or a page is one too (a module's own `srv`). Tests using any of them are `real`: `make test-fast` leaves
# them out.
REAL_FIXTURES = frozenset({"server", "shared_server", "evaluation_server", "checkpoint_server", "trained_run",
                           "lora_run", "browser", "page"})
REAL_RETURN = re.compile(r"\b\w*(Server|Browser|BrowserContext|Page)\b")


def uses_real_fixture(item: pytest.Item) -> bool:
    """Whether the test needs, directly or through its fixtures, a real server, a trained run or a browser."""
    names = set(getattr(item, "fixturenames", ()))
    if names & REAL_FIXTURES:
        return True
    info = getattr(item, "_fixtureinfo", None)
    definitions = info.name2fixturedefs if info is not None else {}
    return any(REAL_RETURN.search(str(getattr(definition.func, "__annotations__", {}).get("return", "")))
               for name in names for definition in definitions.get(name, ()))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In parallel runs (pytest-xdist, --dist loadgroup) a module's tests stay in one process, so its
    module-scoped servers and runs are made once; modules that share a session fixture name one group.
    Tests of a real server, trained run or browser are marked `real` (tests that start workers or other
    programs otherwise say so themselves)."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__ if item.module else item.nodeid))
        if item.get_closest_marker("real") is None and (item.get_closest_marker("browser") or uses_real_fixture(item)):
            item.add_marker(pytest.mark.real)
    items.sort(key=lambda item: group_rank(group_of(item)))  # stable: the rest keep their order


# Groups that take minutes in one process go out first: xdist hands out groups in collection order, and one long
# group left to the end runs alone while the other processes sit idle.
FIRST_GROUPS = ("smollm2",)


def group_of(item: pytest.Item) -> str:
    marker = item.get_closest_marker("xdist_group")
    return str(marker.args[0]) if marker is not None and marker.args else ""


def group_rank(group: str) -> int:
    return FIRST_GROUPS.index(group) if group in FIRST_GROUPS else len(FIRST_GROUPS)


# The fast tier's guard: every program a test process starts is noted (an audit hook sees each Popen), and a test
# not marked `real` that started a server or worker fails, naming the command.
SPAWNED = pytest.StashKey[list[list[str]]]()


def is_server_or_worker(argv: list[str]) -> bool:
    """`python -m app ...` (the dashboard, serving by default), `python -m worker ...` or the `loraboard` command."""
    words = [os.path.basename(str(word)) for word in argv]
    modules = {words[n + 1] for n, word in enumerate(words[:-1]) if word == "-m"}
    return bool(modules & {"app", "worker"}) or (bool(words) and words[0] == "loraboard")


def pytest_configure(config: pytest.Config) -> None:
    spawned: list[list[str]] = []
    config.stash[SPAWNED] = spawned

    def note_popen(event: str, args: tuple[Any, ...]) -> None:
        if event in ("subprocess.Popen", SERVE_EVENT, FORK_EVENT):
            spawned.append([str(word) for word in args[1]])

    sys.addaudithook(note_popen)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.config.stash[SPAWNED].clear()  # what an earlier test's teardown started is not this test's


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    result = yield
    started = [argv for argv in item.config.stash[SPAWNED] if is_server_or_worker(argv)]
    if started and item.get_closest_marker("real") is None:
        pytest.fail("a test of the fast tier started a server or worker (mark it `real`): "
                    + "; ".join(" ".join(argv) for argv in started), pytrace=False)
    return result


# The access token every test server requires (loraboard serve's default): the one kept for this account in the
# project's data folder, as `loraboard serve` makes it; tests send it as scripts do, and Chromium with each request.
KEPT_TOKEN_FILE = PROJECT_DIR / "data" / "token"


def kept_token() -> str:
    from app.access_token import ensure_token

    return ensure_token(KEPT_TOKEN_FILE)


def bearer(token: str | None = None) -> dict[str, str]:
    """The Authorization header of a request to a test server (its own LORABOARD_TOKEN, else the kept one)."""
    return {"Authorization": f"Bearer {token or kept_token()}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A real `loraboard serve` process on a loopback port, with its own database and adapters."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | ForkedServe | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. HF_HOME for a test's own model cache

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        """The access token it requires: LORABOARD_TOKEN where the test set one, else the one kept for this
        account (the server reads it from the data folder, as `loraboard serve` does)."""
        return self.extra_env.get("LORABOARD_TOKEN") or kept_token()

    @property
    def models_dir(self) -> Path:
        """The server's models folder (fused and quantized models are written there)."""
        return Path(self.extra_env.get("LORABOARD_MODELS_DIR", PROJECT_DIR / "data" / "models"))

    @property
    def exports_dir(self) -> Path:
        return Path(self.extra_env.get("LORABOARD_EXPORTS_DIR", PROJECT_DIR / "data" / "exports"))

    def env(self) -> dict[str, str]:
        """The server's environment: its folders and quick supervision, then extra_env (which may replace them)."""
        return {**base_env(
            LORABOARD_DB_PATH=str(self.root / "loraboard.db"),
            LORABOARD_ADAPTERS_DIR=str(self.root / "adapters"),
            LORABOARD_DATASETS_DIR=str(self.root / "datasets"),
            LORABOARD_SUPERVISOR_INTERVAL_S="0.5",
            LORABOARD_HEARTBEAT_TIMEOUT_S="15",
            # datasets and models the tests make live in pytest's temporary folders; the tests of missing
            # folders name /nonexistent/... and /nowhere/... (allowed, and absent: "does not exist" is the answer)
            LORABOARD_ALLOWED_DIRS=os.pathsep.join((str(self.root.parent), "/nonexistent", "/nowhere")),
        ), **self.extra_env}

    def start(self) -> Server:
        """`python -m app serve --port PORT` in the project folder, its output in server.log (forked_serve: from a
        process that has imported the dashboard already); returns once it answers."""
        self.process = ForkedServe(["serve", "--port", str(self.port)], self.env(), self.root / "server.log")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/api/runs")
                return self
            except (urllib.error.URLError, ConnectionError):
                if self.process.poll() is not None:
                    raise RuntimeError((self.root / "server.log").read_text()) from None
                time.sleep(0.2)
        raise RuntimeError("server did not start in 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            for run in self.get("/api/runs"):  # never leave a worker training after a test
                if run["status"] not in TERMINAL:
                    self.post(f"/api/runs/{run['id']}/stop")
            self.process.terminate()
            self.process.wait(timeout=15)
        self.process = None

    def restart(self, while_down: Callable[[], None] | None = None) -> None:
        """Terminate only the server process (SIGTERM; workers train on) and start a new one, same port and root.

        while_down: called between the two (the old server has exited, the new one is not started)."""
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=15)
        self.process = None
        if while_down is not None:
            while_down()
        self.start()

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **bearer(self.token)})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                status = resp.status
                ctype = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            raw, status, ctype = err.read(), err.code, err.headers.get("Content-Type", "")
        parsed = json.loads(raw) if "json" in ctype else None
        return status, parsed, raw

    def get(self, path: str) -> Any:
        status, parsed, _ = self.request("GET", path)
        assert status == 200, (path, status, parsed, self.log_tail() if status >= 500 else "")
        return parsed

    def log_tail(self, size: int = 4096) -> str:
        """The end of the server's log (its traceback, after a 500: logged once the answer has gone, so a moment
        is given to it)."""
        time.sleep(1)
        log = self.root / "server.log"
        return log.read_text(errors="replace")[-size:] if log.exists() else ""

    def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        status, parsed, _ = self.request("POST", path, body if body is not None else {})
        return status, parsed

    def poll(self, path: str, predicate: Any, timeout: float = 240, what: str = "", every_s: float = 0.3) -> Any:
        """GET path until predicate(answer) holds; the last answer otherwise fails the test."""
        deadline = time.monotonic() + timeout
        answer: Any = None
        while time.monotonic() < deadline:
            answer = self.get(path)
            if predicate(answer):
                return answer
            time.sleep(every_s)
        raise AssertionError(f"{path} never became {what or predicate}: {answer}")

    def wait_for(self, run_id: int, predicate: Any, timeout: float = 240, what: str = "") -> dict[str, Any]:
        return self.poll(f"/api/runs/{run_id}", predicate, timeout, what)

    def wait_terminal(self, run_id: int, timeout: float = 240) -> dict[str, Any]:
        return self.wait_for(run_id, lambda r: r["status"] in TERMINAL, timeout, "terminal")


@pytest.fixture
def server(tmp_path: Path, default_model: Path) -> Iterator[Server]:
    srv = Server(tmp_path).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("srv")).start()
    yield srv
    srv.stop()


# Settings for quick real runs of the tiny model.
QUICK_RUN: dict[str, Any] = {
    "iters": 40,
    "batch_size": 4,
    "learning_rate": 1e-3,
    "num_layers": 4,
    "steps_per_report": 5,
    "steps_per_eval": 20,
    "save_every": 20,
    "val_batches": 5,
    "max_seq_length": 512,
}


def small_valid_data(folder: Path, valid: int = 16) -> Path:
    """The sample's training set with a small validation set: validating on all of it is exact, and quick."""
    folder.mkdir()
    source = PROJECT_DIR / "data" / "contact-center"
    shutil.copy(source / "train.jsonl", folder / "train.jsonl")
    (folder / "valid.jsonl").write_text("".join((source / "valid.jsonl").read_text().splitlines(True)[:valid]))
    return folder


def overfitting_run(tmp_path: Path, short: bool = False) -> dict[str, Any]:
    """A run that overfits fast: 8 training examples are memorised within ~40 steps, after which
    validation loss (on 16 examples, all of them at every evaluation) rises; early stopping on.

    short: the examples cut short (short_examples), validated every 5 steps: validation loss stops improving twice
    in a row after ~55 steps, each a third of the work of a step on the whole examples."""
    data = tmp_path / "tiny-data"
    rule = {"iters": 2000, "learning_rate": 1e-3, "save_every": 1000, "val_batches": -1,
            "early_stopping": {"patience": 2, "min_delta": 0.0}}
    if short:
        short_examples(data, train=8, valid=16)
        return {**QUICK_RUN, **rule, "data": str(data), "steps_per_eval": 5}
    data.mkdir()
    source = PROJECT_DIR / "data" / "contact-center"
    (data / "train.jsonl").write_text("".join((source / "train.jsonl").read_text().splitlines(True)[:8]))
    (data / "valid.jsonl").write_text("".join((source / "valid.jsonl").read_text().splitlines(True)[:16]))
    return {**QUICK_RUN, **rule, "data": str(data), "steps_per_eval": 10}


def short_example(example: dict[str, Any]) -> dict[str, Any]:
    """A sample example cut short: no system prompt, the question's first line and the conversation's first
    customer line, the whole answer (~75 tokens instead of ~220)."""
    _system, question, answer = example["messages"]
    header, *conversation = question["content"].split("\n")
    customer = next(line for line in conversation if line.startswith("Customer:"))
    return {"messages": [{"role": "user", "content": f"{header}\n{customer}"}, answer]}


def short_examples(folder: Path, train: int = 200, valid: int = 16, test: int = 0) -> Path:
    """The sample's first examples of each split, cut short (short_example); a split of 0 is left out. A training
    step of the tiny model on them costs a third of one on the whole examples, and a run on them still reports,
    validates, checkpoints and learns the answer format: for tests of how runs go, not of what the sample holds."""
    folder.mkdir(parents=True)
    source = PROJECT_DIR / "data" / "contact-center"
    for split, count in (("train", train), ("valid", valid), ("test", test)):
        lines = (source / f"{split}.jsonl").read_text().splitlines()[:count]
        if lines:
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(short_example(json.loads(line))) + "\n"
                                                           for line in lines))
    return folder


@pytest.fixture(scope="session")
def short_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """short_examples (200 training, 16 validation, 16 test), made once per test process; every test server may read
    it (it lies beside their folders)."""
    return short_examples(tmp_path_factory.mktemp("short") / "data", test=16)


# Headless Chromium (Debian's system package) driven by Playwright, for the page tests.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str:
    for candidate in (os.environ.get("LORABOARD_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                      shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("no Chromium found: install Debian's chromium or set LORABOARD_CHROMIUM (make test does)")


# Every page's settings: the window's size, and reduced motion (the dashboard then draws its live badges without
# their pulse, which software rendering would repaint at every frame while a run is live: CPU, nothing tested).
CONTEXT: dict[str, Any] = {"viewport": {"width": 1280, "height": 900}, "reduced_motion": "reduce"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page whose every request carries the kept access token (a test server that sets its own token is visited
    with ?token= instead)."""
    context = browser.new_context(**CONTEXT, accept_downloads=True, extra_http_headers=bearer())
    page = context.new_page()
    yield page
    context.close()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# Asks the new-run form's live check now and resolves once its answer is in the page (or after 15 s).
CHECK_NOW = """() => new Promise(resolve => {
  const form = document.querySelector("#new-run-form");
  form.addEventListener("htmx:afterRequest", () => resolve(), {once: true});
  setTimeout(resolve, 15000);
  htmx.trigger(form, "change");
})"""


def click_start(page: Page) -> None:
    """Click the new-run form's Start once the live check has answered for the values as they are. Its answer
    (an error under a field) can move the button, and a click while it lands may miss it."""
    page.evaluate(CHECK_NOW)
    expect(page.locator("#new-run-form")).not_to_have_class(re.compile(r"\bhtmx-request\b"))
    page.click("#start-button")


def row_action(row: Locator, selector: str) -> Locator:
    """One of a checkpoint row's actions that sit in its ⋯ menu, the menu opened first."""
    menu = row.locator(".row-menu")
    if menu.get_attribute("open") is None:
        menu.locator("summary").click()
    return row.locator(selector)


def points(page: Page, kind: str) -> int:
    return int(page.locator("#loss-chart").get_attribute(f"data-{kind}-points") or 0)




# Evaluation: one trained run shared by the evaluation tests and pages.

EVAL_TEST_EXAMPLES = 32  # test.jsonl lines of the trained run's data: 8 batches of 4
TRAINED_RUN: dict[str, Any] = {
    **QUICK_RUN, "name": "evaluated", "fine_tune_type": "full", "mask_prompt": True, "iters": 120,
    "learning_rate": 2e-3, "steps_per_eval": 40, "save_every": 40, "val_batches": -1, "steps_per_report": 20,
}  # the tiny model learns the answer format within ~100 full fine-tuning steps (LoRA needs many more)


@pytest.fixture(scope="session")
def evaluation_server(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("eval-srv")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def trained_run(evaluation_server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A completed run whose best checkpoint beats the base model on test loss and on the task: the sample's
    examples cut short (short_examples: every training one, 16 validation ones validated whole, 32 test ones);
    checkpoints at 40, 80 and 120."""
    data = short_examples(tmp_path_factory.mktemp("eval-data") / "data", train=1199, test=EVAL_TEST_EXAMPLES)
    status, run = evaluation_server.post("/api/runs", {**TRAINED_RUN, "data": str(data)})
    assert status == 201, run
    done = evaluation_server.wait_terminal(run["id"], timeout=600)
    assert done["status"] == "completed", done
    iterations = [c["iteration"] for c in evaluation_server.get(f"/api/runs/{run['id']}/checkpoints")]
    return {"server": evaluation_server, "run_id": run["id"], "iterations": sorted(iterations), "data": data}


# Using a checkpoint (playground, fuse, quantize, GGUF, serve): one server and one LoRA run shared by those tests,
# whose modules all declare pytestmark = pytest.mark.xdist_group("checkpoint_use").

LORA_RUN: dict[str, Any] = {
    **QUICK_RUN, "name": "lora for use", "iters": 40, "learning_rate": 2e-3, "save_every": 20, "steps_per_eval": 20,
    "val_batches": -1, "steps_per_report": 10, "num_layers": 4,
}  # LoRA at this rate changes the tiny model's greedy answers within 40 steps


@pytest.fixture(scope="session")
def checkpoint_server(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[Server]:
    """Its own models and exports folders (the embedded model linked in), so what the tests write there is seen by
    no other test."""
    root = tmp_path_factory.mktemp("use-srv")
    (root / "models").mkdir()
    (root / "models" / default_model.name).symlink_to(default_model)
    env = {"LORABOARD_MODELS_DIR": str(root / "models"), "LORABOARD_EXPORTS_DIR": str(root / "exports")}
    srv = Server(root, extra_env=env).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def lora_run(checkpoint_server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A completed LoRA run on the embedded model with checkpoints at 20 and 40 (40 is the final one); its data
    has 16 validation and 8 test examples."""
    data = small_valid_data(tmp_path_factory.mktemp("use-data") / "data")
    source = PROJECT_DIR / "data" / "contact-center" / "test.jsonl"
    (data / "test.jsonl").write_text("".join(source.read_text().splitlines(True)[:8]))
    status, run = checkpoint_server.post("/api/runs", {**LORA_RUN, "data": str(data)})
    assert status == 201, run
    done = checkpoint_server.wait_terminal(run["id"], timeout=600)
    assert done["status"] == "completed", done
    iterations = [c["iteration"] for c in checkpoint_server.get(f"/api/runs/{run['id']}/checkpoints")]
    return {"server": checkpoint_server, "run_id": run["id"], "iterations": sorted(iterations), "data": data,
            "model": done["config"]["model"]}


# In-process: the app on a real SQLite file, served by httpx through Starlette's TestClient (no port, no
# uvicorn). For what is HTTP behaviour only: status codes, validation, refusals, pages rendered from rows.
# The lifespan runs, so the supervisor ticks as in a server; a test that queues a run gets a real worker.


@dataclass
class InProcess:
    """An in-process dashboard: `client` is a TestClient on IN_PROCESS_URL with the app's lifespan."""

    root: Path
    client: Any
    app: Any

    @property
    def engine(self) -> Any:
        return self.app.state.engine

    @property
    def url(self) -> str:
        """The dashboard's own origin, as its requests name it (Host and Origin)."""
        return IN_PROCESS_URL

    @property
    def port(self) -> int:
        return int(self.app.state.settings.port)

    def get(self, path: str) -> Any:
        response = self.client.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text[:500])
        return response.json() if "json" in response.headers.get("content-type", "") else response.text

    def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        response = self.client.post(path, json=body if body is not None else {})
        is_json = "json" in response.headers.get("content-type", "")
        return response.status_code, response.json() if is_json else response.text

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any, bytes]:
        """As Server.request: the status, the JSON answer (None for another type) and the body."""
        response = self.client.request(method, path, json=body)
        is_json = "json" in response.headers.get("content-type", "")
        return response.status_code, response.json() if is_json else None, response.content

    # Waiting for what a worker writes, as a server's tests do (they only call get).
    poll = Server.poll
    wait_for = Server.wait_for
    wait_terminal = Server.wait_terminal


def in_process_settings(root: Path, **overrides: Any) -> Any:
    from app.contract.settings import Settings

    values: dict[str, Any] = {
        "db_path": root / "loraboard.db", "adapters_dir": root / "adapters", "datasets_dir": root / "datasets",
        "supervisor_interval_s": 0.5, "heartbeat_timeout_s": 15.0, "hf_offline": True,
        # workers, where an in-process test starts one at all, as new processes: the test sees (and may stand in
        # for) each through subprocess.Popen, and no forkserver is left in the test process
        "fork_workers": False,
        "allowed_dirs": os.pathsep.join((str(root.parent), "/nonexistent", "/nowhere")),
    }
    values.update(overrides)
    return Settings(**values)


IN_PROCESS_URL = "http://127.0.0.1:8000"


@contextlib.contextmanager
def in_process(root: Path, **overrides: Any) -> Iterator[InProcess]:
    from fastapi.testclient import TestClient

    from app.main import create_app

    root.mkdir(parents=True, exist_ok=True)
    app = create_app(in_process_settings(root, **overrides))
    # Requests come from the dashboard's own origin, as its pages' do; a test of refusals sets its own headers.
    with TestClient(app, base_url=IN_PROCESS_URL, headers={"Origin": IN_PROCESS_URL}) as client:
        try:
            yield InProcess(root, client, app)
        finally:
            end_workers(app.state.engine)


def occupy_training_slot(inproc: InProcess) -> int:
    """Write a run that trains, as far as the dashboard can tell (this test process stands for its worker), so
    the runs a test starts wait queued and no worker is started. Its heartbeat is fresh: the dashboard's
    heartbeat_timeout_s must outlast the test (in_process(..., heartbeat_timeout_s=3600) for a module's)."""
    from sqlmodel import Session

    from app.tables import Run, utcnow

    with Session(inproc.engine) as session:
        run = Run(name="training", status="running", config_json="{}", pid=os.getpid(), heartbeat_at=utcnow())
        session.add(run)
        session.commit()
        assert run.id is not None
        return run.id


def end_workers(engine: Any) -> None:
    """Never leave a worker running after a test: SIGTERM (the worker saves and ends) every live worker of a run or
    job of this database that has not ended, as a server's stop does through its API."""
    import signal

    from sqlmodel import Session, select

    from app.contract.pids import is_worker
    from app.tables import Job, Run

    with Session(engine) as session:
        workers = [("train", run.id, run.pid) for run in session.exec(select(Run)).all()
                   if run.status not in TERMINAL and run.pid] + [
                  ("job", job.id, job.pid) for job in session.exec(select(Job)).all()
                   if job.status not in TERMINAL and job.pid]
    for kind, key, pid in workers:
        if is_worker(pid, kind, key):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


@pytest.fixture
def app_client(tmp_path: Path, default_model: Path) -> Iterator[InProcess]:
    with in_process(tmp_path / "app") as inproc:
        yield inproc


@pytest.fixture(scope="module")
def shared_app_client(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[InProcess]:
    with in_process(tmp_path_factory.mktemp("app")) as inproc:
        yield inproc
