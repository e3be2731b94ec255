"""Jobs in headless Chromium: the jobs page (progress, ETA, cancel, why a job waits, the override) and the
dataset page's token statistics through the one job progress partial."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Server, shot
from playwright.sync_api import Page, expect
from sqlmodel import Session
from test_jobs import NoParams, big_dataset, jobs_server, wait_job

from app.db import make_engine
from app.jobs.jobs import create_job
from app.tables import Run, utcnow

__all__ = ["jobs_server"]  # the module's own server (a fixture)


# Browser: the jobs page ----------------------------------------------------------------------------------------


@pytest.mark.browser
def test_jobs_page_shows_progress_and_cancels(jobs_server: Server, default_model: Path, page: Page) -> None:
    folder = big_dataset(jobs_server.root, "page")
    code, dataset = jobs_server.post("/api/datasets", {"path": str(folder), "name": "page-data"})
    assert code == 201, dataset
    code, started = jobs_server.post("/api/token-stats", {"data": str(folder), "model": str(default_model)})
    assert code == 201
    job_id = started["id"]
    wait_job(jobs_server, job_id, lambda j: j["status"] == "running" and j["progress"]["done"] > 0)
    page.goto(f"{jobs_server.url}/")
    page.locator("nav a", has_text="Jobs").click()
    expect(page).to_have_url(f"{jobs_server.url}/jobs")
    row = page.locator(f"#jobs-live-table tr[data-job-id='{job_id}']")
    expect(row).to_contain_text("token statistics")
    expect(row.locator(".progress-text")).to_contain_text("/ 45,000 examples")
    expect(row.locator("[data-role=eta]")).to_be_visible(timeout=30_000)
    before = row.locator(".progress-text").inner_text()
    expect(row.locator(".progress-text")).not_to_have_text(before, timeout=30_000)  # it polls while live
    expect(row.locator("td a")).to_have_attribute("href", f"/datasets/{dataset['id']}")  # what it concerns
    expect(row.locator("td a")).to_have_text("dataset page-data")
    shot(page, "jobs-page")

    row.locator(".job-cancel").click()
    progress = row.locator(".job-progress")
    expect(progress).to_have_attribute("data-status", "stopped", timeout=60_000)
    expect(progress).not_to_have_attribute("hx-trigger", "load delay:1s")  # an ended job stops polling
    assert jobs_server.get(f"/api/jobs/{job_id}")["status"] == "stopped"
    page.reload()
    expect(page.locator(f"#jobs-recent-table tr[data-job-id='{job_id}'] .badge")).to_have_text("stopped")
    shot(page, "jobs-page-after-cancel")


@pytest.mark.browser
def test_dataset_page_token_stats_use_the_job_progress_partial(jobs_server: Server, page: Page) -> None:
    folder = big_dataset(jobs_server.root, "dataset-page")
    code, dataset = jobs_server.post("/api/datasets", {"path": str(folder), "name": "dataset-page"})
    assert code == 201, dataset
    page.goto(f"{jobs_server.url}/datasets/{dataset['id']}")
    section = page.locator("#token-stats")
    progress = section.locator(".job-progress")
    expect(progress).to_have_attribute("data-status", "running", timeout=60_000)
    expect(progress.locator(".progress-text")).to_contain_text("/ 45,000 examples", timeout=60_000)
    job_id = int(progress.get_attribute("data-job-id") or 0)
    assert jobs_server.get(f"/api/jobs/{job_id}")["params"]["data"] == str(folder)
    section.scroll_into_view_if_needed()
    shot(page, "dataset-token-stats-progress")

    progress.locator(".job-cancel").click()  # the job ends: the section reloads itself with the outcome
    expect(section).to_have_attribute("data-status", "stopped", timeout=60_000)
    expect(section.locator("#token-stats-error")).to_contain_text("Token statistics stopped")
    section.locator("#token-stats-error button", has_text="Try again").click()
    expect(section.locator(".job-progress")).to_have_attribute("data-status", re.compile("starting|running"),
                                                               timeout=60_000)
    again = int(section.locator(".job-progress").get_attribute("data-job-id") or 0)
    assert again > job_id
    assert jobs_server.post(f"/api/jobs/{again}/cancel")[0] == 202
    expect(section).to_have_attribute("data-status", "stopped", timeout=60_000)


@pytest.mark.browser
def test_jobs_page_says_why_a_memory_job_waits(jobs_server: Server, page: Page) -> None:
    engine = make_engine(jobs_server.root / "loraboard.db")
    with Session(engine) as session:
        run = Run(name="holds the memory", status="completed")  # ended: no tick starts a worker for it meanwhile
        session.add(run)
        session.commit()
        session.refresh(run)
        assert run.id is not None
        # a process with a training worker's command line: the supervisor sees run `run.id` training
        trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "worker", "train",
                                    "--run-id", str(run.id)])
        try:
            run.status, run.pid, run.heartbeat_at = "running", trainer.pid, utcnow()
            session.add(run)  # committed with the job: no tick sees the job without its training run
            job = create_job(session, "no_such_kind", NoParams())  # unknown: taken to need the model's memory
            page.goto(f"{jobs_server.url}/jobs")
            row = page.locator(f"#jobs-live-table tr[data-job-id='{job.id}']")
            expect(row.locator(".job-progress")).to_have_attribute("data-status", "queued")
            expect(row.locator("[data-role=waiting]")).to_have_text(f"waits for run {run.id} (training) to finish",
                                                                     timeout=30_000)
            assert jobs_server.get(f"/api/jobs/{job.id}")["waiting_reason"] == (
                f"waits for run {run.id} (training) to finish")
            shot(page, "jobs-page-waiting")
            row.locator(".job-allow").click()  # the user's override: it starts beside the run
            expect(row.locator(".job-progress")).to_have_attribute("data-status", "failed", timeout=60_000)
            expect(row.locator("[data-role=error]")).to_contain_text("this worker has no job kind 'no_such_kind'")
            assert jobs_server.get(f"/api/jobs/{job.id}")["allow_while_training"] is True
        finally:
            trainer.kill()
            trainer.wait()
    wait = time.monotonic() + 30
    while jobs_server.get(f"/api/runs/{run.id}")["status"] == "running":  # its "worker" is gone: interrupted
        assert time.monotonic() < wait
        time.sleep(0.2)
    engine.dispose()
