"""Seed-shaped demo datasets (the demo_data job kind): a real worker writes and the dashboard registers the folder;
request refusals in-process; a cancelled job leaves no folder; the Datasets page's card in Chromium."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TERMINAL, InProcess, Server, shot
from playwright.sync_api import Page, expect
from sqlmodel import Session, select

from app.jobs.views import finish_completed, is_live
from app.tables import Dataset, Job

SMALL = {"train": 12, "valid": 4, "test": 3}


def wait_job(client: InProcess | Server, job_id: int, predicate: Any, what: str, timeout: float = 120) -> Any:
    return client.poll(f"/api/jobs/{job_id}", predicate, timeout, what)


def leftovers(datasets_dir: Path) -> list[str]:
    """Hidden temporary folders left in the datasets folder."""
    return sorted(p.name for p in datasets_dir.glob(".*")) if datasets_dir.is_dir() else []


@pytest.mark.real
def test_the_worker_writes_counted_text_records_and_the_dataset_is_listed(
    app_client: InProcess, default_model: Path,
) -> None:
    from transformers import AutoTokenizer

    status, job = app_client.post("/api/datasets/demo", {"name": "demo-small", "scale": 0.1, "sizes": SMALL})
    assert status == 202, job
    assert job["kind"] == "demo_data" and job["params"]["model"] == str(default_model.resolve())
    job = wait_job(app_client, job["id"], lambda j: j["status"] in TERMINAL, "ended")
    assert job["status"] == "completed", job
    assert job["progress"] == {"done": 19, "total": 19, "unit": "examples"}

    datasets_dir = app_client.root / "datasets"
    folder = datasets_dir / "demo-small"
    result = job["result"]
    assert result["folder"] == str(folder)
    assert leftovers(datasets_dir) == []
    tokenizer = AutoTokenizer.from_pretrained(str(default_model))
    for split, count in SMALL.items():
        rows = [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == count and all(set(row) == {"text"} and row["text"] for row in rows)
        lengths = [len(tokenizer.encode(row["text"], add_special_tokens=False)) for row in rows]
        assert result["splits"][split] == {"examples": count, "mean": pytest.approx(statistics.fmean(lengths)),
                                           "longest": max(lengths)}
    assert max(lengths) < 2048 * 0.1 * 14  # scaled: the seed's longest (26,749) times 0.1, and no more

    job = wait_job(app_client, job["id"], lambda j: "dataset_id" in j["result"], "registered")  # by the supervisor
    with Session(app_client.engine) as session:  # registered before any GET of the datasets list
        assert session.get(Dataset, job["result"]["dataset_id"]).name == "demo-small"
    listed = {d["name"]: d for d in app_client.get("/api/datasets")}
    dataset = listed["demo-small"]
    assert dataset["path"] == str(folder.resolve()) and dataset["ok"] and dataset["format"] == "text"
    assert dataset["counts"] == SMALL and dataset["source"] == "seed-shaped demo"
    described = next(j for j in app_client.get("/api/jobs?kind=demo_data") if j["id"] == job["id"])
    assert described["status"] == "completed"
    page = app_client.get(f"/jobs/{job['id']}/progress")
    assert "train 12 · valid 4 · test 3 examples" in page and "longest" in page

    status, again = app_client.post("/api/datasets/demo", {"name": "demo-small", "scale": 0.1, "sizes": SMALL})
    assert status == 422 and again["detail"][0]["loc"] == ["body", "name"], again
    assert "already exists" in again["detail"][0]["msg"]


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"name": "taken"}, "name", "a folder named 'taken' already exists"),
    ({"name": "../escape"}, "name", "name must be"),
    ({"name": ""}, "name", "name is required"),
    ({"name": "fine", "scale": 0}, "scale", "greater than 0"),
    ({"name": "fine", "scale": 1.5}, "scale", "less than or equal to 1"),
    ({"name": "fine", "model": "/nonexistent/model"}, "model", "does not exist"),
    ({"name": "fine", "sizes": {"train": 5}}, "sizes", "the valid split needs at least 1 example"),
    ({"name": "fine", "sizes": {"train": 5, "valid": 1, "extra": 2}}, "sizes", "unknown split 'extra'"),
])
def test_a_bad_request_is_a_422_naming_its_field(
    app_client: InProcess, body: dict[str, Any], field: str, words: str,
) -> None:
    (app_client.root / "datasets" / "taken").mkdir(parents=True)
    status, answer = app_client.post("/api/datasets/demo", body)
    assert status == 422, answer
    problem = answer["detail"][0]
    assert problem["loc"] == ["body", field] and words in problem["msg"], problem
    assert app_client.get("/api/jobs?kind=demo_data") == []
    assert sorted(p.name for p in (app_client.root / "datasets").iterdir()) == ["taken"]


@pytest.mark.real
def test_a_cancelled_job_leaves_no_folder(app_client: InProcess) -> None:
    status, job = app_client.post("/api/datasets/demo", {"name": "demo-cancelled", "scale": 0.05,
                                                         "sizes": {"train": 50_000, "valid": 10}})
    assert status == 202, job
    wait_job(app_client, job["id"], lambda j: j["progress"]["done"] > 0, "under way")
    datasets_dir = app_client.root / "datasets"
    assert len(leftovers(datasets_dir)) == 1  # it writes beside the target, hidden
    status, _ = app_client.post(f"/api/jobs/{job['id']}/cancel")
    assert status == 202
    job = wait_job(app_client, job["id"], lambda j: j["status"] in TERMINAL, "ended")
    assert job["status"] == "stopped", job
    assert 0 < job["progress"]["done"] < 50_010
    assert not (datasets_dir / "demo-cancelled").exists() and leftovers(datasets_dir) == []
    assert "demo-cancelled" not in {d["name"] for d in app_client.get("/api/datasets")}


def test_jobs_completed_while_no_app_watched_are_registered_at_start(
    app_client: InProcess, tmp_path: Path,
) -> None:
    datasets_dir = app_client.root / "datasets"
    kept, gone = datasets_dir / "kept", datasets_dir / "gone"
    kept.mkdir(parents=True)
    for split in ("train", "valid"):
        (kept / f"{split}.jsonl").write_text(json.dumps({"text": "<|user|>hi<|assistant|>Quality: good"}) + "\n")
    with Session(app_client.engine) as session:
        jobs = [Job(kind="demo_data", status="completed", params_json=json.dumps({"name": folder.name}),
                    result_json=json.dumps({"folder": str(folder), "name": folder.name}))
                for folder in (kept, gone)]
        session.add_all(jobs)
        session.commit()
        ids = [job.id for job in jobs]
        finish_completed(session, settings=app_client.app.state.settings)  # what the app does as it starts
        finish_completed(session, settings=app_client.app.state.settings)  # once per job: nothing more
        kept_job, gone_job = (session.get(Job, job_id) for job_id in ids)
        assert kept_job is not None and gone_job is not None
        dataset = session.get(Dataset, kept_job.result["dataset_id"])
        assert dataset is not None and dataset.name == "kept" and dataset.source == "seed-shaped demo"
        assert len(session.exec(select(Dataset).where(Dataset.name == "kept")).all()) == 1
        assert "no longer there" in gone_job.result["registration_error"]
        assert not is_live(kept_job) and not is_live(gone_job)
    assert "not listed: the folder" in app_client.get(f"/jobs/{ids[1]}/progress")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("demo-browser")).start()
    yield server
    server.stop()


@pytest.mark.browser
def test_the_datasets_page_card_starts_the_job_and_lists_the_dataset(srv: Server, page: Page) -> None:
    page.goto(srv.url + "/datasets")
    card = page.locator("#demo-card")
    expect(card).to_contain_text("Seed-shaped demo set")
    page.fill("#demo-name", "../demo-page")
    page.fill("#demo-scale", "0.02")
    page.click("#demo-button")
    expect(page.locator("#demo-errors")).to_contain_text("name: name must be")
    shot(page, "demo-data-01-bad-name")

    page.fill("#demo-name", "demo-page")
    page.fill("#demo-scale", "0.02")
    page.click("#demo-button")
    expect(card.locator(".job-progress")).to_be_visible()
    expect(page.locator("#datasets-table")).to_contain_text("demo-page", timeout=120_000)
    expect(card.locator(".job-progress")).to_have_attribute("data-status", "completed")
    expect(card.locator(".job-progress")).to_contain_text("examples, mean")
    shot(page, "demo-data-02-completed")
    assert (srv.root / "datasets" / "demo-page" / "test.jsonl").is_file()
