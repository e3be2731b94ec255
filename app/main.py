"""create_app() with its lifespan, and the `loraboard` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from types import FrameType

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm.exc import ObjectDeletedError, StaleDataError
from sqlmodel import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.db import make_engine
from app.jobs.supervisor import Supervisor, worker_env
from app.routes import (
    api,
    compare,
    config_yaml,
    dataset_tools,
    datasets,
    evaluation_pages,
    evaluations,
    events,
    jobs,
    models,
    new_run,
    pages,
    reports,
    runlist,
)
from app.runs.checkpoints import remove_leftover_temps
from app.security import (
    BindRefused,
    Guard,
    SecurityMiddleware,
    is_loopback,
    parse_hosts,
    routable_addresses,
    start_lines,
    token_for_bind,
)
from app.settings import PROJECT_DIR, Settings, get_settings
from app.templating import register_filters


async def _watch(supervisor: Supervisor, interval_s: float) -> None:
    while True:
        await asyncio.to_thread(supervisor.tick)
        await asyncio.sleep(interval_s)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_path)
        app.state.engine = engine
        app.state.supervisor = Supervisor(settings, engine)
        with Session(engine) as session:  # temporary files of workers killed mid-write
            remove_leftover_temps(session, settings, lambda run: not app.state.supervisor.worker_gone(run))
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
    app.add_middleware(SecurityMiddleware, guard=Guard(
        bind_host=settings.host, port=settings.port, allowed_hosts=parse_hosts(settings.allowed_hosts),
        token=settings.token or None, csrf_token=app.state.csrf_token))
    app.add_exception_handler(StarletteHTTPException, html_error_page)
    app.add_exception_handler(StaleDataError, deleted_meanwhile)
    app.add_exception_handler(ObjectDeletedError, deleted_meanwhile)
    app.mount("/static", StaticFiles(directory=settings.static_dir), name="static")
    app.include_router(api.router)
    for module in (events, runlist, compare, config_yaml, new_run, pages, models, datasets, dataset_tools,
                   jobs, evaluations, evaluation_pages, reports):
        app.include_router(module.router)
    return app


async def deleted_meanwhile(request: Request, exc: Exception) -> Response:
    """What this request was changing was deleted by another request meanwhile: 404, as if it came a moment later."""
    gone = StarletteHTTPException(HTTPStatus.NOT_FOUND, "it was deleted by another request meanwhile")
    return await html_error_page(request, gone)


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


def ensure_defaults(settings: Settings) -> None:
    """Create the embedded model and sample data (in a worker process) if either is missing."""
    if (settings.default_model_dir / "config.json").exists() and (
        settings.default_dataset_dir / "train.jsonl"
    ).exists():
        return
    print("loraboard: creating the embedded default model and sample data (first start only)…", flush=True)
    result = subprocess.run([sys.executable, "-m", "worker", "defaults"], cwd=PROJECT_DIR,
                            env=worker_env(settings), check=False)
    if result.returncode != 0:
        raise SystemExit("loraboard: creating the default model failed (see the lines above)")


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="loraboard", description="Local dashboard for MLX LoRA runs.")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the dashboard (the default command)")
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1, or LORABOARD_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000, or LORABOARD_PORT)")
    serve.add_argument("--token", nargs="?", const="", default=None, metavar="TOKEN",
                       help="require this access token (alone: generate one); needed off loopback (LORABOARD_TOKEN)")
    serve.add_argument("--no-token", action="store_true", help="serve off loopback without an access token")
    sub.add_parser("defaults", help="create the embedded default model and sample data, then exit")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "defaults":
        ensure_defaults(settings)
        return
    overrides = {k: v for k, v in {"host": getattr(args, "host", None),
                                   "port": getattr(args, "port", None)}.items() if v is not None}
    settings = settings.model_copy(update=overrides)
    given, no_token = getattr(args, "token", None), bool(getattr(args, "no_token", False))
    token = settings.token if given is None else (given or secrets.token_urlsafe(24))
    addresses = [] if is_loopback(settings.host) else routable_addresses()
    try:
        token = token_for_bind(settings.host, token, no_token, addresses)
    except BindRefused as exc:
        raise SystemExit(str(exc)) from None
    settings = settings.model_copy(update={"token": token})
    ensure_defaults(settings)
    import uvicorn

    app = create_app(settings)
    stopping: threading.Event = app.state.stopping

    class StreamEndingServer(uvicorn.Server):
        """uvicorn waits for open connections before the lifespan ends: tell event streams to end first."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            stopping.set()
            super().handle_exit(sig, frame)

    print("\n".join(start_lines(settings.host, settings.port, token, no_token, addresses)), flush=True)
    StreamEndingServer(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                      timeout_graceful_shutdown=5)).run()
