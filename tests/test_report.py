"""The run report (Markdown, HTML, SVG chart) and the metrics export, on one real early-stopped tiny-model run
(the answers for a run that does not exist in-process)."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import time
import urllib.request
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from conftest import ARTIFACTS, PROJECT_DIR, InProcess, Server, bearer, overfitting_run, shot
from playwright.sync_api import Page, Route

from app.contract.policy import best_checkpoint
from app.evaluation.view import Figures, table_truth
from app.reports.blocks import Mono, Report, Section, Table, text
from app.reports.document import build_report, chart_data, chart_svg
from app.reports.export import COLUMNS, csv_lines, metric_rows
from app.reports.facts import DatasetFacts, RunFacts, TokenFacts, command_checkpoint
from app.reports.labels import (
    BASELINE,
    BEST,
    BEST_TIED,
    DEGRADING,
    IMPROVING,
    OVERFITTING,
    SLIGHT,
    sample_rows,
    val_statuses,
)
from app.reports.markdown import render_markdown
from app.reports.svg import ChartMark, loss_chart_svg, nice_ticks
from app.tables import Checkpoint, Run

SNAPSHOT = Path(__file__).parent / "snapshots" / "report.md"
RUN_NAME = "Report <b>check</b> | *one*"
NOTE = "kept | for\nthe record"
SVG = "{http://www.w3.org/2000/svg}"

# The reference summary's validation losses: a tie at 900 and 1,200, then overfitting at 1,300.
REFERENCE = [(0, 1.017), (100, 0.326), (200, 0.306), (300, 0.310), (400, 0.295), (500, 0.287), (600, 0.284),
             (700, 0.272), (800, 0.270), (900, 0.268), (1000, 0.273), (1100, 0.286), (1200, 0.268), (1300, 0.293)]


# Pure ----------------------------------------------------------------------------------------------------


def test_statuses_of_the_reference_run() -> None:
    statuses = val_statuses(REFERENCE, [(1200, 1300)])
    assert statuses == [BASELINE, IMPROVING, IMPROVING, SLIGHT, IMPROVING, IMPROVING, IMPROVING, IMPROVING,
                        IMPROVING, BEST_TIED, SLIGHT, DEGRADING, BEST_TIED, OVERFITTING]


def test_statuses_single_best_and_threshold() -> None:
    # 0.515 is 3% above the best so far (0.5): degrading; 0.505 is 1%: a slight increase
    assert val_statuses([(0, 1.0), (10, 0.5), (20, 0.505), (30, 0.515), (40, 0.6)], []) == [
        BASELINE, BEST, SLIGHT, DEGRADING, DEGRADING]
    assert val_statuses([(0, 1.0), (10, 0.5), (20, 0.515)], [], slight=0.05)[2] == SLIGHT
    # a rise inside an overfitting stretch is called overfitting, however small
    assert val_statuses([(0, 1.0), (10, 0.5), (20, 0.505)], [(10, 20)])[2] == OVERFITTING
    assert val_statuses([], []) == []
    assert val_statuses([(0, 1.0)], []) == [BASELINE]
    assert val_statuses([(0, 1.0), (10, float("nan")), (20, 0.9)], []) == [BASELINE, DEGRADING, BEST]


def test_training_rows_are_sampled_to_fifteen() -> None:
    rows = list(range(1, 137))
    picked = sample_rows(rows, 15)
    assert len(picked) == 15 and picked[0] == 1 and picked[-1] == 136 and picked == sorted(set(picked))
    assert sample_rows(rows[:15], 15) == rows[:15]
    assert sample_rows([7], 15) == [7]
    with pytest.raises(ValueError, match="at least 2"):
        sample_rows(rows, 1)


def test_markdown_escapes_user_text_in_cells() -> None:
    report = Report(RUN_NAME, [("Notes", text("line one\nline | two"))], [Section("t", "T", [
        Table("t", ["A", "B"], [[text(NOTE), text(Mono("a|b`c"))]])])])
    md = render_markdown(report, "<svg/>")
    row = next(line for line in md.splitlines() if line.startswith("| kept"))
    assert row == r"| kept \| for the record | ``a\|b`c`` |"
    assert r"# Report \<b\>check\</b\> \| \*one\*" in md
    assert "**Notes**: line one line \\| two" in md


def test_svg_chart_without_points_and_ticks() -> None:
    assert nice_ticks(0, 1000, 5) == [0, 200, 400, 600, 800, 1000]
    empty = ET.fromstring(loss_chart_svg([], []))
    assert "no losses reported yet" in "".join(empty.itertext())
    drawn = ET.fromstring(loss_chart_svg([(1, 2.0), (2, 1.5)], [(0, 2.5), (2, 1.7)], [ChartMark(2, 1.7, True)],
                                         title="<loss & co>"))
    assert [p.get("class") for p in drawn.iter(f"{SVG}path")] == ["curve train", "curve val"]
    assert len(list(drawn.iter(f"{SVG}circle"))) >= 1


def test_metric_rows_merge_train_and_val() -> None:
    metrics = {"train": [{"iteration": 5, "train_loss": 1.0, "learning_rate": 0.1}],
               "val": [{"iteration": 0, "val_loss": 2.0}, {"iteration": 5, "val_loss": 1.5}]}
    rows = metric_rows(metrics)
    assert [(r["kind"], r["iteration"]) for r in rows] == [("val", 0), ("train", 5), ("val", 5)]
    assert all(list(r) == list(COLUMNS) for r in rows)
    parsed = list(csv.DictReader(io.StringIO("".join(csv_lines(rows, chunk=1)))))
    assert len(parsed) == 3 and parsed[1]["learning_rate"] == "0.1" and parsed[1]["val_loss"] == ""


NOW = datetime(2026, 1, 1, 17, 35, tzinfo=UTC)
EMPTY_SUMMARY: dict[str, Any] = {
    "best_val_loss": None, "best_val_iteration": None, "first_val_loss": None, "first_val_iteration": None,
    "improvement_abs": None, "improvement_pct": None, "avg_tokens_per_second": None,
    "avg_iterations_per_second": None, "total_tokens": None, "peak_memory": None, "reports": 0,
    "wall_seconds": None, "wall_time": "—", "test_loss": None,
}


def facts(run: Run, val: list[tuple[int, float]], checkpoints: list[Checkpoint], spans: list[tuple[int, int]],
          train: list[dict[str, Any]] | None = None, tokens: TokenFacts | None = None) -> RunFacts:
    best = best_checkpoint(checkpoints)
    shown = command_checkpoint(checkpoints, best)
    return RunFacts(
        run=run, config=run.config, hardware=None, train=train or [], val=val, statuses=val_statuses(val, spans),
        spans=spans, checkpoints=checkpoints, best=best, truth=table_truth(checkpoints, None, []),
        summary=EMPTY_SUMMARY, dataset=DatasetFacts("/data/cc", None, None, {}),
        tokens=tokens or TokenFacts("computing", 7), commands=None, command_checkpoint=shown,
        folder="/adapters/run-0001", generated_at=NOW)


def render(report: Report) -> str:
    return render_markdown(report, "<svg xmlns='http://www.w3.org/2000/svg'/>")


def test_a_queued_run_reads_dashes_and_sentences() -> None:
    run = Run(id=3, name="fresh", status="queued", config_json=json.dumps({"model": "m", "iters": 100}),
              total_iters=100)
    md = render(build_report(facts(run, [], [], [])))
    assert "No validation loss has been reported yet." in md
    assert "No training loss has been reported yet." in md
    assert "No checkpoint has been saved yet." in md
    assert "There is no checkpoint to use yet." in md
    assert "- **Trainable parameters**: — (counted when training starts)" in md
    assert "- **Hardware**: — (not recorded: recorded when training starts)" in md
    assert "Token statistics are being computed (job #7)" in md
    assert "Training has not ended: iteration 0 of 100 (queued)." in md
    assert "no losses reported yet" in chart_svg(facts(run, [], [], []))


def test_the_reference_tie_goes_to_the_later_checkpoint() -> None:
    config = {"model": "mistral", "iters": 1500, "early_stopping": {"patience": 1, "min_delta": 0.0}}
    run = Run(id=1, name="contact center", status="early_stopped", config_json=json.dumps(config), total_iters=1500,
              iteration=1360, stop_reason="validation loss has not improved on 0.268 (iteration 1,200) for 1 "
              "evaluation; stopped at iteration 1,300")
    val = dict(REFERENCE)
    ckpts = [Checkpoint(id=i, run_id=1, iteration=it, filename=f"{it:07d}_adapters.safetensors", size_bytes=40 << 20,
                        sha256="", val_loss=val[it], trained_tokens=it * 4630, is_deployment=it == 1200)
             for i, it in enumerate((300, 600, 900, 1200), start=1)]
    train = [{"iteration": it, "train_loss": loss, "trained_tokens": it * 4630}
             for it, loss in ((10, 0.637), (1200, 0.198), (1300, 0.180), (1360, 0.188))]
    report_facts = facts(run, REFERENCE, ckpts, [(1200, 1300)], train)
    md = render(build_report(report_facts))
    assert "Iterations 900 and 1,200 tie at 0.268; the later is kept (more training data seen at the same loss: " \
           "5.56M vs 4.17M tokens)." in md
    assert "| **1,200** | **0.268** | **73.6%** | **best (tied) · deployment** |" in md
    assert "| 1,300 | 0.293 | 71.2% | overfitting |" in md
    assert "| 1,360 (early stopped) | — | — | training ended |" in md
    assert "Validation loss rose from 0.268 (iteration 1,200) to 0.293 (iteration 1,300) while training loss fell " \
           "(0.198 → 0.180)" in md
    assert "Iteration 1,200 is marked for deployment." in md
    assert "**Best checkpoint**: `<folder>/0001200_adapters.safetensors` (iteration 1,200: best, deployment, " \
           "recommended)" in md.replace(report_facts.folder, "<folder>")  # one checkpoint in every role: one line
    assert "| `0000900_adapters.safetensors` | 40.0 MB | 900 | 0.268 | 73.6% | — | best (tied) |" not in md
    assert "| `0000900_adapters.safetensors` | 40.0 MB | 900 | 0.268 | 73.6% | — | — |" in md
    data = chart_data(report_facts)
    assert data["best"] == {"x": 1200, "y": 0.268} and data["spans"] == [[1200, 1300]]
    assert data["early_stop"] == 1360 and data["checkpoints"]["x"] == [300, 600, 900]


def test_evaluation_rows_with_the_base_model() -> None:
    run = Run(id=2, name="evaluated", status="completed", config_json=json.dumps({"model": "m", "iters": 20}),
              total_iters=20, iteration=20)
    ckpts = [Checkpoint(id=1, run_id=2, iteration=20, filename="0000020_adapters.safetensors", size_bytes=1,
                        sha256="", val_loss=1.5)]
    report_facts = facts(run, [(0, 2.0), (20, 1.5)], ckpts, [])
    truth = table_truth(ckpts, 2.0, [])
    truth = type(truth)("test", {0: Figures(2.1, 8.17, 0.1), 20: Figures(1.6, 4.95, None)}, 2.0, truth.verdict)
    report_facts = RunFacts(**{**report_facts.__dict__, "truth": truth})
    md = render(build_report(report_facts))
    assert "| Checkpoint | test loss | Perplexity | Task score |" in md
    assert "| base model | 2.100 | 8.17 | 0.100 |" in md
    assert "| 20 | 1.600 | 4.95 | — |" in md


# One real run ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report_run(shared_server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An early-stopped run with a checkpoint at every evaluation, a note with a pipe, and its token statistics."""
    config = {**overfitting_run(tmp_path_factory.mktemp("report"), short=True), "save_every": 5, "name": RUN_NAME}
    status, run = shared_server.post("/api/runs", config)
    assert status == 201, run
    run = shared_server.wait_terminal(run["id"])
    assert run["status"] == "early_stopped", run
    checkpoints = shared_server.get(f"/api/runs/{run['id']}/checkpoints")
    code, _, _ = shared_server.request("PATCH", f"/api/runs/{run['id']}/checkpoints/{checkpoints[0]['iteration']}",
                                       {"note": NOTE})
    assert code == 200
    first = markdown(shared_server, run["id"])
    assert "have not been counted for this data and model yet" in first  # reading the report starts nothing
    code, _, _ = shared_server.request("POST", f"/runs/{run['id']}/report/token-stats")  # its Count tokens button
    assert code == 200  # the redirect to the report, followed
    first = markdown(shared_server, run["id"])
    deadline = time.monotonic() + 120
    while "being computed" in first and time.monotonic() < deadline:
        time.sleep(0.5)
        first = markdown(shared_server, run["id"])
    assert "being computed" not in first, first
    return run


def markdown(server: Server, run_id: int) -> str:
    status, _, raw = server.request("GET", f"/api/runs/{run_id}/report.md")
    assert status == 200
    return raw.decode()


def section(md: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^---$|\Z)", md, re.S | re.M)
    assert match, f"no section {title}"
    return match.group(1)


def table_rows(block: str) -> list[list[str]]:
    rows = [line for line in block.splitlines() if line.startswith("|")][2:]
    return [[cell.strip().strip("*") for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def test_report_sections_hold_the_runs_numbers(shared_server: Server, report_run: dict[str, Any]) -> None:
    run_id = report_run["id"]
    md = markdown(shared_server, run_id)
    for title in ("Summary", "Configuration", "Dataset", "Hyperparameters", "Validation loss", "Training loss",
                  "Performance", "Stop decision", "Checkpoints", "Evaluation", "Usage", "Loss chart"):
        assert f"\n## {title}\n" in md
    assert r"# Training report: Report \<b\>check\</b\> \| \*one\*" in md

    metrics = shared_server.get(f"/api/runs/{run_id}/metrics")
    val_rows = table_rows(section(md, "Validation loss"))
    assert [row[1] for row in val_rows if row[1] != "—"] == [f"{p['val_loss']:.3f}" for p in metrics["val"]]
    assert [row[0].split(" ")[0] for row in val_rows[:len(metrics["val"])]] == [
        f"{p['iteration']:,}" for p in metrics["val"]]
    assert val_rows[0][3] == "baseline"
    lowest = min(p["val_loss"] for p in metrics["val"])
    assert {row[1] for row in val_rows if row[3].startswith("best")} == {f"{lowest:.3f}"}
    assert len(table_rows(section(md, "Training loss"))) == min(15, len(metrics["train"]))

    checkpoints = shared_server.get(f"/api/runs/{run_id}/checkpoints")
    ckpt_rows = table_rows(section(md, "Checkpoints"))
    assert len(ckpt_rows) == len(checkpoints) and all(len(row) == 7 for row in ckpt_rows)
    for row, ckpt in zip(ckpt_rows, checkpoints, strict=True):
        assert row[2] == f"{ckpt['iteration']:,}" and row[3] == f"{ckpt['val_loss']:.3f}"
        assert ("best" in row[6].split(";")[0]) == ckpt["is_best"]
    assert r"kept \| for the record" in ckpt_rows[0][6]
    best = next(c for c in checkpoints if c["is_best"])

    decision = section(md, "Stop decision")
    assert f"Training stopped early at iteration {report_run['iteration']:,} of 2,000: " in decision
    assert report_run["stop_reason"] in decision
    assert f"iteration {best['iteration']:,}" in decision
    usage = section(md, "Usage")
    assert f"--adapter-path run-{run_id}-iter-{best['iteration']}" in usage
    for tool in ("mlx_lm.generate", "mlx_lm.fuse", "mlx_lm.server"):
        assert tool in usage

    summary = shared_server.get(f"/api/runs/{run_id}")
    config = section(md, "Configuration")
    trainable, total = summary["trainable_params"], summary["total_params"]
    assert f"{100 * trainable / total:.3f}% ({trainable / 1e6:,.3f}M / {total / 1e6:,.3f}M)" in config
    assert summary["dtype"] in config and summary["backend"] in config
    assert "**CPU**" in config and "**Software**: mlx " in config

    jobs = shared_server.get("/api/jobs")
    stats_job = next(j for j in (jobs if isinstance(jobs, list) else jobs["jobs"]) if j["kind"] == "token_stats")
    stats = shared_server.get(f"/api/token-stats/{stats_job['id']}")
    assert stats["status"] == "completed"
    dataset = section(md, "Dataset")
    assert "- **Examples**: train 8, valid 16" in dataset
    train_stats = stats["summary"]["splits"]["train"]
    assert f"- **Tokens (train)**: mean {train_stats['mean']:,.1f}, max {train_stats['max']:,}" in dataset
    assert "Truncated by max\\_seq\\_length" in dataset


def masked(md: str, server: Server) -> str:
    """The report with what differs between machines and runs replaced (times, paths, ids, numbers, hardware)."""
    md = md.replace(str(server.root), "<root>").replace(str(server.root.parent), "<tmp>")
    md = md.replace(str(PROJECT_DIR), "<project>")
    md = re.sub(r"data:image/svg\+xml;base64,[A-Za-z0-9+/=]+", "data:<svg>", md)
    md = re.sub(r"^- \*\*(CPU|GPU|Memory|OS|Software|Precision|Backend)\*\*: .*$", r"- **\1**: <machine>", md,
                flags=re.M)
    md = re.sub(r"\d+(?:[.,]\d+)*", "N", md)
    md = re.sub(r"\bN[hms](?: N[ms])*\b", "<duration>", md)  # "Ns", or "Nm Ns" on a slower machine
    md = re.sub(r"(\|---.*\n)(\|.*\n)+", r"\1| <rows> |\n", md)  # table bodies: as many rows as the run made
    # all of the training reports, or some of them evenly spread: as many as the run made
    md = re.sub(r"All N reports\.|N of N reports, evenly spread \(the first and the last kept\)\.", "<reports shown>.",
                md)
    # the stop decision: the first sentence stays; what follows depends on the losses
    return re.sub(r"(## Stop decision\n\n[^\n]*\n)(.*?)(?=\n---\n)", r"\1\n<decided by the losses>\n", md,
                  flags=re.S)


def test_markdown_snapshot(shared_server: Server, report_run: dict[str, Any]) -> None:
    raw = markdown(shared_server, report_run["id"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "report.md").write_text(raw)
    md = masked(raw, shared_server)
    if os.environ.get("LORABOARD_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(md)
    assert SNAPSHOT.exists(), f"no snapshot: run with LORABOARD_UPDATE_SNAPSHOTS=1 to write {SNAPSHOT}"
    assert md == SNAPSHOT.read_text()


def test_markdown_download(shared_server: Server, report_run: dict[str, Any]) -> None:
    request = urllib.request.Request(f"{shared_server.url}/api/runs/{report_run['id']}/report.md?download=1",
                                     headers=bearer(shared_server.token))
    with urllib.request.urlopen(request) as resp:
        assert resp.headers["Content-Disposition"] == f'attachment; filename="run-{report_run["id"]}-report.md"'
        assert resp.headers["Content-Type"].startswith("text/markdown")


def test_reports_of_no_run_are_404(shared_app_client: InProcess) -> None:
    for path in ("report.md", "report.svg", "metrics.csv", "metrics.json"):
        status, body, _ = shared_app_client.request("GET", f"/api/runs/999999/{path}")
        assert status == 404 and body == {"detail": "no run with id 999999"}
    status, _, _ = shared_app_client.request("GET", "/runs/999999/report")
    assert status == 404


def test_metrics_export(shared_server: Server, report_run: dict[str, Any]) -> None:
    run_id = report_run["id"]
    metrics = shared_server.get(f"/api/runs/{run_id}/metrics")
    status, _, raw = shared_server.request("GET", f"/api/runs/{run_id}/metrics.csv")
    assert status == 200
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    assert len(rows) == len(metrics["train"]) + len(metrics["val"])
    assert tuple(rows[0]) == COLUMNS and set(metrics["train"][0]) | {"kind", "val_loss"} == set(COLUMNS)
    train = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "val"]
    assert [float(r["train_loss"]) for r in train] == [p["train_loss"] for p in metrics["train"]]
    assert [float(r["val_loss"]) for r in val] == [p["val_loss"] for p in metrics["val"]]
    exported = shared_server.get(f"/api/runs/{run_id}/metrics.json")
    assert [{k: "" if v is None else str(v) for k, v in row.items()} for row in exported] == rows


def test_svg_chart_matches_the_markdown(shared_server: Server, report_run: dict[str, Any]) -> None:
    run_id = report_run["id"]
    status, _, raw = shared_server.request("GET", f"/api/runs/{run_id}/report.svg")
    assert status == 200
    root = ET.fromstring(raw)
    curves = {p.get("class"): p.get("d") or "" for p in root.iter(f"{SVG}path")}
    metrics = shared_server.get(f"/api/runs/{run_id}/metrics")
    assert curves["curve train"].count("L") == len(metrics["train"]) - 1
    assert curves["curve val"].count("L") == len(metrics["val"]) - 1
    assert len(list(root.iter(f"{SVG}circle"))) >= len(shared_server.get(f"/api/runs/{run_id}/checkpoints"))
    assert root.find(f".//{SVG}line[@class='early-stop']") is not None
    embedded = re.search(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", markdown(shared_server, run_id))
    assert embedded and ET.fromstring(base64.b64decode(embedded.group(1))).tag == f"{SVG}svg"


@pytest.mark.browser
def test_html_report_draws_its_chart_offline(shared_server: Server, report_run: dict[str, Any], page: Page) -> None:
    server_host = urlparse(shared_server.url).netloc
    blocked: list[str] = []

    def only_the_server(route: Route) -> None:
        if urlparse(route.request.url).netloc == server_host:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_server)
    page.goto(f"{shared_server.url}/runs/{report_run['id']}")
    assert page.locator("#report-button").get_attribute("href") == f"/runs/{report_run['id']}/report"
    page.click("#report-button")
    page.wait_for_selector("#report-chart svg.main-svg", timeout=30_000)
    assert page.locator("#report-chart .scatterlayer .trace").count() >= 3  # train, validation, checkpoints
    assert page.locator("#report-loss-chart h2").inner_text() == "Loss chart"
    assert page.locator("#report-loss-chart #report-chart").count() == 1
    assert page.title().startswith("Report · ")
    title = page.locator("#report-title").inner_text()
    assert title == f"Training report: {RUN_NAME}"  # shown as text, not markup
    assert page.locator("#report-table-validation tbody tr").count() >= 3
    assert page.locator("#report-table-checkpoints tr.report-strong").count() >= 1
    assert page.locator("#report-decision").inner_text().count("Training stopped early") == 1
    assert blocked == []
    shot(page, "report")
    page.emulate_media(media="print")
    assert not page.locator(".site-header").is_visible() and not page.locator("#report-print").is_visible()
    shot(page, "report-print")


def test_the_header_names_the_best_and_the_deployment_checkpoint_apart() -> None:
    config = {"model": "mistral", "iters": 1500}
    run = Run(id=1, name="contact center", status="completed", config_json=json.dumps(config), total_iters=1500,
              iteration=1500)
    val = dict(REFERENCE)
    ckpts = [Checkpoint(id=i, run_id=1, iteration=it, filename=f"{it:07d}_adapters.safetensors", size_bytes=40 << 20,
                        sha256="", val_loss=val[it], trained_tokens=it * 4630, is_deployment=it == 600)
             for i, it in enumerate((300, 600, 1200), start=1)]
    report_facts = facts(run, REFERENCE, ckpts, [], [])
    md = render(build_report(report_facts)).replace(report_facts.folder, "<folder>")
    assert "**Best checkpoint**: `<folder>/0001200_adapters.safetensors` (iteration 1,200: best, recommended)" in md
    assert "**Deployment**: `<folder>/0000600_adapters.safetensors` (iteration 600: deployment)" in md
    assert "Best model" not in md
