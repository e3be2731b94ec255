"""The run report as Markdown and its SVG chart, and the metrics export (CSV, JSON), under /api.

Reading a report starts nothing: it shows the token statistics of the run's data as far as they are counted.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from app.deps import SessionDep, SettingsDep
from app.reports.document import build_report, chart_svg
from app.reports.export import COLUMNS, csv_lines, metric_rows
from app.reports.facts import RunFacts, gather
from app.reports.markdown import render_markdown
from app.routes.params import RunId, content, problems, run_or_404
from app.runs.store.runs import metrics_json

router = APIRouter(prefix="/api", tags=["reports"])
DownloadFlag = Query(False, description="answer as an attachment (run-<id>-report.md) instead of inline")


def _facts(request: Request, session: SessionDep, settings: SettingsDep, run_id: int) -> RunFacts:
    return gather(session, settings, run_or_404(session, run_id), str(request.base_url).rstrip("/"))


@router.get("/runs/{run_id}/report.md", response_class=Response,
            responses={**content("text/markdown", "the run report as Markdown (the chart is an SVG data URI)"),
                       **problems(404, 422)})
def report_markdown(
    request: Request, session: SessionDep, settings: SettingsDep, run_id: RunId, download: bool = DownloadFlag,
) -> Response:
    """The run report: configuration, dataset, losses, the stop decision, checkpoints, evaluation, usage."""
    facts = _facts(request, session, settings, run_id)
    body = render_markdown(build_report(facts), chart_svg(facts))
    headers = {"Content-Disposition": f'attachment; filename="run-{run_id}-report.md"'} if download else {}
    return Response(body, media_type="text/markdown; charset=utf-8", headers=headers)


@router.get("/runs/{run_id}/report.svg", response_class=Response,
            responses={**content("image/svg+xml", "the loss chart the report shows"), **problems(404, 422)})
def report_svg(request: Request, session: SessionDep, settings: SettingsDep, run_id: RunId) -> Response:
    """The report's loss chart: train and validation curves, checkpoints, the best one, overfitting stretches."""
    facts = _facts(request, session, settings, run_id)
    return Response(chart_svg(facts), media_type="image/svg+xml")


@router.get("/runs/{run_id}/metrics.csv", response_class=StreamingResponse,
            responses={**content("text/csv", f"one row per report; columns: {', '.join(COLUMNS)}"),
                       **problems(404, 422)})
def metrics_csv(session: SessionDep, run_id: RunId) -> StreamingResponse:
    """Every report of the run, train and validation, one CSV row each (kind says which)."""
    run_or_404(session, run_id)
    rows = metric_rows(metrics_json(session, run_id, None))
    return StreamingResponse(csv_lines(rows), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="run-{run_id}-metrics.csv"'})


@router.get("/runs/{run_id}/metrics.json", responses=problems(404, 422))
def metrics_export(session: SessionDep, run_id: RunId) -> list[dict[str, Any]]:
    """Every report of the run as metrics.csv has them: one object per report with every column."""
    run_or_404(session, run_id)
    return metric_rows(metrics_json(session, run_id, None))
