"""The queue of runs: its order (pure), moving and cancelling through the API on a real server with real
workers (one training, the rest waiting), and the runs list's queue controls in Chromium."""

from __future__ import annotations

import html
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import QUICK_RUN, TERMINAL, Server, bearer, shot
from playwright.sync_api import Page, expect
from sqlmodel import Session, select

from app.db import make_engine
from app.runs.store.queue import NotQueuedError, cancel_queued, move_in_queue, moved, queued_runs
from app.tables import Run

# trains until stopped: no evaluation or checkpoint gets in the way
LONG_RUN: dict[str, Any] = {**QUICK_RUN, "iters": 1_000_000, "steps_per_eval": 1_000_000, "save_every": 1_000_000,
                            "steps_per_report": 5}


# ---- the order, pure -----------------------------------------------------------------------


@pytest.mark.parametrize(("move", "expected"), [
    ("top", [3, 1, 2, 4]),
    ("bottom", [1, 2, 4, 3]),
    ("up", [1, 3, 2, 4]),
    ("down", [1, 2, 4, 3]),
])
def test_moved(move: str, expected: list[int]) -> None:
    assert moved([1, 2, 3, 4], 3, move) == expected


@pytest.mark.parametrize(("order", "run_id", "move"), [
    ([7, 8, 9], 7, "top"), ([7, 8, 9], 7, "up"), ([7, 8, 9], 9, "down"), ([7, 8, 9], 9, "bottom"), ([7], 7, "up"),
])
def test_moved_at_the_end_it_moves_towards_stays(order: list[int], run_id: int, move: str) -> None:
    assert moved(order, run_id, move) == order


def test_moved_rejects_a_run_not_queued_and_an_unknown_move() -> None:
    with pytest.raises(NotQueuedError, match="run 5 is not in the queue"):
        moved([1, 2], 5, "top")
    with pytest.raises(ValueError, match="unknown move 'sideways'"):
        moved([1, 2], 1, "sideways")


def test_queue_order_and_cancel_in_sqlite(tmp_path: Path) -> None:
    """Moved runs go by position, never-moved ones after them oldest first; cancelling touches only queued runs."""
    engine = make_engine(tmp_path / "queue.db")
    with Session(engine) as session:
        runs = [Run(name=f"run {n}", status="running" if n == 1 else "queued") for n in range(1, 6)]
        session.add_all(runs)
        session.commit()
        ids = [run.id for run in runs]
        assert [run.id for run in queued_runs(session)] == ids[1:]
        assert move_in_queue(session, runs[3], "top") == [ids[3], ids[1], ids[2], ids[4]]
        session.add(Run(name="new", status="queued"))  # arrives after the move: waits at the back
        session.commit()
        order = [run.id for run in queued_runs(session)]
        assert order[:4] == [ids[3], ids[1], ids[2], ids[4]] and len(order) == 5
        assert [run.id for run in queued_runs(session, limit=1)] == [ids[3]]
        with pytest.raises(NotQueuedError, match="is running, not queued"):
            move_in_queue(session, runs[0], "up")
        assert cancel_queued(session, [ids[0], ids[2]]) == [ids[2]]  # the running one is left alone
        assert cancel_queued(session) == sorted([ids[1], ids[3], ids[4], order[4]])
        assert cancel_queued(session) == []
        statuses = {run.id: (run.status, run.stop_reason) for run in session.exec(select(Run)).all()}
        assert statuses[ids[0]] == ("running", None)
        assert {statuses[i] for i in ids[1:]} == {("stopped", "cancelled while queued")}
    engine.dispose()


def test_a_move_while_other_runs_leave_the_queue(tmp_path: Path) -> None:
    """Another request deletes one queued run and cancels another after the move has read the queue: the move
    places the runs still queued, leaves the others as those requests left them, and never answers as if the
    moved run were gone. A moved run that left the queue itself is refused."""
    import sqlite3

    from sqlalchemy import event

    engine = make_engine(tmp_path / "queue.db")
    with Session(engine) as session:
        runs = [Run(name=f"run {n}", status="queued") for n in range(1, 6)]
        session.add_all(runs)
        session.commit()
        ids = [run.id for run in runs]
        leave: list[str] = []

        def others_leave_after_the_queue_is_read(conn: object, cursor: object, statement: str, *_: object) -> None:
            if leave and "ORDER BY" in statement:
                with sqlite3.connect(tmp_path / "queue.db") as other:
                    for sql in leave:
                        other.execute(sql)
                leave.clear()

        event.listen(engine, "after_cursor_execute", others_leave_after_the_queue_is_read)
        leave[:] = [f"DELETE FROM run WHERE id = {ids[1]}",
                    f"UPDATE run SET status = 'stopped', queue_position = NULL WHERE id = {ids[3]}"]
        assert move_in_queue(session, runs[4], "top") == [ids[4], ids[0], ids[2]]
        positions = {run.id: (run.status, run.queue_position) for run in session.exec(select(Run)).all()}
        assert positions == {ids[4]: ("queued", 1), ids[0]: ("queued", 2), ids[2]: ("queued", 4),
                             ids[3]: ("stopped", None)}
        leave[:] = [f"UPDATE run SET status = 'stopped' WHERE id = {ids[2]}"]
        with pytest.raises(NotQueuedError, match=f"run {ids[2]} left the queue while it was being moved"):
            move_in_queue(session, session.get(Run, ids[2]), "up")
        event.remove(engine, "after_cursor_execute", others_leave_after_the_queue_is_read)
    engine.dispose()


# ---- a real server: one run training, four waiting --------------------------------------------


@pytest.fixture(scope="module")
def queue_server(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("queue"), extra_env={"LORABOARD_MAX_CONCURRENT_RUNS": "1"}).start()
    yield srv
    srv.stop()


def start_runs(server: Server, count: int, prefix: str, data: Path) -> list[int]:
    """One run that trains (it waits until it does) and count - 1 queued behind it, on data."""
    ids = []
    for index in range(count):
        status, run = server.post("/api/runs", {**LONG_RUN, "name": f"{prefix} {index + 1}", "data": str(data)})
        assert status == 201, run
        ids.append(run["id"])
        if index == 0:
            server.wait_for(run["id"], lambda r: r["status"] == "running" and r["iteration"] > 0, what="training")
    return ids


def post_form(server: Server, path: str, fields: dict[str, str]) -> str:
    """An htmx form post, as the page sends it; answers the table's HTML."""
    request = urllib.request.Request(server.url + path, data=urllib.parse.urlencode(fields).encode(), method="POST",
                                     headers={"HX-Request": "true", **bearer(server.token)})
    with urllib.request.urlopen(request, timeout=30) as response:
        return html.unescape(response.read().decode())


def status_of(server: Server, run_id: int) -> str:
    return str(server.get(f"/api/runs/{run_id}")["status"])


def stop_and_wait(server: Server, run_id: int) -> dict[str, Any]:
    status, _ = server.post(f"/api/runs/{run_id}/stop")
    assert status == 202
    return server.wait_terminal(run_id)


def test_reorder_then_cancel_all(queue_server: Server, short_data: Path) -> None:
    first, *waiting = start_runs(queue_server, 5, "queued", short_data)
    assert [status_of(queue_server, run_id) for run_id in waiting] == ["queued"] * 4

    # the last one goes to the top; another goes down one place; the API answers the queue's order
    status, body = queue_server.post(f"/api/runs/{waiting[3]}/queue", {"position": "top"})
    assert (status, body) == (200, {"queue": [waiting[3], waiting[0], waiting[1], waiting[2]]})
    status, body = queue_server.post(f"/api/runs/{waiting[0]}/queue", {"position": "down"})
    assert (status, body) == (200, {"queue": [waiting[3], waiting[1], waiting[0], waiting[2]]})
    # a training run, an unknown run and an unknown move are refused, each with its reason
    status, body = queue_server.post(f"/api/runs/{first}/queue", {"position": "top"})
    assert status == 409 and "not queued" in body["detail"], body
    status, body = queue_server.post("/api/runs/999999/queue", {"position": "top"})
    assert status == 404, body
    status, body = queue_server.post(f"/api/runs/{waiting[1]}/queue", {"position": "sideways"})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "position"], body

    # the slot frees: the run moved to the top starts, the others keep waiting
    assert stop_and_wait(queue_server, first)["status"] == "stopped"
    chosen = queue_server.wait_for(waiting[3], lambda r: r["status"] != "queued", what="started")
    assert chosen["status"] in ("starting", "running"), chosen
    assert [status_of(queue_server, run_id) for run_id in waiting[:3]] == ["queued"] * 3

    # cancel all: the three waiting ones end stopped, the one training trains on
    status, body = queue_server.post("/api/runs/queue/cancel")
    assert (status, body) == (200, {"cancelled": sorted(waiting[:3]), "count": 3})
    for run_id in waiting[:3]:
        run = queue_server.get(f"/api/runs/{run_id}")
        assert (run["status"], run["started_at"]) == ("stopped", None), run
    training = queue_server.wait_for(waiting[3], lambda r: r["status"] == "running" and r["iteration"] > 0,
                                     what="training")
    assert training["status"] == "running"
    status, body = queue_server.post("/api/runs/queue/cancel")
    assert (status, body) == (200, {"cancelled": [], "count": 0})
    assert status_of(queue_server, waiting[3]) == "running"
    assert stop_and_wait(queue_server, waiting[3])["status"] == "stopped"


@pytest.mark.browser
def test_runs_list_queue_controls(queue_server: Server, page: Page, short_data: Path) -> None:
    first, *waiting = start_runs(queue_server, 4, "waiting", short_data)
    page.goto(queue_server.url + "/")
    queue = page.locator("#run-queue")
    expect(queue).to_be_visible()
    items = queue.locator("li")
    assert [int(i) for i in items.evaluate_all("els => els.map(e => e.dataset.runId)")] == waiting
    expect(page.locator(f"#run-row-{waiting[0]} .queue-place")).to_have_text("1 of 3")

    # the first waiting run goes down one place; the last one's "down" is disabled
    page.locator(f"#queue-item-{waiting[0]} .queue-down").click()
    expect(page.locator("#run-queue li").first).to_have_attribute("data-run-id", str(waiting[1]))
    ids = [int(i) for i in page.locator("#run-queue li").evaluate_all("els => els.map(e => e.dataset.runId)")]
    assert ids == [waiting[1], waiting[0], waiting[2]]
    expect(page.locator(f"#queue-item-{waiting[2]} .queue-down")).to_be_disabled()
    expect(page.locator(f"#queue-item-{waiting[1]} .queue-top")).to_be_disabled()
    button = page.locator("#queue-cancel-all")
    expect(button).to_have_text("Cancel all queued (3)")
    shot(page, "runs-queue")

    # one run cancelled from its line; moving the training run is refused, with the reason
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f"#queue-item-{waiting[2]} .queue-cancel").click()
    expect(page.locator("#queue-message")).to_have_text(f"Cancelled queued run #{waiting[2]}.")
    expect(page.locator("#run-queue li")).to_have_count(2)
    assert status_of(queue_server, waiting[2]) == "stopped"
    table = post_form(queue_server, f"/runs/{first}/queue", {"position": "up"})
    assert f"run {first} is running, not queued" in table

    # a dismissed confirmation cancels nothing; an accepted one cancels the two still waiting
    page.once("dialog", lambda dialog: dialog.dismiss())
    button.click()
    page.wait_for_timeout(300)
    assert [status_of(queue_server, run_id) for run_id in waiting[:2]] == ["queued"] * 2
    page.once("dialog", lambda dialog: dialog.accept())
    button.click()
    expect(page.locator("#queue-message")).to_have_text("Cancelled 2 queued runs.")
    expect(page.locator("#run-queue")).to_have_count(0)
    assert [status_of(queue_server, run_id) for run_id in waiting] == ["stopped"] * 3
    assert status_of(queue_server, first) == "running"
    shot(page, "runs-queue-cancelled")
    assert stop_and_wait(queue_server, first)["status"] in TERMINAL
