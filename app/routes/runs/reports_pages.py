"""The printable run report (`/runs/{id}/report`) and its Count tokens button, which starts the token
statistics of the run's data when there are none yet."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.reports.document import build_report, chart_data
from app.reports.facts import RunFacts, count_tokens, gather
from app.routes.params import RunId, run_or_404

router = APIRouter()


def _facts(request: Request, session: SessionDep, settings: SettingsDep, run_id: int) -> RunFacts:
    return gather(session, settings, run_or_404(session, run_id), str(request.base_url).rstrip("/"))


@router.get("/runs/{run_id}/report", response_class=HTMLResponse, include_in_schema=False)
def report_page(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep, run_id: RunId,
) -> Response:
    facts = _facts(request, session, settings, run_id)
    context = {"run": facts.run, "report": build_report(facts), "chart": chart_data(facts),
               "tokens_state": facts.tokens.state}
    return templates.TemplateResponse(request, "report.html", context)


@router.post("/runs/{run_id}/report/token-stats", include_in_schema=False)
def report_count_tokens(session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
                        run_id: RunId) -> RedirectResponse:
    """The report's Count tokens button: start the token statistics of the run's data, then show the report."""
    count_tokens(session, settings, supervisor, run_or_404(session, run_id))
    return RedirectResponse(f"/runs/{run_id}/report#report-dataset", status_code=status.HTTP_303_SEE_OTHER)
