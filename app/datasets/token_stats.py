"""Token statistics of a dataset under a model's tokenizer: the `token_stats` job kind, its reuse, its view.

The tokenizing happens in the worker (`python -m worker job`, worker/token_stats.py: the app never
imports mlx-lm or transformers). A finished result is reused while the split files keep their size and
modification time (the job's key holds the folder, the model and the files' signature). The pure
functions at the top (histogram bins, mean/median/max, examples over max_seq_length) are what the
pages and the API show.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, select

from app.catalog.hub import hub_model_problem
from app.contract.kinds import TOKEN_STATS, TokenStatsParams
from app.contract.paths import (
    DATA_DIRS_SETTING,
    MODEL_DIRS_SETTING,
    PathNotAllowed,
    confine,
    confine_data_files,
    data_roots,
    model_roots,
)
from app.contract.run_config import looks_like_path
from app.contract.settings import Settings
from app.contract.status import RunStatus
from app.datasets.registry import files_signature
from app.datasets.validation import SPLITS
from app.jobs.job_view import JobView
from app.jobs.jobs import LIVE, create_job, latest_job, lookup_key, progress_view
from app.tables import Dataset, Job

if TYPE_CHECKING:
    from app.jobs.supervisor import Supervisor

KIND = TOKEN_STATS.name
UNIT = "examples"
TRAINING_SPLITS = ("train", "valid")  # what a run reads (test is for evaluation only)
NO_RESULT = (RunStatus.failed.value, RunStatus.stopped.value, RunStatus.interrupted.value)  # try again
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


# Inputs ----------------------------------------------------------------------------------------------


class TokenStatsInputError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def resolve_inputs(settings: Settings, data: str, model: str) -> tuple[Path, str]:
    """(absolute data folder, model folder or hub id), defaults filled in as for a run; clear errors."""
    try:
        folder = confine(data.strip() or settings.default_dataset_dir, data_roots(settings), "data folder",
                         DATA_DIRS_SETTING)
    except PathNotAllowed as exc:
        raise TokenStatsInputError("data", str(exc)) from None
    model = model.strip() or str(settings.default_model_dir)
    if looks_like_path(model):
        try:
            model = str(confine(model, model_roots(settings), "model folder", MODEL_DIRS_SETTING))
        except PathNotAllowed as exc:
            raise TokenStatsInputError("model", str(exc)) from None
    if not folder.is_dir():
        raise TokenStatsInputError("data", f"data folder {folder} does not exist")
    try:  # the worker reads the files: one linking out is refused here first (and there again)
        confine_data_files(folder, settings)
    except PathNotAllowed as exc:
        raise TokenStatsInputError("data", str(exc)) from None
    if not (folder / "train.jsonl").is_file():
        raise TokenStatsInputError("data", f"data folder {folder} has no train.jsonl")
    if looks_like_path(model):
        model_dir = Path(model)
        if not model_dir.is_dir():
            raise TokenStatsInputError("model", f"model folder {model_dir} does not exist")
        if not (model_dir / "config.json").is_file():
            raise TokenStatsInputError("model", f"{model_dir} is not a model folder: it has no config.json")
    elif (problem := hub_model_problem(model, settings)) is not None:  # the form's own sentence, not the hub's
        raise TokenStatsInputError("model", problem)
    return folder, model


# The job kind ------------------------------------------------------------------------------------------


def job_key(folder: Path, model: str, signature: str) -> str:
    return lookup_key(str(folder), model, signature)


def latest_stats(session: Session, settings: Settings, folder: Path, model: str) -> Job | None:
    """The newest job for these files (unchanged since) and this model, checked for a dead worker."""
    return latest_job(session, settings, KIND, job_key(folder, model, files_signature(folder)))


def start_job(
    session: Session, settings: Settings, supervisor: Supervisor, folder: Path, model: str
) -> tuple[Job, bool]:
    """(job, created): the live or finished job for these files and model, else a new one, started at once
    (a failed, stopped or interrupted one is tried again)."""
    job = latest_stats(session, settings, folder, model)
    if job is not None and job.status not in NO_RESULT:
        return job, False
    signature = files_signature(folder)
    params = TokenStatsParams(data=str(folder), model=model, files_signature=signature)
    job = create_job(session, KIND, params, key=job_key(folder, model, signature), unit=UNIT)
    supervisor.start_queued_now(session)
    session.refresh(job)
    return job, True


def job_or_start(
    session: Session, settings: Settings, supervisor: Supervisor, folder: Path, model: str
) -> Job:
    """What a page shows: the latest job (a failed or stopped one stays, with its error), or a new one."""
    job = latest_stats(session, settings, folder, model)
    return job if job is not None else start_job(session, settings, supervisor, folder, model)[0]


def result_summary(job: Job) -> str:
    """The result in one line, for the jobs list."""
    counts = split_counts(job)
    if not counts:
        return ""
    overall = summarize(merge_counts(*counts.values()), 1)
    return f"{overall.examples:,} examples, {overall.total_tokens:,} tokens, longest {overall.longest:,}"


def subject(session: Session, job: Job) -> tuple[str, str | None]:
    """(words, link) of what the job concerns: the registered dataset's page, else the folder."""
    folder = str(job.params.get("data", ""))
    dataset = session.exec(select(Dataset).where(Dataset.path == folder)).first()
    if dataset is not None:
        return f"dataset {dataset.name}", f"/datasets/{dataset.id}"
    return folder, None


JOB_VIEW = JobView(TOKEN_STATS, summary=result_summary, subject=subject)


# What pages and the API show -------------------------------------------------------------------------


def split_counts(job: Job) -> dict[str, LengthCounts]:
    if not job.result_json or job.status != RunStatus.completed.value:
        return {}
    splits = json.loads(job.result_json)["splits"]
    return {name: splits[name]["lengths"] for name in SPLITS if name in splits}


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


def job_json(job: Job, max_seq_length: int) -> dict[str, Any]:
    counts = split_counts(job)
    params = job.params
    answer: dict[str, Any] = {
        "id": job.id, "data": params.get("data"), "model": params.get("model"), "status": job.status,
        "progress": {k: v for k, v in progress_view(job).items() if k in ("done", "total", "percent", "eta_s")},
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


def view(job: Job, max_seq_length: int, splits: tuple[str, ...] = SPLITS) -> dict[str, Any]:
    """Template context: progress while running; per-split summaries, histograms and the over-length line."""
    counts = {name: split for name, split in split_counts(job).items() if name in splits}
    summaries = {name: summarize(split, max_seq_length) for name, split in counts.items()}
    overall = summarize(merge_counts(*counts.values()), max_seq_length) if counts else None
    progress = progress_view(job)
    return {
        "job": job, "model": job.params.get("model", ""), "active": job.status in LIVE,
        "no_result": job.status in NO_RESULT, "progress": progress, "max_seq_length": max_seq_length,
        "item": {"job": job, "progress": progress, "info": None, "live": job.status in LIVE},
        "splits": [{"name": name, "summary": summaries[name], "over_text": over_text(summaries[name])}
                   for name in counts],
        "overall": overall, "overall_text": over_text(overall) if overall else "",
        "histograms": histograms(counts, max_seq_length),
    }
