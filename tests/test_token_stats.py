"""Token statistics: the pure numbers, refusals and a dead worker's job in-process, a real worker job through a
real server, and the pages in Chromium."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_DIR, InProcess, Server, shot
from playwright.sync_api import Locator, Page, expect

from app.contract.pids import is_job_process as is_token_stats_process
from app.datasets.token_stats import (
    files_signature,
    histogram_bins,
    merge_counts,
    nice_width,
    over_text,
    summarize,
)
from app.jobs.jobs import job_is_dead

SAMPLE = PROJECT_DIR / "data" / "contact-center"
SPLITS = ("train", "valid", "test")


# Unit: the numbers -----------------------------------------------------------------------------------


def test_summary_mean_median_max_and_over() -> None:
    counts = [[10, 2], [20, 1], [40, 1]]  # 10, 10, 20, 40
    summary = summarize(counts, max_seq_length=15)
    assert (summary.examples, summary.total_tokens, summary.mean, summary.median, summary.longest) == (
        4, 80, 20.0, 15.0, 40)
    assert (summary.over, summary.over_share) == (2, 0.5)
    assert summarize(counts, 20).over == 1  # exactly max_seq_length is not cut
    assert summarize([[5, 3], [7, 2]], 100).median == 5.0
    empty = summarize([], 2048)
    assert (empty.examples, empty.mean, empty.median, empty.longest, empty.over_share) == (0, None, None, None, 0.0)


def test_over_text_reads_like_the_page() -> None:
    counts = [[100, 1476], [3000, 23], [26_749, 1]]
    assert over_text(summarize(counts, 2048)) == "24 of 1,500 = 1.6% over 2,048, longest 26,749"
    assert over_text(summarize([[10, 9999], [99, 1]], 50)) == "1 of 10,000 = <0.1% over 50, longest 99"


def test_histogram_bins_cover_every_length_with_nice_widths() -> None:
    assert [nice_width(span, 40) for span in (10, 40, 41, 95, 400, 1000, 26_749)] == [1, 1, 2, 5, 10, 50, 1000]
    counts = [[173, 1], [174, 2], [200, 5], [266, 2]]
    hist = histogram_bins(counts, 173, 266)
    assert hist.width == 5 and hist.edges[0] == 170 and hist.edges[-1] > 266
    assert len(hist.counts) == len(hist.edges) - 1
    assert sum(hist.counts) == 10
    assert hist.counts[0] == 3 and hist.counts[(200 - 170) // 5] == 5 and hist.counts[-1] == 2
    shared = histogram_bins([[200, 1]], 173, 266)  # bins shared across splits: same edges
    assert shared.edges == hist.edges and sum(shared.counts) == 1
    with pytest.raises(ValueError, match="outside the histogram range"):
        histogram_bins([[300, 1]], 173, 266)


def test_merge_counts_adds_splits() -> None:
    assert merge_counts([[1, 2], [5, 1]], [[5, 3], [9, 1]]) == [[1, 2], [5, 4], [9, 1]]


def test_heartbeat_rule() -> None:
    assert job_is_dead("running", process_alive=False, heartbeat_age_s=1, timeout_s=30)
    assert job_is_dead("starting", process_alive=True, heartbeat_age_s=31, timeout_s=30)
    assert not job_is_dead("running", process_alive=True, heartbeat_age_s=29, timeout_s=30)
    assert not job_is_dead("completed", process_alive=False, heartbeat_age_s=999, timeout_s=30)
    assert not job_is_dead("failed", process_alive=False, heartbeat_age_s=None, timeout_s=30)


def test_worker_process_check_sees_start_life_and_end() -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    process = subprocess.Popen([*sleeper, "worker", "job", "--job-id", "7"])
    try:
        assert is_token_stats_process(process.pid, 7)  # also right after spawn, before exec lays out argv
        deadline = time.monotonic() + 60
        while b"--job-id" not in Path(f"/proc/{process.pid}/cmdline").read_bytes():  # until exec has laid it out
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert is_token_stats_process(process.pid, 7)
        assert not is_token_stats_process(process.pid, 8)  # another job's number: a reused pid
    finally:
        process.kill()
    deadline = time.monotonic() + 60
    while is_token_stats_process(process.pid, 7):  # a zombie counts as ended (and is reaped)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not is_token_stats_process(os.getpid(), 7)


def test_files_signature_changes_with_the_files(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    before = files_signature(tmp_path)
    assert files_signature(tmp_path) == before
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert files_signature(tmp_path) != before


# Real: a worker job through a real server --------------------------------------------------------------


def direct_lengths(folder: Path, model: Path) -> dict[str, list[int]]:
    """Token lengths counted here, with mlx-lm's tokenizer, as its ChatDataset does (apply_chat_template)."""
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(model)
    lengths = {}
    for split in SPLITS:
        rows = [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]
        lengths[split] = [len(tokenizer.apply_chat_template(r["messages"], tools=r.get("tools"), return_dict=False))
                          for r in rows]
    return lengths


def wait_job(server: Server, job_id: int, query: str = "", timeout: float = 120) -> tuple[dict[str, Any], list]:
    """Poll until the job ends; returns its last answer and the progress seen on the way."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = server.get(f"/api/token-stats/{job_id}{query}")
        seen.append(job["progress"])
        if job["status"] in ("completed", "failed"):
            return job, seen
        time.sleep(0.2)
    raise AssertionError(f"token statistics job {job_id} did not end: {job}")


def test_worker_counts_every_example_like_the_tokenizer(shared_server: Server, default_model: Path) -> None:
    code, job = shared_server.post("/api/token-stats", {"data": str(SAMPLE), "model": str(default_model)})
    assert code in (200, 201), job
    assert job["status"] in ("queued", "starting", "running", "completed")
    done, seen = wait_job(shared_server, job["id"])
    assert done["status"] == "completed", done
    assert done["progress"]["done"] == done["progress"]["total"] == 1500
    assert all(p["done"] <= p["total"] or p["total"] == 0 for p in seen)

    expected = direct_lengths(SAMPLE, default_model)
    splits = done["summary"]["splits"]
    for split in SPLITS:
        got = splits[split]
        assert {length: count for length, count in got["lengths"]} == Counter(expected[split])
        edges, counts = got["histogram"]["edges"], got["histogram"]["counts"]
        direct = [sum(1 for n in expected[split] if lo <= n < hi) for lo, hi in pairwise(edges)]
        assert counts == direct and sum(counts) == len(expected[split])
        assert got["max"] == max(expected[split]) and got["examples"] == len(expected[split])

    every = [n for split in SPLITS for n in expected[split]]
    middle = sorted(every)[len(every) // 2]
    for limit in (64, middle):
        answer = shared_server.get(f"/api/token-stats/{job['id']}?max_seq_length={limit}")["summary"]
        assert answer["all"]["over_max_seq_length"] == sum(1 for n in every if n > limit)
        for split in SPLITS:
            assert answer["splits"][split]["over_max_seq_length"] == sum(1 for n in expected[split] if n > limit)
    assert 0 < shared_server.get(f"/api/token-stats/{job['id']}?max_seq_length={middle}")["summary"]["all"][
        "over_max_seq_length"] < len(every)


def test_a_finished_result_is_reused_until_the_files_change(shared_server: Server, default_model: Path,
                                                            tmp_path: Path) -> None:
    data = tmp_path / "copy"
    shutil.copytree(SAMPLE, data)
    body = {"data": str(data), "model": str(default_model)}
    code, first = shared_server.post("/api/token-stats", body)
    assert code == 201
    assert wait_job(shared_server, first["id"])[0]["status"] == "completed"
    code, again = shared_server.post("/api/token-stats", body)
    assert (code, again["id"], again["status"]) == (200, first["id"], "completed")

    with (data / "valid.jsonl").open("a") as handle:
        handle.write("\n" + json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                     {"role": "assistant", "content": "hello"}]}))
    code, changed = shared_server.post("/api/token-stats", body)
    assert code == 201 and changed["id"] != first["id"]
    done = wait_job(shared_server, changed["id"])[0]
    assert done["summary"]["splits"]["valid"]["examples"] == 151


def test_bad_inputs_are_named(shared_app_client: InProcess, tmp_path: Path) -> None:
    code, answer = shared_app_client.post("/api/token-stats", {"data": str(tmp_path / "none")})
    assert code == 422 and answer["detail"][0]["loc"] == ["body", "data"]
    assert "does not exist" in answer["detail"][0]["msg"]
    code, answer = shared_app_client.post("/api/token-stats", {"model": str(tmp_path)})
    assert code == 422 and answer["detail"][0]["loc"] == ["body", "model"]
    assert "has no config.json" in answer["detail"][0]["msg"]
    assert shared_app_client.request("GET", "/api/token-stats/99999")[0] == 404


def test_bad_lines_are_named(shared_server: Server, default_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text('{"text": "fine"}\n{"text": "fine"}\n{"text": broken}\n')
    code, job = shared_server.post("/api/token-stats", {"data": str(bad), "model": str(default_model)})
    assert code == 201
    failed = wait_job(shared_server, job["id"])[0]
    assert failed["status"] == "failed"
    assert failed["error"].startswith("train.jsonl line 3: is not valid JSON"), failed["error"]


def test_a_job_whose_worker_died_is_marked_interrupted(shared_app_client: InProcess, tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    conn = sqlite3.connect(shared_app_client.root / "loraboard.db")
    with conn:
        cursor = conn.execute(
            "INSERT INTO job (kind, key, params_json, status, done, total, unit, pid, heartbeat_at,"
            " allow_while_training, created_at) VALUES ('token_stats', '', ?, 'running', 3, 10, 'examples', ?,"
            " datetime('now'), 0, datetime('now'))", (json.dumps({"data": str(tmp_path), "model": "m"}), gone.pid))
    conn.close()
    job = shared_app_client.get(f"/api/token-stats/{cursor.lastrowid}")
    assert job["status"] == "interrupted"
    assert job["error"] == "the worker process ended without reporting"


# Browser: the dataset page's histogram and the new-run form's warning ---------------------------------------


def chart(page: Page, split: str) -> Locator:
    return page.locator(f"#token-stats .token-hist[data-split={split}]")


@pytest.mark.browser
def test_dataset_page_shows_the_histogram(shared_server: Server, page: Page) -> None:
    sample = next(d for d in shared_server.get("/api/datasets") if d["path"] == str(SAMPLE))  # always listed
    page.goto(f"{shared_server.url}/datasets/{sample['id']}")
    section = page.locator("#token-stats")
    expect(section).to_have_attribute("data-status", "completed", timeout=120_000)
    for split in SPLITS:
        expect(chart(page, split)).to_have_attribute("data-drawn", "true", timeout=30_000)
    assert chart(page, "train").locator(".bars .point").count() > 5  # Plotly drew the bars
    expect(page.locator("#token-stats-over")).to_contain_text("All 1,500 examples fit in 2,048 tokens")

    page.fill("#token-stats-max-seq-length", "220")
    page.locator("#token-stats-max-seq-length").dispatch_event("change")
    expect(page.locator("#token-stats-over")).to_contain_text("of 1,500 = ", timeout=30_000)
    expect(page.locator("#token-stats-over")).to_contain_text("over 220, longest")
    expect(chart(page, "train")).to_have_attribute("data-drawn", "true", timeout=30_000)
    assert chart(page, "train").locator(".shapelayer path").count() >= 1  # the max_seq_length line
    section.scroll_into_view_if_needed()
    shot(page, "token-stats-histogram")


@pytest.mark.browser
def test_new_run_form_warns_about_examples_over_max_seq_length(shared_server: Server, page: Page) -> None:
    page.goto(f"{shared_server.url}/runs/new")
    panel = page.locator("#dataset-form-panel")
    expect(panel.locator("[data-state=fit]")).to_be_visible(timeout=120_000)  # the form's 512 fits them all
    if not page.locator("#f-max_seq_length").is_visible():
        page.locator("#advanced > summary").click()  # max_seq_length sits under "Advanced"
    page.fill("#f-max_seq_length", "220")
    page.locator("#f-max_seq_length").dispatch_event("change")
    warning = page.locator("#token-warning")
    expect(warning).to_be_visible(timeout=30_000)
    expect(warning).to_contain_text("of 1,350 examples")
    expect(warning).to_contain_text("are longer than max_seq_length 220")
    expect(page.locator("#start-button")).to_be_enabled()
    warning.scroll_into_view_if_needed()
    shot(page, "token-stats-form-warning")
