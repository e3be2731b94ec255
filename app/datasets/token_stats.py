"""Token statistics of a dataset under a model's tokenizer: start the worker job, reuse its result, read it.

The tokenizing happens in `python -m worker tokenstats` (the app never imports mlx-lm or transformers).
A finished result is reused while the split files keep their size and modification time. The pure
functions at the top (histogram bins, mean/median/max, examples over max_seq_length, the heartbeat
rule) are what the pages and the API show.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from app.datasets.registry import files_signature
from app.datasets.validation import SPLITS
from app.jobs.supervisor import is_worker, log_tail, worker_env
from app.runs.config import looks_like_path, resolve_model
from app.runs.policy import eta_seconds, format_duration
from app.settings import PROJECT_DIR, Settings
from app.tables import TokenStatsJob, utcnow

TRAINING_SPLITS = ("train", "valid")  # what a run reads (test is for evaluation only)
ACTIVE = ("queued", "running")
HISTOGRAM_BINS = 40
LengthCounts = list[list[int]]  # [[length, count], ...] ascending, as the worker writes them


# Pure: what the numbers say -------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthSummary:
    examples: int
    total_tokens: int
    mean: float | None
    median: float | None
    longest: int | None
    max_seq_length: int
    over: int  # examples longer than max_seq_length (the trainer truncates them)

    @property
    def over_share(self) -> float:
        return self.over / self.examples if self.examples else 0.0


@dataclass(frozen=True)
class Histogram:
    """Equal-width bins over token lengths: bin i holds lengths in [edges[i], edges[i + 1])."""

    edges: list[int]
    counts: list[int]

    @property
    def width(self) -> int:
        return self.edges[1] - self.edges[0] if len(self.edges) > 1 else 1


def merge_counts(*parts: LengthCounts) -> LengthCounts:
    merged: dict[int, int] = {}
    for part in parts:
        for length, count in part:
            merged[length] = merged.get(length, 0) + count
    return [[length, merged[length]] for length in sorted(merged)]


def _nth_length(counts: LengthCounts, index: int) -> int:
    """The index-th (0-based) length in ascending order."""
    seen = 0
    for length, count in counts:
        seen += count
        if index < seen:
            return length
    raise IndexError(index)


def summarize(counts: LengthCounts, max_seq_length: int) -> LengthSummary:
    examples = sum(count for _, count in counts)
    total = sum(length * count for length, count in counts)
    if not examples:
        return LengthSummary(0, 0, None, None, None, max_seq_length, 0)
    middle = examples // 2
    median = float(_nth_length(counts, middle)) if examples % 2 else (
        _nth_length(counts, middle - 1) + _nth_length(counts, middle)) / 2
    over = sum(count for length, count in counts if length > max_seq_length)
    return LengthSummary(examples, total, total / examples, median, counts[-1][0], max_seq_length, over)


def nice_width(span: int, bins: int) -> int:
    """The smallest 1, 2 or 5 * 10^k that covers span in at most `bins` bins."""
    raw = max(1.0, span / bins)
    power = 10 ** math.floor(math.log10(raw))
    for step in (1, 2, 5, 10):
        if step * power >= raw:
            return int(step * power)
    return int(10 * power)


def histogram_bins(counts: LengthCounts, low: int, high: int, bins: int = HISTOGRAM_BINS) -> Histogram:
    """Bins of one nice width from below `low` to past `high` (share low/high across splits to compare them)."""
    if high < low:
        raise ValueError(f"histogram range is empty: {low}..{high}")
    width = nice_width(high - low + 1, bins)
    start = (low // width) * width
    size = high // width - start // width + 1
    totals = [0] * size
    for length, count in counts:
        if not low <= length <= high:
            raise ValueError(f"length {length} is outside the histogram range {low}..{high}")
        totals[(length - start) // width] += count
    return Histogram([start + i * width for i in range(size + 1)], totals)


def share_text(share: float) -> str:
    if 0 < share < 0.001:
        return "<0.1%"
    return f"{100 * share:.1f}%"


def over_text(summary: LengthSummary) -> str:
    """'24 of 1,500 = 1.6% over 2,048, longest 26,749'."""
    longest = f"{summary.longest:,}" if summary.longest is not None else "—"
    return (f"{summary.over:,} of {summary.examples:,} = {share_text(summary.over_share)} over "
            f"{summary.max_seq_length:,}, longest {longest}")


def job_is_dead(status: str, process_alive: bool, heartbeat_age_s: float | None, timeout_s: float) -> bool:
    """An active job whose worker is gone, or that has been silent longer than the heartbeat timeout."""
    if status not in ACTIVE:
        return False
    return not process_alive or (heartbeat_age_s is not None and heartbeat_age_s > timeout_s)


# Inputs ----------------------------------------------------------------------------------------------


class TokenStatsInputError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def resolve_inputs(settings: Settings, data: str, model: str) -> tuple[Path, str]:
    """(absolute data folder, model folder or hub id), defaults filled in as for a run; clear errors."""
    folder = Path(data.strip() or settings.default_dataset_dir).expanduser().resolve()
    model = resolve_model(model.strip() or str(settings.default_model_dir))
    if not folder.is_dir():
        raise TokenStatsInputError("data", f"data folder {folder} does not exist")
    if not (folder / "train.jsonl").is_file():
        raise TokenStatsInputError("data", f"data folder {folder} has no train.jsonl")
    if looks_like_path(model):
        model_dir = Path(model)
        if not model_dir.is_dir():
            raise TokenStatsInputError("model", f"model folder {model_dir} does not exist")
        if not (model_dir / "config.json").is_file():
            raise TokenStatsInputError("model", f"{model_dir} is not a model folder: it has no config.json")
    return folder, model


# Jobs ------------------------------------------------------------------------------------------------


def is_token_stats_process(pid: int, job_id: int) -> bool:
    """Whether pid is still the worker of this job (not a zombie, not a reused pid) where /proc exists."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child and has ended
    return is_worker(pid, "tokenstats", job_id)


def check_job(session: Session, settings: Settings, job: TokenStatsJob) -> TokenStatsJob:
    """Apply the heartbeat rule: an active job whose worker died (or went silent) is marked failed."""
    if job.status not in ACTIVE or job.id is None:
        return job
    alive = job.pid is not None and is_token_stats_process(job.pid, job.id)
    age = (utcnow() - job.heartbeat_at).total_seconds() if job.heartbeat_at else None
    if not job_is_dead(job.status, alive, age, settings.heartbeat_timeout_s):
        return job
    session.refresh(job)  # the worker may have written its end just now
    if job.status not in ACTIVE:
        return job
    if alive and job.pid is not None:  # silent but running: stop it
        with contextlib.suppress(ProcessLookupError):
            os.kill(job.pid, signal.SIGTERM)
    job.status = "failed"
    job.finished_at = utcnow()
    job.error = ("the token statistics worker stopped reporting" if alive
                 else "the token statistics worker ended without reporting")
    job.traceback = log_tail(job.log_path) or None
    session.add(job)
    session.commit()
    return job


def jobs_dir(settings: Settings) -> Path:
    return settings.database_path.parent / "jobs"


def spawn(session: Session, settings: Settings, job: TokenStatsJob) -> None:
    """Start `python -m worker tokenstats` in its own session, as the supervisor starts training workers."""
    assert job.id is not None
    folder = jobs_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"tokenstats-{job.id}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "tokenstats", "--job-id", str(job.id)],
            cwd=PROJECT_DIR, env=worker_env(settings), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    job.pid = process.pid
    job.heartbeat_at = utcnow()
    job.log_path = str(log_path)
    session.add(job)
    session.commit()


def latest_job(session: Session, settings: Settings, folder: Path, model: str) -> TokenStatsJob | None:
    """The newest job for these files (unchanged since) and this model, checked for a dead worker."""
    job = session.exec(
        select(TokenStatsJob)
        .where(TokenStatsJob.dataset_path == str(folder), TokenStatsJob.model == model,
               TokenStatsJob.files_signature == files_signature(folder))
        .order_by(col(TokenStatsJob.id).desc()).limit(1)
    ).first()
    return check_job(session, settings, job) if job is not None else None


def start_job(session: Session, settings: Settings, folder: Path, model: str) -> tuple[TokenStatsJob, bool]:
    """(job, created): the running or finished job for these files and model, else a new one (a failed
    one is tried again)."""
    job = latest_job(session, settings, folder, model)
    if job is not None and job.status != "failed":
        return job, False
    job = TokenStatsJob(dataset_path=str(folder), model=model, files_signature=files_signature(folder))
    session.add(job)
    session.commit()
    session.refresh(job)
    spawn(session, settings, job)
    return job, True


def job_or_start(session: Session, settings: Settings, folder: Path, model: str) -> TokenStatsJob:
    """What a page shows: the latest job (a failed one stays, with its error), or a new one."""
    job = latest_job(session, settings, folder, model)
    return job if job is not None else start_job(session, settings, folder, model)[0]


# What pages and the API show -------------------------------------------------------------------------


def split_counts(job: TokenStatsJob) -> dict[str, LengthCounts]:
    if not job.result_json:
        return {}
    splits = json.loads(job.result_json)["splits"]
    return {name: splits[name]["lengths"] for name in SPLITS if name in splits}


def progress(job: TokenStatsJob) -> dict[str, Any]:
    end = job.finished_at or utcnow()
    elapsed = (end - job.started_at).total_seconds() if job.started_at else 0.0
    eta = eta_seconds(job.done, job.total, elapsed) if job.status in ACTIVE and job.total else None
    return {"done": job.done, "total": job.total, "percent": 100.0 * job.done / job.total if job.total else 0.0,
            "elapsed_s": elapsed, "eta_s": eta, "elapsed": format_duration(elapsed if job.started_at else None),
            "eta": format_duration(eta)}


def bin_label(low: int, width: int) -> str:
    return f"{low:,}" if width == 1 else f"{low:,} to {low + width - 1:,}"


def histograms(counts: dict[str, LengthCounts], max_seq_length: int) -> dict[str, dict[str, Any]]:
    """Per split, bar-trace data for Plotly (bins shared across splits) and the max_seq_length line."""
    lengths = [length for split in counts.values() for length, _ in split]
    if not lengths:
        return {}
    low, high = min(lengths), max(lengths)
    result = {}
    for name, split in counts.items():
        hist = histogram_bins(split, low, high)
        result[name] = {
            "x": [lo + hist.width / 2 for lo in hist.edges[:-1]], "y": hist.counts, "width": hist.width,
            "edges": hist.edges, "max_seq_length": max_seq_length,
            "text": [f"{bin_label(lo, hist.width)} tokens: {n:,} example{'' if n == 1 else 's'}"
                     for lo, n in zip(hist.edges, hist.counts, strict=False)],
        }
    return result


def summary_json(summary: LengthSummary) -> dict[str, Any]:
    return {"examples": summary.examples, "total_tokens": summary.total_tokens, "mean": summary.mean,
            "median": summary.median, "max": summary.longest, "max_seq_length": summary.max_seq_length,
            "over_max_seq_length": summary.over, "over_share": summary.over_share, "text": over_text(summary)}


def job_json(job: TokenStatsJob, max_seq_length: int) -> dict[str, Any]:
    counts = split_counts(job)
    answer: dict[str, Any] = {
        "id": job.id, "data": job.dataset_path, "model": job.model, "status": job.status,
        "progress": {k: v for k, v in progress(job).items() if k in ("done", "total", "percent", "eta_s")},
        "error": job.error, "created_at": job.created_at.isoformat() if job.created_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None, "summary": None,
    }
    if counts:
        hists = histograms(counts, max_seq_length)
        answer["summary"] = {
            "all": summary_json(summarize(merge_counts(*counts.values()), max_seq_length)),
            "splits": {name: {**summary_json(summarize(split, max_seq_length)), "lengths": split,
                              "histogram": {"edges": hists[name]["edges"], "counts": hists[name]["y"]}}
                       for name, split in counts.items()},
        }
    return answer


def view(job: TokenStatsJob, max_seq_length: int, splits: tuple[str, ...] = SPLITS) -> dict[str, Any]:
    """Template context: progress while running; per-split summaries, histograms and the over-length line."""
    counts = {name: split for name, split in split_counts(job).items() if name in splits}
    summaries = {name: summarize(split, max_seq_length) for name, split in counts.items()}
    overall = summarize(merge_counts(*counts.values()), max_seq_length) if counts else None
    return {
        "job": job, "active": job.status in ACTIVE, "progress": progress(job), "max_seq_length": max_seq_length,
        "splits": [{"name": name, "summary": summaries[name], "over_text": over_text(summaries[name])}
                   for name in counts],
        "overall": overall, "overall_text": over_text(overall) if overall else "",
        "histograms": histograms(counts, max_seq_length),
    }
