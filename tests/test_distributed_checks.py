"""Checks of a distributed run before it is created, its form section, YAML and run-page display."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from sqlmodel import Session, select

from app.contract.run_config import RunConfig
from app.db import make_engine
from app.runs.cluster.checks import (
    Finished,
    config_problems,
    distributed_problems,
    parse_hostfile,
    read_hostfile,
    run_command,
)
from app.runs.cluster.view import distributed_view
from app.runs.configs.yaml_config import export_yaml, parse_yaml_config
from app.runs.form.fields import changed_advanced, form_to_payload, form_values
from app.tables import Run
from tests.conftest import InProcess, Server, shot

UNEVEN = ("batch_size 4 is not divisible by the 3 processes (hosts × processes_per_host): mlx-lm splits each "  # noqa: RUF001
          "batch evenly across them")
HOSTFILE = [{"ssh": "mac1.local", "ips": ["192.168.1.10"]}, {"ssh": "mac2.local", "ips": ["192.168.1.11"]}]


def spread_config(batch_size: int = 4, **distributed: Any) -> RunConfig:
    return RunConfig(model="/models/tiny", data="/data/set", batch_size=batch_size, distributed=distributed)


def has_all(_: str) -> str:
    return "/usr/bin/x"


class FakeSsh:
    """Answers ssh commands from a table: (host, "probe" or the path tested) -> Finished; records the calls."""

    def __init__(self, answers: dict[tuple[str, str], Finished] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], timeout: float) -> Finished:
        self.calls.append(argv)
        target, remote = argv[-2], shlex.split(argv[-1])
        host = target.split("@")[-1]
        what = remote[-1] if remote[0] == "test" else "probe"
        return self.answers.get((host, what), Finished(0, ""))


# Config alone ---------------------------------------------------------------------------------


def test_batch_size_must_divide_across_the_processes() -> None:
    problems, _ = config_problems(spread_config(4, hosts=["127.0.0.1"], processes_per_host=3), has_all)
    assert problems == {"batch_size": UNEVEN}
    assert config_problems(spread_config(4, hosts=["127.0.0.1"], processes_per_host=2), has_all) == (
        {}, ["127.0.0.1"])
    two_hosts = spread_config(6, hosts=["a.local", "b.local"], processes_per_host=2)
    assert "4 processes" in config_problems(two_hosts, has_all)[0]["batch_size"]


def test_a_one_process_run_has_nothing_to_check() -> None:
    assert distributed_problems(RunConfig(batch_size=3), FakeSsh(), has_all) == {}


def test_hosts_and_hostfile_exclude_each_other(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps(HOSTFILE))
    config = spread_config(hosts=["a.local"], hostfile=str(hostfile))
    assert config_problems(config, has_all)[0] == {"distributed.hostfile": "give hosts or hostfile, not both"}


def test_the_hostfile_must_be_in_mlx_launch_format(tmp_path: Path) -> None:
    assert parse_hostfile(json.dumps(HOSTFILE)) == (["mac1.local", "mac2.local"], None)
    written = {"backend": "ring", "envs": [], "hosts": HOSTFILE}  # as mlx.distributed_config writes it
    assert parse_hostfile(json.dumps(written)) == (["mac1.local", "mac2.local"], None)
    hosts, problem = read_hostfile(str(tmp_path / "absent.json"))
    assert hosts == [] and problem == f"{tmp_path / 'absent.json'} does not exist"
    assert "is not valid JSON (line 1, column 2" in str(parse_hostfile("[x]")[1])
    assert 'host 2: needs an "ssh" key' in str(parse_hostfile(json.dumps([{"ssh": "a"}, {"ips": []}]))[1])
    assert '"ips" must be a list' in str(parse_hostfile(json.dumps([{"ssh": "a", "ips": "10.0.0.1"}]))[1])
    assert "expected mlx.launch's format" in str(parse_hostfile(json.dumps({"ssh": "a"}))[1])
    assert "expected mlx.launch's format" in str(parse_hostfile("[]")[1])
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps(HOSTFILE))
    assert config_problems(spread_config(hostfile=str(hostfile)), has_all) == ({}, ["mac1.local", "mac2.local"])
    problems, _ = config_problems(spread_config(hostfile=str(hostfile), processes_per_host=2), has_all)
    assert problems["distributed.processes_per_host"].startswith("must be 1 with a hostfile")


def test_host_names_user_and_python_are_checked_before_any_ssh() -> None:
    assert "'mac 1' is not a host name" in config_problems(spread_config(hosts=["mac 1"]), has_all)[0][
        "distributed.hosts"]
    assert "not a user name" in config_problems(spread_config(hosts=["a"], ssh_user="me;x"), has_all)[0][
        "distributed.ssh_user"]
    assert "not an absolute path" in config_problems(spread_config(hosts=["a"], python="python3; rm"), has_all)[0][
        "distributed.python"]


def test_mpi_needs_mpirun() -> None:
    config = spread_config(hosts=["127.0.0.1"], backend="mpi")
    problems, _ = config_problems(config, lambda name: None if name == "mpirun" else "/usr/bin/" + name)
    assert problems == {"distributed.backend": "the mpi backend needs mpirun on PATH (install Open MPI), or use ring"}
    assert config_problems(config, has_all)[0] == {}
    assert config_problems(spread_config(hosts=["127.0.0.1"], backend="nccl"), has_all)[0] == {}


# The other hosts, through a fake ssh -------------------------------------------------------------


def test_loopback_groups_never_use_ssh() -> None:
    fake = FakeSsh()
    config = spread_config(hosts=["127.0.0.1", "localhost"], processes_per_host=2)
    assert distributed_problems(config, fake, lambda name: None) == {}
    assert fake.calls == []


def test_every_remote_host_is_probed_with_its_python_then_model_and_data() -> None:
    fake = FakeSsh()
    config = spread_config(hosts=["127.0.0.1", "mac2.local"], ssh_user="me", python="/opt/lb/.venv/bin/python")
    assert distributed_problems(config, fake, has_all) == {}
    assert fake.calls == [
        ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "--", "me@mac2.local",
         "/opt/lb/.venv/bin/python -c 'import mlx.core, mlx_lm'"],
        ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "--", "me@mac2.local", "test -e /models/tiny"],
        ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "--", "me@mac2.local", "test -e /data/set"],
    ]


def test_a_hub_model_is_not_looked_for_on_the_hosts() -> None:
    fake = FakeSsh()
    config = RunConfig(model="mlx-community/tiny", data="/data/set", distributed={"hosts": ["mac2.local"]})
    assert distributed_problems(config, fake, has_all) == {}
    assert [shlex.split(c[-1])[0] for c in fake.calls] == [shlex.split(fake.calls[0][-1])[0], "test"]


@pytest.mark.parametrize(("answer", "expected"), [
    (Finished(255, "ssh: Could not resolve hostname mac2.local: Name or service not known"),
     "cannot reach mac2.local over ssh without a password (ssh: Could not resolve hostname mac2.local: Name or "
     "service not known); set up key-based ssh from this machine first"),
    (Finished(1, "Traceback ...\nModuleNotFoundError: No module named 'mlx_lm'"),
     "/usr/bin/python3 on mac2.local cannot import mlx.core and mlx_lm (ModuleNotFoundError: No module named "
     "'mlx_lm'): install loraboard's environment there at the same path, or set python"),
    (Finished(None, ""), "mac2.local did not answer over ssh within 20 s"),
])
def test_an_unready_host_is_named_with_the_reason(answer: Finished, expected: str) -> None:
    fake = FakeSsh({("mac2.local", "probe"): answer})
    config = spread_config(hosts=["127.0.0.1", "mac2.local"], python="/usr/bin/python3")
    assert distributed_problems(config, fake, has_all) == {"distributed.hosts": expected}
    assert len(fake.calls) == 1  # no path checks on a host that is not ready


def test_missing_model_or_data_on_a_host_says_to_copy_it() -> None:
    fake = FakeSsh({("mac3.local", "/models/tiny"): Finished(1, ""), ("mac2.local", "/data/set"): Finished(1, "")})
    config = spread_config(hosts=["mac2.local", "mac3.local"])
    problems = distributed_problems(config, fake, has_all)
    assert problems == {"distributed.hosts":
                        "mac2.local has no data at /data/set: copy it there first, at the same path (e.g. with rsync); "
                        "mac3.local has no model at /models/tiny: copy it there first, at the same path "
                        "(e.g. with mlx_lm.share)"}


def test_without_ssh_the_check_says_so(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps(HOSTFILE))
    problems = distributed_problems(spread_config(hostfile=str(hostfile)), FakeSsh(),
                                    lambda name: None if name == "ssh" else "/bin/" + name)
    assert problems == {"distributed.hostfile": "ssh is not installed: it is needed to reach mac1.local, mac2.local "
                        "(install OpenSSH)"}


def test_run_command_reports_status_output_and_timeouts() -> None:
    assert run_command(["sh", "-c", "echo out; echo err >&2; exit 3"], 10) == Finished(3, "out\nerr")
    assert run_command(["sleep", "5"], 0.2) == Finished(None, "")
    assert run_command(["/nonexistent/binary"], 5).returncode == 127


# Form, YAML, run page (pure) --------------------------------------------------------------------


def test_the_form_section_is_off_by_default_and_round_trips() -> None:
    assert "distributed" not in form_to_payload({"distributed.hosts": "a.local", "distributed.backend": "ring"})
    payload = form_to_payload({"distributed.enabled": "on", "distributed.backend": "nccl",
                               "distributed.hosts": "127.0.0.1", "distributed.processes_per_host": "4",
                               "distributed.ssh_user": "", "distributed.python": ""})
    assert payload["distributed"] == {"backend": "nccl", "hosts": ["127.0.0.1"], "processes_per_host": "4"}
    config = RunConfig.model_validate(payload)
    values = form_values(config)
    assert values["distributed.enabled"] is True and values["distributed.hosts"] == "127.0.0.1"
    assert values["distributed.processes_per_host"] == "4" and values["distributed.backend"] == "nccl"
    fresh = form_values(RunConfig())
    assert fresh["distributed.enabled"] is False
    posted = {k: v for k, v in fresh.items() if v is not False}  # what the browser sends back: the select's "ring"
    assert not [k for k in changed_advanced(posted) if k.startswith("distributed")]


def test_yaml_keeps_distributed_under_loraboard() -> None:
    config = spread_config(8, hosts=["mac1.local", "mac2.local"], processes_per_host=2, ssh_user="me")
    text = export_yaml(config)
    assert "\nloraboard:\n" in text and "  distributed:\n    backend: ring\n    hosts: [mac1.local, mac2.local]" in text
    assert parse_yaml_config(text).config.distributed == config.distributed
    bad = text.replace("processes_per_host: 2", "processes_per_host: 0")
    with pytest.raises(ValueError, match=r"loraboard\.distributed\.processes_per_host: Input should be greater"):
        parse_yaml_config(bad)


def test_the_run_page_view_lists_each_rank() -> None:
    config = spread_config(hosts=["mac1.local", "mac2.local"], processes_per_host=2).model_dump(mode="json")
    view = distributed_view(config, None)
    assert view is not None and view.world_size == 4 and view.backend == "ring" and not view.recorded
    assert [(r.rank, r.host, r.tokens_per_second) for r in view.ranks] == [
        (0, "mac1.local", None), (1, "mac1.local", None), (2, "mac2.local", None), (3, "mac2.local", None)]
    recorded = json.dumps({"cpu": "x", "distributed": {"world_size": 4, "backend": "ring",
                                                       "hosts": ["mac1.local", "mac2.local"],
                                                       "per_rank_tokens_per_second": [101.5, 99, 98, 97]}})
    view = distributed_view(config, recorded)
    assert view is not None and view.recorded and [r.tokens_per_second for r in view.ranks] == [101.5, 99, 98, 97]
    assert distributed_view(RunConfig().model_dump(mode="json"), recorded) is None


# The API (in-process, on a real SQLite file); the form and the run page in a browser, on a real server -------


def no_runs(server: Server | InProcess) -> None:
    assert server.get("/api/runs") == []


def test_api_refuses_an_uneven_batch_and_creates_nothing(shared_app_client: InProcess) -> None:
    status, body = shared_app_client.post("/api/runs", {"batch_size": 4, "iters": 5, "distributed": {
        "hosts": ["127.0.0.1"], "processes_per_host": 3}})
    assert status == 422, body
    assert body["detail"] == [{"loc": ["body", "batch_size"], "type": "value_error", "msg": UNEVEN}]
    no_runs(shared_app_client)


def test_api_names_an_unreachable_host_and_creates_nothing(shared_app_client: InProcess) -> None:
    status, body = shared_app_client.post("/api/runs", {"batch_size": 4, "iters": 5, "distributed": {
        "hosts": ["127.0.0.1", "no-such-host.invalid"]}})
    assert status == 422, body
    (problem,) = body["detail"]
    assert problem["loc"] == ["body", "distributed", "hosts"]
    assert problem["msg"].startswith("cannot reach no-such-host.invalid over ssh without a password (")
    no_runs(shared_app_client)


def fill(page: Page, key: str, value: str) -> None:
    page.fill(f"[id='f-{key}']", value)


def test_form_section_shows_the_same_message(shared_server: Server, page: Page) -> None:
    page.goto(shared_server.url + "/runs/new")
    page.click("#advanced summary")
    expect(page.locator("#group-distributed legend")).to_have_text("Distributed (several processes or hosts)")
    page.check("[id='f-distributed.enabled']")
    page.select_option("[id='f-distributed.backend']", "ring")
    fill(page, "distributed.hosts", "127.0.0.1")
    fill(page, "distributed.processes_per_host", "3")
    fill(page, "batch_size", "4")
    expect(page.locator("#err-batch_size")).to_have_text(UNEVEN, timeout=15_000)
    page.locator("#group-distributed").scroll_into_view_if_needed()
    shot(page, "distributed-form")
    page.click("#start-button")
    expect(page.locator(".error-box")).to_contain_text("batch_size 4 is not divisible")
    no_runs(shared_server)


def insert_run(server: Server, **fields: Any) -> int:
    engine = make_engine(server.root / "loraboard.db")
    with Session(engine) as session:
        run = Run(**fields)
        session.add(run)
        session.commit()
        session.refresh(run)
        assert run.id is not None
        run_id = run.id
    engine.dispose()
    return run_id


@pytest.fixture
def clean_runs(shared_server: Server) -> Callable[[], None]:
    def delete_all() -> None:
        engine = make_engine(shared_server.root / "loraboard.db")
        with Session(engine) as session:
            for run in session.exec(select(Run)).all():
                session.delete(run)
            session.commit()
        engine.dispose()
    return delete_all


def test_run_page_shows_world_size_backend_and_ranks(shared_server: Server, page: Page,
                                                      clean_runs: Callable[[], None]) -> None:
    config = spread_config(8, hosts=["mac1.local", "mac2.local"], processes_per_host=2).model_dump_json()
    hardware = json.dumps({"distributed": {"world_size": 4, "backend": "ring", "hosts": ["mac1.local", "mac2.local"],
                                           "per_rank_tokens_per_second": [812.4, 805.0, 640.2, 655.9]}})
    run_id = insert_run(shared_server, name="two macs <b>", status="completed", config_json=config, total_iters=10,
                        iteration=10, hardware_json=hardware)
    try:
        page.goto(f"{shared_server.url}/runs/{run_id}")
        expect(page.locator("#distributed-world-size")).to_have_text("4")
        expect(page.locator("#distributed-backend")).to_have_text("ring")
        rows = page.locator("#distributed-ranks tbody tr")
        expect(rows).to_have_count(4)
        expect(rows.nth(2)).to_have_text("2mac2.local640")
        page.locator("#run-distributed").scroll_into_view_if_needed()
        shot(page, "distributed-run")
    finally:
        clean_runs()


def test_other_hosts_must_see_loraboards_database_and_adapters_at_the_same_path() -> None:
    fake = FakeSsh({("mac2.local", "/srv/lb/loraboard.db"): Finished(1, "")})
    config = spread_config(hosts=["mac2.local"])
    problems = distributed_problems(config, fake, has_all, shared=["/srv/lb/loraboard.db", "/srv/lb/adapters"])
    assert problems == {"distributed.hosts": "mac2.local does not see loraboard's database at /srv/lb/loraboard.db: "
                        "every rank reads the run from it, so a run across hosts needs loraboard's folder on a "
                        "filesystem the hosts share, at the same path (e.g. NFS)"}


def test_the_launchers_rank_threads_wait_for_output_not_for_a_writable_stdin() -> None:
    """mlx.launch's rank threads select on each rank's standard input for writing too, which a pipe always is:
    they would spin. The launcher's select waits for output alone, and still reports output at once."""
    import os

    from worker.distributed import select_reads_only

    rank_out, ours = os.pipe()
    stdin_read, stdin_write = os.pipe()  # a rank's standard input: always writable, never written here
    try:
        assert select_reads_only([rank_out], [stdin_write], [], 0.05) == ([], [], [])
        os.write(ours, b"step 1\n")
        assert select_reads_only([rank_out], [stdin_write], [], 5) == ([rank_out], [], [])
    finally:
        for fd in (rank_out, ours, stdin_read, stdin_write):
            os.close(fd)
