"""The JSON API against its own OpenAPI document: schemathesis generates requests for every operation
(boundary values, wrong types, huge integers, odd bodies) and sends them to the dashboard in-process (through
schemathesis's ASGI transport, on a real SQLite file; a run trained by a real worker, and the jobs the requests
start are real workers too).

Every answer must be a documented status code with a documented content type and, where the document
gives one, a body matching its schema; never a 5xx.

`POST /api/runs` is left out of the generated requests: every acceptable body starts a training
worker. It gets its own hand-picked bodies instead (each an error: nothing trains), and the last test
checks that the fuzzing left no run queued or training. The hand-picked requests need no run: they are sent to a
dashboard of their own, and no worker starts.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from conftest import QUICK_RUN, TERMINAL, InProcess, in_process
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import ASGIClient
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 15  # generated examples per operation, on top of the coverage phase's boundary values
STARTS_WORKERS = ("POST", "/api/runs")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, default_model: Path,
                short_data: Path) -> Iterator[InProcess]:
    """The dashboard with one short run (on the sample's examples cut short) that has ended with checkpoints, so
    that run 1 and its checkpoints exist."""
    with in_process(tmp_path_factory.mktemp("fuzz")) as srv:
        status, run = srv.post("/api/runs", {**QUICK_RUN, "iters": 10, "save_every": 5, "steps_per_eval": 5,
                                             "steps_per_report": 5, "data": str(short_data)})
        assert status == 201, run
        assert srv.wait_terminal(run["id"])["status"] == "completed"
        yield srv


def asgi_session(inproc: InProcess) -> ASGIClient:
    """schemathesis's client of an ASGI app, not entered: the dashboard's lifespan is in_process's, started once."""
    return ASGIClient(inproc.app, base_url=inproc.url)


@pytest.fixture(scope="module")
def fuzz_stats() -> dict[str, Any]:
    return {"requests": 0, "status": collections.Counter(), "operations": set(), "by_operation": collections.Counter()}


@pytest.fixture(scope="module")
def api_schema(shared_app_client: InProcess) -> schemathesis.BaseSchema:
    """The API's OpenAPI document, as the dashboard serves it."""
    return schemathesis.openapi.from_dict(shared_app_client.get("/openapi.json"))


@pytest.fixture(autouse=True)
def _schemathesis_node_id(request: pytest.FixtureRequest) -> None:
    """schemathesis's pytest plugin reads and renames `node._nodeid`, which pytest 9.2 keeps as `node._id`."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


# Requests that start a worker which stays (the playground, a server) or writes a model folder (fuse, quantize,
# GGUF) are left out too: their modules send them bad bodies and check each 4xx.
STARTS_LASTING_WORKERS = (r"^/api/(generate|generations|prompt-sets/[^/]+/run|models/quantize|models/[^/]+/(gguf|serve)"
                          r"|runs/[^/]+/checkpoints/[^/]+/(fuse|serve))$")
schema = (schemathesis.pytest.from_fixture("api_schema").exclude(method=STARTS_WORKERS[0], path=STARTS_WORKERS[1])
          .exclude(method="POST", path_regex=STARTS_LASTING_WORKERS))


@pytest.mark.real  # the run it needs trains, and the jobs the requests ask for run: real workers
@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          database=None)
def test_api_conforms_to_its_schema(case: schemathesis.Case, fuzz_server: InProcess,
                                    fuzz_stats: dict[str, Any]) -> None:
    if case.path.endswith("/events"):  # a stream of a live run ends when it does: bound it
        case.query = {**(case.query or {}), "max_s": 2}
    response = case.call(base_url=fuzz_server.url, session=asgi_session(fuzz_server), timeout=30)
    fuzz_stats["requests"] += 1
    fuzz_stats["status"][response.status_code] += 1
    fuzz_stats["operations"].add(case.operation.label)
    fuzz_stats["by_operation"][(case.operation.label, response.status_code)] += 1
    case.validate_response(response, checks=CHECKS)


@pytest.mark.parametrize("body", [
    {"iters": 10**30},
    {"resume_from": {"run_id": 2**70, "iteration": 1}},
    {"resume_from": {"run_id": 2**62, "iteration": 2**62}},
    {"batch_size": "four"},
    {"no_such_key": 1},
    {"data": "relative/folder"},
    {"early_stopping": {"patience": -1}},
])
def test_bad_run_bodies_are_documented_4xx(body: dict[str, Any], shared_app_client: InProcess,
                                           api_schema: Any) -> None:
    case = api_schema["/api/runs"]["POST"].Case(body=body, headers={"Content-Type": "application/json"})
    response = case.call(base_url=shared_app_client.url, session=asgi_session(shared_app_client), timeout=30)
    case.validate_response(response, checks=CHECKS)
    assert response.status_code == 422, (body, response.status_code, response.text)


def test_not_json_run_body_is_400(shared_app_client: InProcess) -> None:
    response = asgi_session(shared_app_client).post("/api/runs", data=b"\xff\xfe{", timeout=30,
                                                    headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert "detail" in response.json()


@pytest.mark.parametrize("path", [
    "/api/runs/84786022774147863141154816",
    "/api/runs/9223372036854775808/checkpoints",
    "/api/runs/1/checkpoints/99999999999999999999999/download",
    "/api/datasets/21908180095958782050304",
    "/api/token-stats/9223372036854775808",
    "/api/runs/1/metrics?after=99999999999999999999999",
    "/runs/99999999999999999999999",
    "/runs/new?from_run=99999999999999999999999",
    "/compare?ids=99999999999999999999999",
])
def test_ids_beyond_sqlite_are_4xx(path: str, shared_app_client: InProcess) -> None:
    response = asgi_session(shared_app_client).get(path, timeout=30)
    assert 400 <= response.status_code < 500, (path, response.status_code, response.text[:300])


@pytest.mark.real  # ends the jobs the generated requests started
def test_fuzzing_left_nothing_running(fuzz_server: InProcess, fuzz_stats: dict[str, Any]) -> None:
    """Nothing the generated requests did is still queued or training; what was sent, for the record."""
    print(f"fuzzing: {fuzz_stats['requests']} requests over {len(fuzz_stats['operations'])} operations, "
          f"status codes {dict(sorted(fuzz_stats['status'].items()))}")
    for (label, code), count in sorted(fuzz_stats["by_operation"].items()):
        print(f"  {label}: {code} x{count}")
    assert not any(code >= 500 for code in fuzz_stats["status"])
    runs = fuzz_server.get("/api/runs")
    assert [run for run in runs if run["status"] not in TERMINAL] == []
    # token statistics jobs it asked for end by themselves (the sample dataset takes seconds); the evaluations it
    # queued (one at a time, each loading the model) are cancelled, and end
    for job in fuzz_server.get("/api/jobs?limit=500"):
        if job["status"] not in TERMINAL and job["kind"] != "token_stats":
            fuzz_server.post(f"/api/jobs/{job['id']}/cancel")
    deadline = time.monotonic() + 120
    while (live := [job for job in fuzz_server.get("/api/jobs") if job["status"] not in TERMINAL]) and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    assert live == []
