"""The `loraboard` command line against a real server: every command, as a subprocess (not a terminal: plain
output), with real runs of the tiny model."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_DIR, Server, base_env

from app.cli.client import ApiError, Client

pytestmark = pytest.mark.real  # the command, as a subprocess, against a real server
LORABOARD = [str(PROJECT_DIR / ".venv" / "bin" / "loraboard")]
PYTHON_M_APP = [sys.executable, "-m", "app"]
TINY_YAML = """# a tiny run of the embedded model
iters: 10
batch_size: 4
learning_rate: 1.0e-3
num_layers: 2
steps_per_report: 5
steps_per_eval: 5
save_every: 10
val_batches: 2
max_seq_length: 256
loraboard:
  name: cli run
"""


def loraboard(server: Server, *args: str, command: list[str] = LORABOARD, timeout: float = 240,
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command, *args], cwd=PROJECT_DIR, env=base_env(LORABOARD_URL=server.url),
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def finished(shared_server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`loraboard run --config` followed to the end: the run it made and what it printed."""
    config = tmp_path_factory.mktemp("cli") / "run.yaml"
    config.write_text(TINY_YAML)
    done = loraboard(shared_server, "run", "--config", str(config))
    assert done.returncode == 0, (done.stdout, done.stderr)
    run_id = int(done.stdout.split("run ", 1)[1].split(" ", 1)[0])
    return {"id": run_id, "stdout": done.stdout}


def test_run_follows_to_the_end_in_plain_text(shared_server: Server, finished: dict[str, Any]) -> None:
    out = finished["stdout"]
    run = shared_server.get(f"/api/runs/{finished['id']}")
    assert run["status"] == "completed" and run["name"] == "cli run"
    assert "iter 5: train loss" in out and "iter 10: val loss" in out
    assert f"run {finished['id']} (cli run): completed at iteration 10 of 10" in out
    assert "\x1b[" not in out  # no colour, no live bar when not on a terminal


def test_runs_and_show(shared_server: Server, finished: dict[str, Any]) -> None:
    listed = loraboard(shared_server, "runs", command=PYTHON_M_APP)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.strip().startswith(str(finished["id"])))
    assert "cli run" in row and "completed" in row and "10/10" in row
    best = shared_server.get(f"/api/runs/{finished['id']}")["best_val"]  # the lowest validation, as the page says
    assert best is not None and f"{best['val_loss']:.4f} @ {best['iteration']}" in row, row
    shown = loraboard(shared_server, "show", str(finished["id"]))
    assert shown.returncode == 0, shown.stderr
    sha = shared_server.get(f"/api/runs/{finished['id']}/checkpoints")[-1]["sha256"]
    assert "num_layers: 2" in shown.stdout and sha[:12] in shown.stdout
    missing = loraboard(shared_server, "show", "99999")
    assert missing.returncode == 1 and "error: no run with id 99999" in missing.stderr


def test_a_bad_config_exits_non_zero_with_the_api_message(shared_server: Server, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("iters: 10\nbatch_size: 0\nlearnig_rate: 1\n")
    before = len(shared_server.get("/api/runs"))
    done = loraboard(shared_server, "run", "--config", str(config))
    assert done.returncode == 1
    assert "batch_size (line 2): Input should be greater than or equal to 1" in done.stderr, done.stderr
    assert "learnig_rate (line 3): unknown key" in done.stderr and "did you mean learning_rate?" in done.stderr
    assert len(shared_server.get("/api/runs")) == before
    unreachable = subprocess.run([*LORABOARD, "runs", "--url", "http://127.0.0.1:9"], capture_output=True, text=True,
                                 env=base_env(), timeout=60, check=False)
    assert unreachable.returncode == 1 and "cannot reach loraboard at http://127.0.0.1:9" in unreachable.stderr


def test_ctrl_c_stops_the_run_and_it_saves(shared_server: Server, tmp_path: Path) -> None:
    config = tmp_path / "long.yaml"
    config.write_text(TINY_YAML.replace("iters: 10", "iters: 5000").replace("save_every: 10", "save_every: 1000"))
    process = subprocess.Popen([*LORABOARD, "run", "--config", str(config)], cwd=PROJECT_DIR,
                               env=base_env(LORABOARD_URL=shared_server.url), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        runs = shared_server.poll("/api/runs", lambda rs: rs and rs[0]["name"] == "cli run" and
                                  rs[0]["status"] == "running" and rs[0]["iteration"] >= 5, what="training")
        run_id = runs[0]["id"]
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, (stdout, stderr)
    assert f"stopping run {run_id}" in stdout and "stopped" in stdout
    run = shared_server.get(f"/api/runs/{run_id}")
    assert run["status"] == "stopped" and run["iteration"] < 5000
    checkpoints = shared_server.get(f"/api/runs/{run_id}/checkpoints")
    assert checkpoints and checkpoints[-1]["iteration"] == run["iteration"]  # the adapter saved when it stopped
    assert (shared_server.root / "adapters" / f"run-{run_id:04d}" / f"{run['iteration']:07d}_adapters.safetensors"
            ).is_file()


def test_stop_of_an_ended_run(shared_server: Server, finished: dict[str, Any]) -> None:
    done = loraboard(shared_server, "stop", str(finished["id"]))
    assert done.returncode == 0 and f"run {finished['id']}: completed" in done.stdout


def test_import_of_an_adapter_folder(shared_server: Server, finished: dict[str, Any], tmp_path: Path) -> None:
    """A loraboard run's folder is an mlx_lm adapter folder too: import a copy of it, linked."""
    folder = tmp_path / "exported"
    shutil.copytree(shared_server.root / "adapters" / f"run-{finished['id']:04d}", folder,
                    ignore=shutil.ignore_patterns("*_optimizer.safetensors", "*.log"))
    done = loraboard(shared_server, "import", str(folder), "--name", "from the cli", "--link")
    assert done.returncode == 0, done.stderr
    assert "checkpoints (linked)" in done.stdout
    run_id = int(done.stdout.split("imported run ", 1)[1].split(" ", 1)[0])
    assert shared_server.get(f"/api/runs/{run_id}")["name"] == "from the cli"
    again = loraboard(shared_server, "import", str(tmp_path / "nothing-here"))
    assert again.returncode == 1 and "nothing-here is not a folder" in again.stderr


def test_report_and_export(shared_server: Server, finished: dict[str, Any], tmp_path: Path) -> None:
    run_id = str(finished["id"])
    markdown = loraboard(shared_server, "report", run_id)
    assert markdown.returncode == 0 and "cli run" in markdown.stdout, markdown.stderr
    page = tmp_path / "report.html"
    html = loraboard(shared_server, "report", run_id, "--format", "html", "-o", str(page))
    assert html.returncode == 0 and "<html" in page.read_text().lower()
    csv_file = tmp_path / "metrics.csv"
    assert loraboard(shared_server, "export", run_id, "--format", "csv", "-o", str(csv_file)).returncode == 0
    assert "train_loss" in csv_file.read_text().splitlines()[0]
    exported = loraboard(shared_server, "export", run_id, "--format", "json")
    assert exported.returncode == 0
    data = json.loads(exported.stdout)
    metrics = shared_server.get(f"/api/runs/{run_id}/metrics")
    assert json.dumps(metrics["train"][0]["train_loss"]) in json.dumps(data)
    wrong = loraboard(shared_server, "export", run_id, "--format", "xml")
    assert wrong.returncode == 2 and "--format must be csv or json" in wrong.stderr


def test_serve_keeps_its_options() -> None:
    for command in (LORABOARD, PYTHON_M_APP):
        helped = subprocess.run([*command, "serve", "--help"], capture_output=True, text=True, env=base_env(),
                                timeout=60, check=False)
        assert helped.returncode == 0 and "--token [TOKEN]" in helped.stdout and "--no-token" in helped.stdout
    listed = subprocess.run([*LORABOARD, "--help"], capture_output=True, text=True, env=base_env(), timeout=60,
                            check=False)
    for name in ("serve", "run", "runs", "show", "stop", "report", "import", "export"):
        assert f" {name} " in listed.stdout


def test_the_token_reaches_a_dashboard_that_needs_one(tmp_path: Path, default_model: Path) -> None:
    token = "cli-token-0123456789abcdef"
    server = Server(tmp_path, extra_env={"LORABOARD_TOKEN": token})
    try:
        _start_with_token(server, token)
        refused = subprocess.run([*LORABOARD, "runs", "--url", server.url], capture_output=True, text=True,
                                 env=base_env(), timeout=60, check=False)  # it sends the kept token: not this one
        assert refused.returncode == 1 and "the token given is not this dashboard's token" in refused.stderr
        listed = subprocess.run([*LORABOARD, "runs", "--url", server.url], capture_output=True, text=True,
                                env=base_env(LORABOARD_TOKEN=token), timeout=60, check=False)
        assert listed.returncode == 0 and "no runs yet" in listed.stdout, listed.stderr
    finally:
        if server.process is not None:
            server.process.terminate()
            server.process.wait(timeout=15)


def _start_with_token(server: Server, token: str) -> None:
    """Server.start polls without the token; this one waits for the 401 that says it is up."""
    log = (server.root / "server.log").open("ab")
    server.process = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(server.port)],
                                      cwd=PROJECT_DIR, env=server.env(), stdout=log, stderr=subprocess.STDOUT)
    client = Client(server.url, token)
    for _ in range(150):
        try:
            client.get("/api/runs")
            return
        except ApiError:
            assert server.process.poll() is None, (server.root / "server.log").read_text()
            time.sleep(0.2)
    raise AssertionError("the server did not start in 30 s")


def test_help_shows_no_type_beside_a_flag() -> None:
    from typer.testing import CliRunner

    from app.cli import app as cli

    for name in ("run", "runs", "show", "stop", "report", "import", "export"):
        helped = CliRunner().invoke(cli, [name, "--help"], env={"COLUMNS": "120", "NO_COLOR": "1"})
        assert helped.exit_code == 0 and "--help" in helped.output, helped.output
        assert "<bool>" not in helped.output, helped.output  # a flag takes no value
    assert "<file>" in CliRunner().invoke(cli, ["run", "--help"], env={"COLUMNS": "120"}).output  # others keep theirs


def test_run_without_a_config_starts_the_forms_defaults(shared_server: Server) -> None:
    defaults = shared_server.get("/api/configs/defaults")
    started = loraboard(shared_server, "run", "--detach")
    assert started.returncode == 0, started.stderr
    assert f"no --config: the new-run form's defaults ({defaults['model']} on {defaults['data']})" in started.stdout
    run_id = int(re.search(r"^run (\d+) ", started.stdout, re.M)[1])  # type: ignore[index]
    stopped = loraboard(shared_server, "stop", str(run_id))  # the point is what it started: no need to train on
    assert stopped.returncode == 0, stopped.stderr
    config = shared_server.get(f"/api/runs/{run_id}")["config"]
    assert {key: config[key] for key in ("model", "data", "iters", "learning_rate", "num_layers")} == {
        key: defaults[key] for key in ("model", "data", "iters", "learning_rate", "num_layers")}


def test_the_sample_config_in_run_help_is_one_the_dashboard_takes_as_it_is() -> None:
    from app.cli.commands import RUN_EPILOG
    from app.runs.configs.yaml_config import parse_yaml_config

    sample = textwrap.dedent(RUN_EPILOG.split("\b\n", 1)[1].split("\n\n", 1)[0])
    parsed = parse_yaml_config(sample)
    assert parsed.ignored == [] and parsed.config.name == "first run" and parsed.config.iters == 200
