"""Runs list, rename, notes, delete, compare and summary figures. The list, filters, text, compare and summary
pages are rendered in-process from the rows of runs created through the API (their reports written as a worker
writes them); deleting what a real short run left and a live run's refusal use a real server and worker."""

from __future__ import annotations

import html
import re
import sqlite3
import statistics
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import QUICK_RUN, InProcess, Server, bearer, in_process, occupy_training_slot
from sqlmodel import Session

from app.tables import Checkpoint, Run, TrainReport, ValReport, utcnow

SHORT_RUN = {**QUICK_RUN, "iters": 20, "steps_per_eval": 10, "save_every": 10}  # validations at 0, 10, 20


def page(server: Server | InProcess, path: str, htmx: bool = False) -> str:
    headers = {"HX-Request": "true"} if htmx else {}
    if isinstance(server, InProcess):
        response = server.client.get(path, headers=headers)
        response.raise_for_status()  # as urlopen raises
        return response.text
    request = urllib.request.Request(server.url + path, headers={**headers, **bearer(server.token)})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode()


def post_form(server: Server | InProcess, path: str, fields: dict[str, str]) -> str:
    if isinstance(server, InProcess):
        response = server.client.post(path, data=fields, headers={"HX-Request": "true"})
        response.raise_for_status()
        return response.text
    data = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(server.url + path, data=data, method="POST",
                                     headers={"HX-Request": "true", **bearer(server.token)})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode()


def row_of(table: str, run_id: int) -> str:
    match = re.search(rf'<tr id="run-row-{run_id}".*?</tr>', table, re.S)
    assert match, f"run {run_id} is not listed"
    return match.group(0)


def listed(table: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr id="run-row-(\d+)"', table)]


def cells(row: str) -> list[str]:
    """Each cell's text, tags dropped and spaces collapsed."""
    texts = [re.sub(r"<[^>]+>", " ", cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
    return [" ".join(html.unescape(text).split()) for text in texts]


def summary_value(fragment: str, card: str) -> str:
    match = re.search(rf'id="summary-{card}">.*?data-value="([^"]*)"', fragment, re.S)
    assert match, f"no summary card {card}"
    return match.group(1)


COUNT_ROWS = {
    "trainreport": "SELECT COUNT(*) FROM trainreport WHERE run_id = ?",
    "valreport": "SELECT COUNT(*) FROM valreport WHERE run_id = ?",
    "checkpoint": "SELECT COUNT(*) FROM checkpoint WHERE run_id = ?",
}


def db_count(server: Server, table: str, run_id: int) -> int:
    with sqlite3.connect(server.root / "loraboard.db") as conn:
        return int(conn.execute(COUNT_ROWS[table], (run_id,)).fetchone()[0])


def write_end(inproc: InProcess, run_id: int, status: str, seed: float = 0.0) -> None:
    """End a queued run as its worker would have: `completed` with the reports of SHORT_RUN (training every 5
    steps, validation at 0, 10 and 20, checkpoints at 10 and 20), or `failed` before any report."""
    with Session(inproc.engine) as session:
        run = session.get(Run, run_id)
        assert run is not None and run.status == "queued", run
        run.started_at = utcnow() - timedelta(seconds=42)
        run.finished_at = utcnow()
        run.status = status
        if status == "failed":
            run.error = "the model folder /nonexistent/model does not exist"
        else:
            run.iteration = 20
            for n, iteration in enumerate((5, 10, 15, 20)):
                session.add(TrainReport(run_id=run_id, iteration=iteration, train_loss=2.5 - 0.3 * n - seed,
                                        learning_rate=1e-3, iterations_per_second=1.5 + 0.1 * n + seed,
                                        tokens_per_second=610.0 + 7 * n + 50 * seed, trained_tokens=980 * (n + 1),
                                        peak_memory=0.21 + 0.01 * n))
            for iteration, loss in ((0, 2.9), (10, 2.1 - seed), (20, 2.2 - seed)):
                session.add(ValReport(run_id=run_id, iteration=iteration, val_loss=loss, val_time=0.4, batches=5))
            for iteration in (10, 20):
                session.add(Checkpoint(run_id=run_id, iteration=iteration, filename=f"{iteration:07d}_adapters"
                                       ".safetensors", size_bytes=1024, sha256="0" * 64))
        session.add(run)
        session.commit()


@pytest.fixture(scope="module")
def listing(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[InProcess]:
    """The dashboard in-process; no worker is started (runs made through the API are ended by the tests)."""
    with in_process(tmp_path_factory.mktemp("runlist"), heartbeat_timeout_s=3600) as inproc:
        yield inproc


def ended_runs(inproc: InProcess, *runs: tuple[dict[str, Any], str, float]) -> list[int]:
    """Runs created through the API (payload), then ended as their workers would (status, seed of the figures).
    A run holds the training slot meanwhile, so none is started; it ends once they have."""
    holder = occupy_training_slot(inproc)
    made = []
    for payload, status, seed in runs:
        code, run = inproc.post("/api/runs", payload)
        assert code == 201 and run["status"] == "queued", run
        write_end(inproc, run["id"], status, seed)
        made.append(run["id"])
    with Session(inproc.engine) as session:
        held = session.get(Run, holder)
        assert held is not None
        held.status, held.finished_at = "completed", utcnow()  # the slot is free again: nothing is queued
        session.add(held)
        session.commit()
    return made


@pytest.fixture(scope="module")
def two_runs(listing: InProcess) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Two finished quick runs that differ in learning rate only."""
    alpha, beta = ended_runs(listing, ({**SHORT_RUN, "name": "alpha sweep"}, "completed", 0.0),
                             ({**SHORT_RUN, "name": "beta", "learning_rate": 2e-4}, "completed", 0.1))
    yield listing.get(f"/api/runs/{alpha}"), listing.get(f"/api/runs/{beta}")


def test_list_and_summary_figures_equal_what_the_metrics_give(listing: InProcess, two_runs: Any) -> None:
    table = page(listing, "/")
    for run in two_runs:
        assert run["status"] == "completed", run
        metrics = listing.get(f"/api/runs/{run['id']}/metrics")
        train, val = metrics["train"], metrics["val"]
        best = min(p["val_loss"] for p in val)
        best_iteration = max(p["iteration"] for p in val if p["val_loss"] == best)
        first = val[0]["val_loss"]
        tps = statistics.fmean(p["tokens_per_second"] for p in train)

        texts = cells(row_of(table, run["id"]))
        assert texts[1] == "completed"
        assert texts[2].startswith(f"{run['name']} #{run['id']}")
        assert texts[3] == "tiny-mistral" and texts[4] == "contact-center"
        assert texts[5] == f"{best:,.3f} @ {best_iteration}"
        assert texts[6] == f"{100 * (first - best) / first:.1f}% {best - first:+.3f}"
        assert texts[7] == "20 / 20"
        assert texts[9] == f"{tps:,.0f}"

        status_card = page(listing, f"/runs/{run['id']}/status")
        assert float(summary_value(status_card, "best-val")) == best
        assert f"at iteration {best_iteration}" in status_card
        assert float(summary_value(status_card, "improvement")) == pytest.approx(100 * (first - best) / first)
        assert float(summary_value(status_card, "tokens-per-second")) == pytest.approx(tps)
        its = statistics.fmean(p["iterations_per_second"] for p in train)
        assert float(summary_value(status_card, "iterations-per-second")) == pytest.approx(its)
        assert int(summary_value(status_card, "total-tokens")) == max(p["trained_tokens"] for p in train)
        assert float(summary_value(status_card, "peak-memory")) == max(p["peak_memory"] for p in train)
        assert float(summary_value(status_card, "wall-time")) > 0
        assert 'id="summary-test-loss"' not in status_card  # no test set was evaluated


def test_filter_by_status_and_text(listing: InProcess, two_runs: Any) -> None:
    alpha, beta = two_runs
    assert {alpha["id"], beta["id"]} <= set(listed(page(listing, "/?status=completed")))
    assert {alpha["id"], beta["id"]} <= set(listed(page(listing, "/?status=ended")))
    assert not set(listed(page(listing, "/?status=failed"))) & {alpha["id"], beta["id"]}
    assert listed(page(listing, "/?q=ALPHA")) == [alpha["id"]]  # any case
    assert listed(page(listing, "/?status=completed&q=beta")) == [beta["id"]]
    assert {alpha["id"], beta["id"]} <= set(listed(page(listing, "/?q=contact-cent")))  # the dataset
    assert {alpha["id"], beta["id"]} <= set(listed(page(listing, "/?q=tiny-mis")))  # the model
    none = page(listing, "/?q=100%25_nothing")  # LIKE wildcards are taken literally
    assert listed(none) == [] and "No runs match" in none

    partial = page(listing, "/?q=beta", htmx=True)  # htmx gets the table alone
    assert "<html" not in partial
    assert listed(partial) == [beta["id"]]
    full = page(listing, "/?q=beta")
    assert "<html" in full and 'value="beta"' in full  # the filter is kept in the URL and the form

    bad = page(listing, "/?status=done")
    assert "unknown status filter &#39;done&#39;: expected one of active, ended" in bad
    assert {alpha["id"], beta["id"]} <= set(listed(bad))


def test_rename_and_notes(listing: InProcess, two_runs: Any) -> None:
    alpha, _ = two_runs
    path = f"/api/runs/{alpha['id']}"
    status, body, _ = listing.request("PATCH", path, {"name": "  alpha   renamed ", "notes": "rank 8, lr 1e-3"})
    assert status == 200, body
    assert body["name"] == "alpha renamed" and body["notes"] == "rank 8, lr 1e-3"
    assert listed(page(listing, "/?q=lr%201e-3")) == [alpha["id"]]  # notes are searched

    for patch, field in (({"name": "  "}, "name"), ({"name": None}, "name"), ({"notes": "x" * 5001}, "notes"),
                         ({"name": "ok", "color": "red"}, "color")):
        status, body, _ = listing.request("PATCH", path, patch)
        assert status == 422, (patch, body)
        assert body["detail"][0]["loc"][-1] == field
    assert listing.get(path)["name"] == "alpha renamed"  # nothing was written

    row = post_form(listing, f"/runs/{alpha['id']}/text", {"name": "alpha sweep", "notes": "from the row"})
    texts = cells(row)
    assert texts[2].startswith(f"alpha sweep #{alpha['id']} from the row")
    row = post_form(listing, f"/runs/{alpha['id']}/text", {"name": " ", "notes": "kept?"})
    assert "name must not be blank" in row and "<details class=\"runs-edit\" open>" in row
    run = listing.get(path)
    assert run["name"] == "alpha sweep" and run["notes"] == "from the row"


def test_delete_removes_rows_and_folder_and_a_continued_run_still_renders(shared_server: Server,
                                                                          short_data: Path) -> None:
    config = {**SHORT_RUN, "name": "parent", "data": str(short_data)}
    status, parent = shared_server.post("/api/runs", config)
    assert status == 201
    parent = shared_server.wait_terminal(parent["id"])
    resume = {"run_id": parent["id"], "iteration": 20}
    status, child = shared_server.post("/api/runs", {**config, "iters": 30, "name": "child", "resume_from": resume})
    assert status == 201, child
    child = shared_server.wait_terminal(child["id"])
    assert child["status"] == "completed", child
    folder = shared_server.root / "adapters" / f"run-{parent['id']:04d}"
    assert any(folder.glob("*_adapters.safetensors"))
    rows = {t: db_count(shared_server, t, parent["id"]) for t in ("trainreport", "valreport", "checkpoint")}
    assert all(rows.values()), rows

    status, body, _ = shared_server.request("DELETE", f"/api/runs/{parent['id']}")
    assert status == 400 and "confirm=yes" in body["detail"]
    assert folder.exists() and db_count(shared_server, "checkpoint", parent["id"]) == rows["checkpoint"]

    status, body, _ = shared_server.request("DELETE", f"/api/runs/{parent['id']}?confirm=yes")
    assert status == 200, body
    assert body == {"deleted": parent["id"], "checkpoints": rows["checkpoint"],
                    "reports": rows["trainreport"] + rows["valreport"], "continued_by": [child["id"]],
                    "leftover_folder": None}
    assert not folder.exists()
    assert not list((shared_server.root / "adapters").glob(".deleting-*"))
    assert all(db_count(shared_server, t, parent["id"]) == 0 for t in rows)
    status, _, _ = shared_server.request("GET", f"/api/runs/{parent['id']}")
    assert status == 404
    status, _, _ = shared_server.request("DELETE", f"/api/runs/{parent['id']}?confirm=yes")
    assert status == 404

    # the continued run still renders: its chart now starts where it resumed
    child_page = page(shared_server, f"/runs/{child['id']}")
    assert f"Continued run #{parent['id']} from its checkpoint" in child_page and "since been deleted" in child_page
    assert f"href=\"/runs/{parent['id']}\"" not in child_page
    joined = shared_server.get(f"/api/runs/{child['id']}/metrics?include_parent=true&max_points=2000")
    assert [p["iteration"] for p in joined["train"]] == [25, 30]
    assert child["id"] in listed(page(shared_server, "/"))
    assert shared_server.get(f"/api/runs/{child['id']}")["status"] == "completed"


def test_a_live_run_is_not_deleted(shared_server: Server, short_data: Path) -> None:
    status, run = shared_server.post("/api/runs", {**QUICK_RUN, "iters": 100_000, "save_every": 100_000,
                                                   "name": "long", "data": str(short_data)})
    assert status == 201
    shared_server.wait_for(run["id"], lambda r: r["status"] == "running" and r["iteration"] >= 5, what="training")
    table = page(shared_server, "/?status=active")
    assert listed(table) == [run["id"]] and "every 3s" in table  # the list polls while a run is live

    status, body, _ = shared_server.request("DELETE", f"/api/runs/{run['id']}?confirm=yes")
    assert status == 409 and body["detail"] == f"run {run['id']} is running: stop it first, then delete it"
    answer = post_form(shared_server, f"/runs/{run['id']}/delete", {"confirm": "yes", "status": "active", "q": ""})
    assert "stop it first" in answer and listed(answer) == [run["id"]]
    folder = shared_server.root / "adapters" / f"run-{run['id']:04d}"
    assert folder.exists() and shared_server.get(f"/api/runs/{run['id']}")["status"] == "running"

    shared_server.post(f"/api/runs/{run['id']}/stop")
    shared_server.wait_terminal(run["id"])
    answer = post_form(shared_server, f"/runs/{run['id']}/delete", {"confirm": "yes", "status": "", "q": ""})
    assert f"Deleted run #{run['id']} “long”" in answer and run["id"] not in listed(answer)
    assert not folder.exists()
    assert "every 3s" not in page(shared_server, "/")  # nothing live is listed: no polling


def test_compare_page_lists_the_differing_settings(listing: InProcess, two_runs: Any) -> None:
    alpha, beta = two_runs
    answer = page(listing, f"/compare?ids={alpha['id']},{beta['id']}")
    diff = re.search(r'<table id="compare-diff">.*?</table>', answer, re.S)
    assert diff, answer
    keys = re.findall(r'<tr data-key="([^"]+)">', diff.group(0))
    assert "learning_rate" in keys and "batch_size" not in keys and "name" not in keys
    assert page(listing, f"/compare?ids={alpha['id']}&ids={beta['id']}").count('data-run-id="') == 2
    for query, code, message in (("ids=1,x", 400, "&#39;x&#39; is not a run id"), ("", 400, "pick at least one run"),
                                 ("ids=99999", 404, "there is no run 99999")):
        status, _, raw = listing.request("GET", f"/compare?{query}")
        assert status == code and message in raw.decode(), (query, status)


def test_a_run_without_reports_shows_dashes(listing: InProcess) -> None:
    [run_id] = ended_runs(listing, ({"model": "/nonexistent/model", "name": "broken"}, "failed", 0.0))  # no report
    run = listing.get(f"/api/runs/{run_id}")
    assert run["status"] == "failed"
    card = page(listing, f"/runs/{run['id']}/status")
    assert summary_value(card, "best-val") == "" and summary_value(card, "tokens-per-second") == ""
    texts = cells(row_of(page(listing, "/?status=failed"), run["id"]))
    assert texts[5] == "—" and texts[6] == "—" and texts[9] == "—"
