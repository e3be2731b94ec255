"""create_app() with its lifespan (the `loraboard` command is app/cli/)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from http import HTTPStatus

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm.exc import ObjectDeletedError, StaleDataError
from sqlmodel import Session
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.body_limit import MAX_BODY_BYTES, BodyLimitMiddleware
from app.contract.db_writes import Outage, failure_key, write_failure
from app.contract.settings import Settings, get_settings
from app.datasets.registry import ensure_sample_registered
from app.db import make_engine
from app.jobs.supervisor import Supervisor
from app.jobs.views import finish_completed
from app.models.registry import remove_leftover_model_temps
from app.routes.checkpoints import api as checkpoints_api
from app.routes.checkpoints import pages as checkpoints_pages
from app.routes.datasets import api as datasets_api
from app.routes.datasets import folders_api as datasets_folders_api
from app.routes.datasets import folders_pages as datasets_folders_pages
from app.routes.datasets import pages as datasets_pages
from app.routes.evaluations import api as evaluations_api
from app.routes.evaluations import pages as evaluations_pages
from app.routes.jobs import api as jobs_api
from app.routes.jobs import pages as jobs_pages
from app.routes.models import api as models_api
from app.routes.models import gguf_api as models_gguf_api
from app.routes.models import gguf_pages as models_gguf_pages
from app.routes.models import pages as models_pages
from app.routes.playground import api as playground_api
from app.routes.playground import pages as playground_pages
from app.routes.runs import api as runs_api
from app.routes.runs import compare_pages as runs_compare_pages
from app.routes.runs import config_api as runs_config_api
from app.routes.runs import events_api as runs_events_api
from app.routes.runs import imports_api as runs_imports_api
from app.routes.runs import list_pages as runs_list_pages
from app.routes.runs import new_pages as runs_new_pages
from app.routes.runs import pages as runs_pages
from app.routes.runs import reports_api as runs_reports_api
from app.routes.runs import reports_pages as runs_reports_pages
from app.routes.serve import api as serve_api
from app.routes.serve import pages as serve_pages
from app.runs.store.checkpoints import remove_leftover_temps
from app.security import Guard, SecurityMiddleware, parse_hosts
from app.templating import register_filters

LOG = logging.getLogger("loraboard")
MAX_BACKOFF_S = 5.0  # the longest wait between two tries of a failing supervisor tick


async def _watch(supervisor: Supervisor, interval_s: float) -> None:
    """Tick the supervisor every interval_s, whatever a tick raises. A failure is logged with its traceback once
    while it lasts, and the tick tried again after a growing back-off (up to MAX_BACKOFF_S); a write the database
    refused is also shown on every page (Supervisor.write_failure) until a write works again."""
    outage = Outage(first_delay_s=interval_s, max_delay_s=max(interval_s, MAX_BACKOFF_S))
    while True:
        try:
            await asyncio.to_thread(supervisor.tick)
        except Exception as exc:
            failure = write_failure(supervisor.settings.database_path, exc)
            if failure is not None:
                supervisor.write_failure = failure
            if outage.failed(failure_key(exc), time.monotonic()):
                LOG.error("loraboard: the supervisor's check failed (%s); it is tried again every %g s at most",
                          failure.sentence() if failure is not None else f"{type(exc).__name__}: {exc}",
                          outage.max_delay_s, exc_info=exc)
            await asyncio.sleep(outage.delay_s)
            continue
        if outage.succeeded():
            LOG.warning("loraboard: the supervisor's checks work again")
        await asyncio.sleep(interval_s)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_path)
        app.state.engine = engine
        app.state.supervisor = Supervisor(settings, engine, on_jobs_ended=partial(finish_completed, settings=settings))
        with Session(engine) as session:  # temporary files of workers killed mid-write
            finish_completed(session, settings=settings)  # jobs that completed while no app was watching
            ensure_sample_registered(session, settings)  # the bundled sample is always listed
            remove_leftover_temps(session, settings, lambda run: not app.state.supervisor.worker_gone(run))
        remove_leftover_model_temps(settings)  # a fuse or quantize job killed mid-write
        watcher = asyncio.create_task(_watch(app.state.supervisor, settings.supervisor_interval_s))
        yield
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        app.state.supervisor.shutdown()
        engine.dispose()

    app = FastAPI(title="loraboard", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.state.stopping = threading.Event()  # set when shutdown begins: open event streams end at once
    templates = Jinja2Templates(directory=settings.templates_dir)
    register_filters(templates)
    app.state.templates = templates
    app.state.csrf_token = secrets.token_urlsafe(32)  # per server start; pages carry it (templates/base.html)
    app.add_middleware(BodyLimitMiddleware)  # inside the security checks: a refused request's body is never read
    app.add_middleware(SecurityMiddleware, guard=Guard(
        bind_host=settings.host, port=settings.port, allowed_hosts=parse_hosts(settings.allowed_hosts),
        token=settings.token or None, csrf_token=app.state.csrf_token))
    app.add_exception_handler(StarletteHTTPException, html_error_page)
    app.add_exception_handler(StaleDataError, deleted_meanwhile)
    app.add_exception_handler(ObjectDeletedError, deleted_meanwhile)
    app.add_exception_handler(OperationalError, database_unwritable)
    app.add_exception_handler(sqlite3.OperationalError, database_unwritable)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.mount("/static", StaticFiles(directory=settings.static_dir), name="static")
    for module in (runs_api, runs_events_api, runs_config_api, runs_reports_api, runs_imports_api,
                   runs_list_pages, runs_compare_pages, runs_new_pages, runs_pages, runs_reports_pages,
                   checkpoints_api, checkpoints_pages,
                   evaluations_api, evaluations_pages,
                   datasets_api, datasets_pages, datasets_folders_api, datasets_folders_pages,
                   models_api, models_pages, models_gguf_api, models_gguf_pages,
                   playground_api, playground_pages,
                   serve_api, serve_pages,
                   jobs_api, jobs_pages):
        document_body_limit(module.router)
        app.include_router(module.router)
    return app


def document_body_limit(router: APIRouter) -> None:
    """Every route that reads a body may answer 413 (app/body_limit.py refuses it before the route runs): its
    OpenAPI description says so."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.body_field is not None:
            route.responses.setdefault(413, {"description": f"The request body is over {MAX_BODY_BYTES:,} bytes"})


async def deleted_meanwhile(request: Request, exc: Exception) -> Response:
    """What this request was changing was deleted by another request meanwhile: 404, as if it came a moment later."""
    gone = StarletteHTTPException(HTTPStatus.NOT_FOUND, "it was deleted by another request meanwhile")
    return await html_error_page(request, gone)


async def database_unwritable(request: Request, exc: Exception) -> Response:
    """A write the database refused (read-only, disk full, locked): 503 with the sentence that says so, and the
    pages' banner until a write works again. Any other database error stays a 500."""
    settings: Settings = request.app.state.settings
    failure = write_failure(settings.database_path, exc)
    if failure is None:
        raise exc
    supervisor: Supervisor | None = getattr(request.app.state, "supervisor", None)
    if supervisor is not None:
        supervisor.write_failure = failure
    unavailable = StarletteHTTPException(HTTPStatus.SERVICE_UNAVAILABLE, failure.sentence())
    return await html_error_page(request, unavailable)


async def client_gone(request: Request, exc: Exception) -> Response:
    """The browser went away while its request's body was being read: the form's live check drops the one in
    flight as the user types on. Nothing is wrong and nobody is left to answer: one debug line, no traceback."""
    LOG.debug("%s %s: the client went away before its request was read", request.method, request.url.path)
    return Response(status_code=HTTPStatus.BAD_REQUEST)


async def html_error_page(request: Request, exc: Exception) -> Response:
    """A page for a browser that navigated to something missing; JSON (FastAPI's own) for the API and htmx."""
    assert isinstance(exc, StarletteHTTPException)
    wants_page = "text/html" in request.headers.get("accept", "") and "hx-request" not in request.headers
    if request.url.path.startswith("/api") or not wants_page:
        return await http_exception_handler(request, exc)
    context = {"status_code": exc.status_code, "title": HTTPStatus(exc.status_code).phrase,
               "detail": exc.detail if isinstance(exc.detail, str) else str(exc.detail)}
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(request, "error.html", context, status_code=exc.status_code,
                                      headers=getattr(exc, "headers", None))
