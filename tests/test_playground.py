"""The playground API against a real server, real playground worker and the trained LoRA run: greedy answers equal
`mlx_lm generate`, the event stream interleaves the columns, a prompt waits for a training run (409 without
streaming), and prompt sets are answered by two checkpoints side by side. Bad requests write nothing: checked
in-process, on a run written as its worker leaves it."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_DIR, QUICK_RUN, TERMINAL, InProcess, Server, base_env, bearer, in_process
from markupsafe import escape
from sqlmodel import Session

from app.contract.paths import checkpoint_files, ensure_checkpoint_adapter_dir
from app.contract.settings import Settings
from app.db import make_engine
from app.playground.requests import GenerateRequest, same_model
from app.playground.stream import settle
from app.playground.view import column_choices
from app.tables import Checkpoint, Generation, Job, Run, utcnow

pytestmark = pytest.mark.xdist_group("checkpoint_use")

PROMPT = "My internet has been down since this morning and nobody calls me back."
MAX_TOKENS = 16


def events(server: Server, body: dict[str, Any], path: str = "/api/generate", method: str = "POST",
           ) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) of a whole event stream."""
    data = json.dumps(body).encode() if method == "POST" else None
    request = urllib.request.Request(server.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **bearer(server.token)})
    found: list[tuple[str, dict[str, Any]]] = []
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        name = ""
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                found.append((name, json.loads(line[len("data: "):])))
    return found


def count_rows(server: Server | InProcess) -> tuple[int, int, int]:
    with sqlite3.connect(f"file:{server.root / 'loraboard.db'}?mode=ro", uri=True) as db:
        return tuple(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # type: ignore[return-value]
                     for table in ("generation", "generationcolumn", "promptset"))


def playground_jobs(server: Server) -> list[dict[str, Any]]:
    return server.get("/api/jobs?kind=playground")


def release(server: Server) -> None:
    """Cancel every live playground job and wait for its end (a loaded playground holds training runs back)."""
    for job in playground_jobs(server):
        if job["status"] not in TERMINAL:
            server.post(f"/api/jobs/{job['id']}/cancel")
            server.poll(f"/api/jobs/{job['id']}", lambda j: j["status"] in TERMINAL, 60, "ended")


@pytest.fixture(scope="module")
def playground(lora_run: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The run, and one greedy non-streamed answer of the base model and the final checkpoint."""
    server: Server = lora_run["server"]
    final = lora_run["iterations"][-1]
    status, answer = server.post("/api/generate", {
        "prompt": PROMPT, "adapters": [None, {"run_id": lora_run["run_id"], "iteration": final}],
        "max_tokens": MAX_TOKENS, "stream": False})
    assert status == 200, answer
    yield {**lora_run, "answer": answer, "final": final}
    release(server)


def test_greedy_checkpoint_column_equals_mlx_lm_generate(playground: dict[str, Any]) -> None:
    server: Server = playground["server"]
    settings = Settings(adapters_dir=server.root / "adapters")
    folder = ensure_checkpoint_adapter_dir(settings, playground["run_id"], playground["final"])
    cli = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "generate", "--model", playground["model"], "--adapter-path", str(folder),
         "--prompt", PROMPT, "--temp", "0", "--max-tokens", str(MAX_TOKENS)],
        cwd=PROJECT_DIR, env=base_env(), capture_output=True, text=True, timeout=180, check=True)
    expected = cli.stdout.split("==========\n", 1)[1].split("\n==========", 1)[0]
    base, tuned = playground["answer"]["outputs"]
    assert tuned["text"] == expected, (tuned, cli.stdout)
    assert tuned["tokens"] == MAX_TOKENS or tuned["finish_reason"] == "stop"
    assert base["text"] != tuned["text"]  # 40 LoRA steps changed the greedy answer
    for column in (base, tuned):
        assert column["tokens_per_second"] > 0 and column["first_token_s"] > 0, column


def test_stream_interleaves_both_columns_and_ends_with_done(playground: dict[str, Any]) -> None:
    server: Server = playground["server"]
    first = playground["iterations"][0]
    stream = events(server, {"prompt": PROMPT, "max_tokens": 12, "adapters": [
        None, {"run_id": playground["run_id"], "iteration": first}]})
    names = [name for name, _ in stream]
    assert names[-1] == "done" and stream[-1][1]["status"] == "completed", stream[-3:]
    tokens = [data for name, data in stream if name == "token"]
    order = [t["column"] for t in tokens]
    assert set(order) == {0, 1}
    assert order.index(1) < len(order) - 1 - order[::-1].index(0), order  # column 1 began before column 0 ended
    ends = {data["column"]: data for name, data in stream if name == "column"}
    assert set(ends) == {0, 1}
    for column, end in ends.items():
        assert "".join(t["text"] for t in tokens if t["column"] == column) == end["text"]
        assert [t["seq"] for t in tokens if t["column"] == column] == list(range(end["tokens"]))
        assert end["tokens_per_second"] > 0 and end["first_token_s"] > 0
    generation = server.get(f"/api/generations/{stream[-1][1]['generation_id']}")
    assert [c["text"] for c in generation["columns"]] == [ends[0]["text"], ends[1]["text"]]
    assert generation["request"]["messages"] == [{"role": "user", "content": PROMPT}]
    assert playground["answer"]["outputs"][0]["text"].startswith(ends[0]["text"][:8])  # greedy: same start


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[dict[str, Any]]:
    """The dashboard in-process with a completed LoRA run of the embedded model as its worker leaves it for the
    playground's checks: checkpoint rows at 20 and 40, their weights files and adapter_config.json (no worker)."""
    with in_process(tmp_path_factory.mktemp("playground")) as inproc:
        model = str(default_model.resolve())
        with Session(inproc.engine) as session:
            run = Run(name="lora for use", status="completed", config_json=json.dumps({**QUICK_RUN, "model": model}),
                      total_iters=40, iteration=40, started_at=utcnow(), finished_at=utcnow())
            session.add(run)
            session.commit()
            assert run.id is not None
            folder = inproc.root / "adapters" / f"run-{run.id:04d}"
            folder.mkdir(parents=True)
            (folder / "adapter_config.json").write_text(json.dumps({"model": model, "fine_tune_type": "lora"}))
            for iteration in (20, 40):
                (folder / f"{iteration:07d}_adapters.safetensors").write_bytes(b"weights")
                session.add(Checkpoint(run_id=run.id, iteration=iteration,
                                       filename=f"{iteration:07d}_adapters.safetensors", size_bytes=7, sha256=""))
            session.commit()
            run_id = run.id
        yield {"server": inproc, "run_id": run_id, "final": 40, "model": model}


def test_bad_requests_are_refused_and_write_nothing(checkpointed: dict[str, Any], tmp_path_factory: Any) -> None:
    server: InProcess = checkpointed["server"]
    run_id, final = checkpointed["run_id"], checkpointed["final"]
    other = tmp_path_factory.mktemp("other-model")
    (other / "config.json").write_text((Path(checkpointed["model"]) / "config.json").read_text())
    ckpt = {"run_id": run_id, "iteration": final}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"prompt": "x", "adapters": [None] * 5}, "at most 4"),
        ({"prompt": "x", "adapters": []}, "at least 1"),
        ({"prompt": "x", "adapters": [{"run_id": 999_999, "iteration": 20}]}, "no run 999999"),
        ({"prompt": "x", "adapters": [{"run_id": run_id, "iteration": 7}]}, "no checkpoint at iteration 7"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, "not both"),
        ({"max_tokens": 4}, "either messages or prompt"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"messages": [{"role": "system", "content": "x"}]}, "no user message"),
        ({"prompt": "x", "max_tokens": 0}, "greater than or equal to 1"),
        ({"prompt": "x", "max_tokens": 4097}, "less than or equal to 4096"),
        ({"prompt": "x", "temperature": -0.5}, "greater than or equal to 0"),
        ({"prompt": "x", "top_p": 0}, "greater than 0"),
        ({"prompt": "x", "top_p": 1.5}, "less than or equal to 1"),
        ({"prompt": "x", "seed": "lucky"}, "valid integer"),
        ({"prompt": "x", "colour": "blue"}, "Extra inputs"),
        ({"prompt": "x", "model": str(other), "adapters": [None, ckpt]}, f"not on the requested model {other}"),
        ({"prompt": "x", "model": "/nonexistent/model"}, "does not exist"),
        ({"prompt": "x", "model": "/etc"}, "outside the folders"),
    ]
    before = count_rows(server)
    for body, expected in cases:
        status, answer = server.post("/api/generate", {**body, "stream": False})
        assert status == 422, (body, status, answer)
        assert expected in json.dumps(answer["detail"]), (body, answer)
    weights = checkpoint_files(Settings(adapters_dir=server.root / "adapters"), run_id, final)[0]
    hidden = weights.with_name(".hidden-for-test")
    weights.rename(hidden)
    try:
        status, answer = server.post("/api/generate", {"prompt": "x", "adapters": [ckpt]})
    finally:
        hidden.rename(weights)
    assert status == 422 and "checkpoint file is missing" in json.dumps(answer["detail"]), answer
    assert count_rows(server) == before


def test_prompt_set_answered_by_two_checkpoints_side_by_side(playground: dict[str, Any]) -> None:
    server: Server = playground["server"]
    run_id, (first, final) = playground["run_id"], playground["iterations"][:2]
    body = {"run_id": run_id, "name": "complaints", "prompts": [
        {"prompt": PROMPT}, {"system": "Answer in one line.", "prompt": "I want to cancel my plan."}]}
    status, created = server.post("/api/prompt-sets", body)
    assert status == 201, created
    status, again = server.post("/api/prompt-sets", body)
    assert status == 409 and "already has a prompt set named 'complaints'" in again["detail"], again
    before = count_rows(server)
    for bad in ({"columns": [{"run_id": run_id, "iteration": 3}]}, {"columns": []},
                {"columns": [None], "max_tokens": 0}):
        status, answer = server.post(f"/api/prompt-sets/{created['id']}/run", bad)
        assert status == 422, (bad, answer)
    assert server.post("/api/prompt-sets/999999/run", {"columns": [None]})[0] == 404
    assert count_rows(server) == before
    ids = []
    for iteration in (first, final):
        status, ran = server.post(f"/api/prompt-sets/{created['id']}/run", {
            "columns": [{"run_id": run_id, "iteration": iteration}], "max_tokens": 6})
        assert status == 201 and len(ran["generation_ids"]) == 2, ran
        ids += ran["generation_ids"]
    detail = server.poll(f"/api/prompt-sets/{created['id']}", lambda d: not d["live"], 120, "answered")
    assert [(c["run_id"], c["iteration"]) for c in detail["columns"]] == [(run_id, first), (run_id, final)]
    assert sorted(o["generation_id"] for o in detail["outputs"]) == sorted(ids)
    assert all(o["done"] and o["text"] and o["status"] == "completed" for o in detail["outputs"]), detail
    assert [s["id"] for s in server.get(f"/api/prompt-sets?run_id={run_id}")] == [created["id"]]
    status, _, page = server.request("GET", f"/prompt-sets/{created['id']}")
    html = page.decode()
    assert status == 200
    assert f"run {run_id} · iteration {first}" in html and f"run {run_id} · iteration {final}" in html
    for output in detail["outputs"]:
        assert str(escape(output["text"])) in html


def test_release_then_a_prompt_waits_for_training_and_starts_after_it(playground: dict[str, Any]) -> None:
    server: Server = playground["server"]
    live = [j for j in playground_jobs(server) if j["status"] not in TERMINAL]
    assert len(live) == 1, live  # loaded by the tests above
    status, _, page = server.request("POST", "/playground/release")  # the page's Release memory button
    assert status == 200 and b'id="playground-job"' in page
    ended = server.poll(f"/api/jobs/{live[0]['id']}", lambda j: j["status"] in TERMINAL, 60, "released")
    assert ended["status"] == "stopped", ended
    assert b"No model loaded" in server.request("GET", "/playground/job")[2]
    status, run = server.post("/api/runs", {**QUICK_RUN, "iters": 100_000, "data": str(playground["data"]),
                                            "name": "holds the memory"})
    assert status == 201, run
    try:
        server.wait_for(run["id"], lambda r: r["status"] in ("starting", "running"), 60, "training")
        before = count_rows(server)
        status, answer = server.post("/api/generate", {"prompt": PROMPT, "max_tokens": 4, "stream": False})
        assert status == 409, answer
        assert f"run {run['id']} (training)" in answer["detail"], answer
        assert count_rows(server) == before
        status, queued = server.post("/api/generations", {"prompt": PROMPT, "max_tokens": 4})
        assert status == 201, queued
        waiting = server.poll(f"/api/jobs/{queued['job_id']}", lambda j: j["waiting_reason"], 30, "waiting")
        assert f"run {run['id']}" in waiting["waiting_reason"] and waiting["status"] == "queued"
        first = events(server, {}, f"/api/generations/{queued['generation_id']}/events?max_s=1", "GET")
        assert first and first[0][0] == "waiting" and f"run {run['id']}" in first[0][1]["reason"], first
        panel = server.request("GET", "/playground/job")[2].decode()  # the page offers to start anyway, or wait
        assert f"waits for run {run['id']} (training)" in panel and 'id="playground-start-anyway"' in panel
    finally:
        server.post(f"/api/runs/{run['id']}/stop")
    server.wait_terminal(run["id"], 120)
    done = server.poll(f"/api/generations/{queued['generation_id']}", lambda g: g["status"] in TERMINAL, 120, "done")
    assert done["status"] == "completed" and done["columns"][0]["tokens"] == 4, done


def test_a_run_queued_behind_the_idle_playground_releases_it_and_starts(playground: dict[str, Any]) -> None:
    """The playground, loaded and idle, is released by the run that needs its memory: no click, no 10 minutes."""
    server: Server = playground["server"]
    status, answer = server.post("/api/generate", {"prompt": PROMPT, "max_tokens": 2, "stream": False})
    assert status == 200, answer  # loaded again (the test above released it), now idle
    holder = next(j for j in playground_jobs(server) if j["status"] not in TERMINAL)
    status, run = server.post("/api/runs", {**QUICK_RUN, "iters": 100_000, "data": str(playground["data"]),
                                            "name": "releases the playground"})
    assert status == 201, run
    try:  # the answer says so: the playground is being released for it
        assert run["status"] == "queued" and run["waiting_for"] == f"playground {holder['id']}", run
        assert run["waiting_reason"] == (f"waits for the playground (job {holder['id']}) to be released: it was idle, "
                                         "so it is being released for this run"), run
        started = server.wait_for(run["id"], lambda r: r["status"] in ("starting", "running"), 60, "training")
        assert started["waiting_reason"] is None and started["waiting_for"] is None
        released = server.get(f"/api/jobs/{holder['id']}")
        assert released["status"] in ("stopping", "stopped"), released  # the run asked it to let go
    finally:
        server.post(f"/api/runs/{run['id']}/stop")
    assert server.poll(f"/api/jobs/{holder['id']}", lambda j: j["status"] in TERMINAL, 60, "ended")["status"] == (
        "stopped")
    server.wait_terminal(run["id"], 120)


# Pure rules (no server) ------------------------------------------------------------------------------------


def test_same_model_compares_folders_by_resolved_path_and_hub_ids_as_written(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "link").symlink_to(folder)
    assert same_model(str(folder), str(tmp_path / "link"))
    assert same_model(str(folder), str(tmp_path / "model" / ".." / "model"))
    assert not same_model(str(folder), str(tmp_path))
    assert same_model("org/model", "org/model") and not same_model("org/model", "org/other")


def test_a_request_is_one_prompt_made_chat_messages() -> None:
    plain = GenerateRequest(prompt="Hi", system="Be brief.")
    assert plain.chat() == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert GenerateRequest(prompt="Hi", system="  ").chat() == [{"role": "user", "content": "Hi"}]
    assert plain.adapters == [None] and plain.temperature == 0 and plain.stream
    chat = GenerateRequest(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    assert chat.chat() == [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    with pytest.raises(ValueError, match="system goes with prompt"):
        GenerateRequest(messages=[{"role": "user", "content": "u"}], system="s")


def test_columns_start_with_the_base_model_and_the_asked_checkpoint() -> None:
    runs = [{"run": Run(id=3, name="r"), "iterations": [20, 40]}]
    assert column_choices(None, runs) == ["base", "", "", ""]
    assert column_choices((3, 40), runs) == ["base", "3:40", "", ""]
    assert column_choices((3, 30), runs) == ["base", "", "", ""]  # no such checkpoint on this model


def test_settle_ends_generations_nobody_will_answer(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, adapters_dir=tmp_path / "adapters")
    engine = make_engine(tmp_path / "db.sqlite")
    with Session(engine) as session:
        dead = Job(kind="playground", status="failed", error="out of memory")
        session.add(dead)
        session.commit()
        long_ago = utcnow() - timedelta(seconds=60)
        orphan = Generation(model="m", request_json="{}", created_at=long_ago)
        fresh = Generation(model="m", request_json="{}")
        cut = Generation(model="m", request_json="{}", status="running", job_id=dead.id, created_at=long_ago)
        session.add_all([orphan, fresh, cut])
        session.commit()
        assert settle(session, settings, orphan).status == "stopped"
        assert "released before this prompt was answered" in (orphan.error or "")
        assert settle(session, settings, fresh).status == "queued"  # its job may be being created right now
        assert settle(session, settings, cut).status == "failed"
        assert "out of memory" in (cut.error or "")
        session.add(Job(kind="playground", status="queued"))
        session.commit()
        waiting = Generation(model="m", request_json="{}", created_at=long_ago)
        session.add(waiting)
        session.commit()
        assert settle(session, settings, waiting).status == "queued"  # a live job will answer it
