"""No GET changes anything: every GET route of the app, called with its typical query parameters on a database with
content, adds no row to any table, writes no file and starts no process (any web page can make a browser send a
GET, so starting work is a POST's, which the cross-site check guards). In-process, on a real SQLite file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import InProcess
from fastapi.routing import APIRoute
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from app.datasets.registry import ensure_sample_registered
from app.datasets.token_stats import KIND as TOKEN_STATS
from app.tables import (
    Checkpoint,
    Dataset,
    Evaluation,
    EvaluationExample,
    Generation,
    GenerationColumn,
    Job,
    PromptSet,
    RegisteredModel,
    Run,
    TrainReport,
    ValReport,
)

ITERATION = 20
MODEL_NAME = "probe-fused"
# A memo, not a change: the result of checking a data folder's lines, kept while its files are unchanged.
CACHES = frozenset({"datasetcheck"})
SQLITE_FILES = re.compile(r"loraboard\.db(-wal|-shm|-journal)?$")


def get_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """The app's GET routes, through included routers at any depth."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from get_routes(included.routes)
        elif isinstance(route, APIRoute) and "GET" in route.methods:
            yield route


def query_names(route: APIRoute) -> set[str]:
    """The query parameters a route reads (its dependencies' too)."""
    names: set[str] = set()
    stack = [route.dependant]
    while stack:
        dependant = stack.pop()
        names.update(param.alias for param in dependant.query_params)
        stack.extend(dependant.dependencies)
    return names


def seed(inproc: InProcess) -> dict[str, Any]:
    """A finished run with reports, a checkpoint and an evaluation, a failed token-statistics job, the sample
    dataset (registered as the app starts; again here, in case the sample was written after), a prompt set with an
    answer and a registered model: every GET route has something to show. Answers the values of path and query
    parameters."""
    settings = inproc.app.state.settings
    data, model = str(settings.default_dataset_dir.resolve()), str(settings.default_model_dir.resolve())
    with Session(inproc.engine) as session:
        ensure_sample_registered(session, settings)
        dataset = session.execute(select(Dataset)).scalars().first()
        run = Run(name="done", status="completed", config_json=json.dumps({"model": model, "data": data, "iters": 20}),
                  iteration=ITERATION, total_iters=ITERATION)
        session.add(run)
        session.commit()
        assert run.id is not None and dataset is not None
        for it in (10, 20):
            session.add(TrainReport(run_id=run.id, iteration=it, train_loss=3.0 - it / 20, learning_rate=1e-3,
                                    iterations_per_second=2.0, tokens_per_second=900.0, trained_tokens=100 * it,
                                    peak_memory=0.1))
            session.add(ValReport(run_id=run.id, iteration=it, val_loss=3.1 - it / 20))
        session.add(Checkpoint(run_id=run.id, iteration=ITERATION, filename=f"{ITERATION:07d}_adapters.safetensors",
                               size_bytes=1, sha256="0" * 64, val_loss=2.1, is_deployment=True))
        job = Job(kind=TOKEN_STATS, status="failed", error="probe", run_id=None,
                  params_json=json.dumps({"data": data, "model": model}))
        session.add(job)
        session.commit()
        assert job.id is not None
        session.add(Evaluation(run_id=run.id, job_id=job.id, iteration=ITERATION, split="test", batches=1, loss=2.0,
                               perplexity=7.4, tokens=10))
        session.add(EvaluationExample(run_id=run.id, job_id=job.id, iteration=ITERATION, split="test", line=1,
                                      prompt="hi", reference="a", output="a", score=1.0, outcome_json="{}"))
        prompt_set = PromptSet(run_id=run.id, name="probe", prompts_json=json.dumps([{"system": None, "prompt": "hi"}]))
        session.add(prompt_set)
        session.commit()
        assert prompt_set.id is not None
        generation = Generation(job_id=None, model=model, request_json=json.dumps({"prompt": "hi", "max_tokens": 8}),
                                status="completed", prompt_set_id=prompt_set.id, prompt_index=0)
        session.add(generation)
        session.commit()
        assert generation.id is not None
        session.add(GenerationColumn(generation_id=generation.id, column_index=0, text="hello", tokens=1, done=True))
        session.add(RegisteredModel(name=MODEL_NAME, path=str(settings.local_models_dir / MODEL_NAME), origin="fused",
                                    source_model=model, run_id=run.id, iteration=ITERATION))
        session.commit()
        return {
            "run_id": run.id, "iteration": ITERATION, "dataset_id": dataset.id, "job_id": job.id,
            "generation_id": generation.id, "prompt_set_id": prompt_set.id, "name": MODEL_NAME, "export": "probe",
            # query parameters: the sample data and the embedded model wherever a route takes them
            "data": data, "model": model, "path": data, "ids": str(run.id), "split": "test", "line": "1",
            "max_s": "1",
        }


def row_counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as session:
        return {table.name: session.execute(select(func.count()).select_from(table)).scalar_one()
                for table in SQLModel.metadata.sorted_tables}


def last_rowids(engine: Engine) -> dict[str, int]:
    with Session(engine) as session:
        return {table.name: session.execute(text(f'SELECT coalesce(max(rowid), 0) FROM "{table.name}"')).scalar_one()
                for table in SQLModel.metadata.sorted_tables}


def remove_rows_after(engine: Engine, last: dict[str, int]) -> None:
    """Take out what a GET added, so that the next route is judged on the seeded database alone."""
    with Session(engine) as session:
        for table in reversed(SQLModel.metadata.sorted_tables):
            session.execute(text(f'DELETE FROM "{table.name}" WHERE rowid > :last'), {"last": last[table.name]})
        session.commit()


def files_under(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if not SQLITE_FILES.search(path.name)}


def workers(supervisor: Any) -> set[str]:
    """The worker processes the supervisor started, in words."""
    return {f"worker of run {key}" for key in supervisor.children} | {f"worker of job {key}"
                                                                       for key in supervisor.job_children}


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The command lines of the processes started in this process; a worker is replaced by one that exits at once
    (its job then ends interrupted), so that no test leaves MLX work running."""
    commands: list[str] = []
    real_popen = subprocess.Popen

    def recording_popen(args: Any, *rest: Any, **kwargs: Any) -> Any:
        words = [str(arg) for arg in args] if isinstance(args, list | tuple) else [str(args)]
        commands.append(" ".join(words))
        if "worker" in words:
            args = [sys.executable, "-c", "pass"]
        return real_popen(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    return commands


def test_no_get_route_adds_a_row_writes_a_file_or_starts_a_process(app_client: InProcess, started: list[str]) -> None:
    values = seed(app_client)
    supervisor = app_client.app.state.supervisor
    stopping: threading.Event = app_client.app.state.stopping
    routes = list(get_routes(app_client.app.routes))
    assert len(routes) >= 60, [route.path for route in routes]
    changes: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for route in routes:
        path = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: str(values[m.group(1)]), route.path)
        params = {name: values[name] for name in query_names(route) if name in values}
        for query in (params, {}):  # with the typical parameters, then bare (the route's defaults)
            call = f"GET {path} {query}"
            before, files_before = row_counts(app_client.engine), files_under(app_client.root)
            workers_before, last = workers(supervisor), last_rowids(app_client.engine)
            guard = threading.Timer(10, stopping.set)  # a stream that outlives its max_s ends with the app's signal
            guard.start()
            try:
                with app_client.client.stream("GET", path, params=query) as response:
                    response.read()
                if response.status_code >= 500:
                    errors[call] = str(response.status_code)
            except Exception as exc:  # the route raised: noted, and the walk goes on
                errors[call] = repr(exc)
            finally:
                guard.cancel()
                stopping.clear()
            after = row_counts(app_client.engine)
            added = {table: after[table] - count for table, count in before.items()
                     if table not in CACHES and after[table] != count}
            written = files_under(app_client.root) ^ files_before
            spawned = started + sorted(workers(supervisor) - workers_before)
            if added or written or spawned:
                changes[call] = {"rows": added, "files": sorted(written), "processes": list(spawned)}
                started.clear()
                with supervisor.lock:  # not while a tick updates what it read
                    remove_rows_after(app_client.engine, last)
    assert not changes, "GETs changed state:\n" + "\n".join(f"{call}: {what}" for call, what in changes.items())
    assert not errors, f"GETs failed: {errors}"


def test_the_report_counts_tokens_on_a_post_only(app_client: InProcess, started: list[str]) -> None:
    values = seed(app_client)
    run_id = values["run_id"]
    page = app_client.get(f"/runs/{run_id}/report")
    assert 'id="report-count-tokens"' in page and "have not been counted for this data and model yet" in page
    assert "have not been counted" in app_client.get(f"/api/runs/{run_id}/report.md")

    answer = app_client.client.post(f"/runs/{run_id}/report/token-stats", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == f"/runs/{run_id}/report#report-dataset"
    with Session(app_client.engine) as session:
        jobs = session.execute(select(Job).where(Job.kind == TOKEN_STATS, Job.id != values["job_id"])).scalars().all()
    assert [job.params["data"] for job in jobs] == [values["data"]]
    assert f"-m worker job --job-id {jobs[0].id}" in " ".join(started)
    page = app_client.get(f"/runs/{run_id}/report")  # the job's state now (its stand-in worker has ended it)
    assert 'id="report-count-tokens"' not in page and "have not been counted" not in page
