"""Comparing runs: overlaid curves and the config keys that differ."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import HTMLResponse, Response

from app.deps import SessionDep, TemplatesDep
from app.runs.store.listing import COMPARE_COLORS, RunListError, differing_keys, parse_ids, run_rows, shown_value
from app.tables import Run

router = APIRouter(include_in_schema=False)
CHART_MAX_POINTS = 2000  # per series and run, LTTB-downsampled by the server


def chart_runs(runs: list[Run]) -> list[dict[str, Any]]:
    """What static/compare.js needs per run: its color and where its metrics are."""
    charted = []
    for index, run in enumerate(runs):
        parent = "&include_parent=true" if run.config.get("resume_from") else ""
        charted.append({
            "id": run.id, "name": run.name, "color": COMPARE_COLORS[index % len(COMPARE_COLORS)],
            "metrics_url": f"/api/runs/{run.id}/metrics?max_points={CHART_MAX_POINTS}{parent}",
            "run_url": f"/api/runs/{run.id}", "live": not run.is_terminal,
        })
    return charted


@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request, session: SessionDep, templates: TemplatesDep,
    ids: Annotated[list[str], Query(description="run ids: ids=1,2,3 or ids=1&ids=2")] = [],  # noqa: B006
) -> Response:
    error, code, runs = None, status.HTTP_200_OK, []
    try:
        run_ids = parse_ids(ids)
    except RunListError as exc:
        error, code, run_ids = str(exc), status.HTTP_400_BAD_REQUEST, []
    for run_id in run_ids:
        run = session.get(Run, run_id)
        if run is None:
            error, code = f"ids: there is no run {run_id}", status.HTTP_404_NOT_FOUND
            break
        runs.append(run)
    if error:
        runs = []
    charted = chart_runs(runs)
    diff = [(key, [shown_value(v) for v in values]) for key, values in differing_keys([r.config for r in runs])]
    context = {
        "error": error,
        "rows": list(zip(run_rows(session, runs), charted, strict=True)),
        "chart_runs": charted,
        "diff": diff,
        "any_live": any(c["live"] for c in charted),
    }
    return templates.TemplateResponse(request, "compare.html", context, status_code=code)
