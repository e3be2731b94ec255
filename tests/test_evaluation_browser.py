"""The run page's evaluation in a real Chromium: the form, the job's progress, and the results appearing without a
reload (checkpoint table, the chart's test curve, the task table and chart), then the examples page."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from app.evaluation.view import score_band
from tests.conftest import shot

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("trained_run")]  # shares the trained run


def evaluate_jobs(trained_run: dict[str, Any]) -> list[dict[str, Any]]:
    server = trained_run["server"]
    return list(server.get(f"/api/jobs?kind=evaluate&run_id={trained_run['run_id']}"))


def test_a_bad_form_shows_the_refusal_in_the_card_and_starts_nothing(trained_run: dict[str, Any], page: Page) -> None:
    before = evaluate_jobs(trained_run)
    page.goto(f"{trained_run['server'].url}/runs/{trained_run['run_id']}")
    page.check("#evaluation-task")
    page.fill("#evaluation-max-examples", "0")
    page.click("#evaluation-start")
    expect(page.locator("#evaluation-error")).to_have_text("max examples: max_examples must be at least 1, got 0")
    expect(page.locator("#evaluation-max-examples")).to_have_value("0")  # the entry is kept to be corrected
    expect(page.locator("#evaluation .job-progress")).to_have_count(0)
    assert evaluate_jobs(trained_run) == before


def test_evaluate_all_checkpoints_with_the_task_from_the_run_page(trained_run: dict[str, Any], page: Page) -> None:
    server, run_id, iterations = trained_run["server"], trained_run["run_id"], trained_run["iterations"]
    page.goto(f"{server.url}/runs/{run_id}")
    chart = page.locator("#loss-chart")
    expect(chart).to_have_attribute("data-drawn", "true")
    expect(chart).to_have_attribute("data-eval-fetches", "1")
    masked = server.get(f"/api/runs/{run_id}")["config"].get("mask_prompt")
    expect(page.locator("#evaluation-tokens")).to_contain_text(
        "only the completion's tokens count" if masked else "every token counts")
    # the table and the chart must be replaced when the job ends, not merely be right already
    page.evaluate("document.getElementById('checkpoints').dataset.before = 'yes'")
    page.check("#evaluation-all")
    page.check("#evaluation-base")
    page.select_option("#evaluation-split", "test")
    page.check("#evaluation-task")
    page.fill("#evaluation-max-examples", "8")
    page.fill("#evaluation-max-tokens", "48")
    page.click("#evaluation-start")
    progress = page.locator("#evaluation .job-progress")
    expect(progress).to_be_visible()
    page.evaluate("""() => { window.evalDetails = [];
      new MutationObserver(() => document.querySelectorAll('#evaluation [data-role=detail]')
        .forEach(p => window.evalDetails.push(p.textContent))).observe(document.getElementById('evaluation'),
        { childList: true, subtree: true }); }""")
    job = max(evaluate_jobs(trained_run), key=lambda j: j["id"])
    expect(progress).to_have_count(0, timeout=240_000)  # the card reloaded itself on `job-ended`
    assert server.get(f"/api/jobs/{job['id']}")["status"] == "completed"
    details = page.evaluate("window.evalDetails")
    assert any("checkpoint" in d or "base model" in d for d in details), details

    expect(chart).to_have_attribute("data-eval-fetches", "2")
    trace = chart.evaluate("d => ({name: d.data[5].name, x: d.data[5].x, y: d.data[5].y})")
    assert trace["name"] == "test loss" and trace["x"] == [0, *iterations]
    measured = {r["iteration"]: r for r in server.get(f"/api/runs/{run_id}/evaluations?split=test")}
    assert trace["y"] == pytest.approx([measured[it]["loss"] for it in [0, *iterations]])
    expect(page.locator("#chart-task")).to_have_attribute("data-drawn", "true")

    table = page.locator("#checkpoints")
    expect(table).not_to_have_attribute("data-before", "yes")
    expect(page.locator("#checkpoint-split-loss")).to_have_text("Test loss")
    for it in [0, *iterations]:
        cell = page.locator(f"#checkpoint-table tr[data-iteration='{it}'] td.eval-loss")
        expect(cell).to_have_text(f"{measured[it]['loss']:,.3f}")
    expect(page.locator("#checkpoint-table tr.row-base")).to_contain_text("base model")
    expect(page.locator("#checkpoint-table .badge-recommended")).to_have_count(1)
    expect(page.locator("#checkpoint-reason")).to_contain_text("Recommended:")

    rows = page.locator("#evaluation-task-table tbody tr")
    expect(rows).to_have_count(len(iterations) + 1)
    assert [int(r.get_attribute("data-iteration") or -1) for r in rows.all()] == [0, *iterations]
    shot(page, "evaluation-run-page")

    best = max(iterations, key=lambda it: (measured[it]["task"]["score"], it))
    page.locator(f"#evaluation-task-table tr[data-iteration='{best}'] .examples-link").click()
    expect(page.locator("h1")).to_contain_text(f"checkpoint {best:,}")
    expect(page.locator("#examples")).to_contain_text(f"evaluation job {job['id']}")
    examples = page.locator("article.example")
    expect(examples).to_have_count(8)
    wrong = page.locator("tr.field-wrong").first
    expect(wrong).to_be_visible()  # the worst answer of 8 from a tiny model has a wrong field
    assert wrong.locator("td").first.evaluate("td => getComputedStyle(td).backgroundColor") == "rgb(254, 242, 242)"
    expect(page.locator("article.example .example-base").first).not_to_contain_text("not generated")
    scores = [float(a.get_attribute("data-score") or "nan") for a in examples.all()]
    assert scores == sorted(scores)
    shot(page, "evaluation-examples")
    page.click("#order-best")
    expect(page.locator("#order-best")).to_have_class("btn btn-sm btn-primary")
    answers = page.locator("article.example").all()
    scores = [float(a.get_attribute("data-score") or "nan") for a in answers]
    assert scores == sorted(scores, reverse=True)
    # each answer is coloured by its score's band: a good answer no longer wears the worst one's red
    bands = [a.get_attribute("data-band") for a in answers]
    assert bands == [score_band(score) for score in scores]
    borders = {band: answer.evaluate("a => getComputedStyle(a).borderLeftColor")
               for band, answer in zip(bands, answers, strict=True)}
    assert len(set(borders.values())) == len(borders), borders  # one colour per band shown

    missing = max(iterations) + 1
    answer = page.goto(f"{server.url}/runs/{run_id}/evaluations/examples?iteration={missing}")
    assert answer is not None and answer.status == 404
    expect(page.locator("#error-detail")).to_contain_text(f"no scored answers for iteration {missing:,}")
