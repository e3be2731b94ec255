"""Pure: the report's wording, from a run's facts (app/reports/facts.py) to sections (app/reports/blocks.py).

The sections follow a hand-written training summary: configuration, dataset, hyperparameters, validation and
training loss tables, performance, the stop decision, checkpoints, evaluation, usage and the loss chart.
A number that is missing reads "—" and a sentence says why.
"""

from __future__ import annotations

import json
import math
from typing import Any

from app.contract.status import RunStatus
from app.datasets.token_stats import over_text
from app.reports.blocks import DASH, Block, Chart, FactList, Mono, Para, Report, Section, Strong, Text, text
from app.reports.facts import RunFacts
from app.reports.results import (
    checkpoint_marks,
    checkpoint_section,
    evaluation_section,
    performance_section,
    stop_section,
    training_section,
    usage_section,
    validation_section,
)
from app.reports.svg import ChartMark, loss_chart_svg
from app.tables import Checkpoint
from app.templating import number

METHODS = {"lora": "LoRA (low-rank adaptation)", "dora": "DoRA (weight-decomposed low-rank adaptation)",
           "full": "full fine-tuning (every weight of the trained layers)"}


def when(facts: RunFacts, which: str) -> str:
    value = getattr(facts.run, which)
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else DASH


def status_words(facts: RunFacts) -> str:
    run = facts.run
    done = f"iteration {run.iteration:,} of {run.total_iters:,}"
    return {
        RunStatus.completed.value: f"completed ({run.total_iters:,} iterations)",
        RunStatus.early_stopped.value: f"early stopped at {done}",
        RunStatus.stopped.value: f"stopped at {done}",
        RunStatus.failed.value: f"failed at {done}",
        RunStatus.interrupted.value: f"interrupted at {done}",
    }.get(run.status, f"{run.status} ({done}); the numbers below are those so far")


def millions(count: int) -> str:
    return f"{count / 1e6:,.3f}M"


def params_text(trainable: int | None, total: int | None) -> str:
    if trainable is None or total is None or total <= 0:
        return f"{DASH} (counted when training starts)"
    return f"{100 * trainable / total:.3f}% ({millions(trainable)} / {millions(total)})"


def memory_text(size: int | None) -> str:
    return f"{size / 2**30:.1f} GB" if size else DASH


def named_checkpoints(facts: RunFacts) -> list[tuple[str, Checkpoint]]:
    """The checkpoints the header names, each once under its first role: the best by validation loss, the one marked
    for deployment, the recommended one (they may be one, two or three checkpoints)."""
    recommended = facts.truth.verdict.recommended
    roles = [(f"{facts.truth.verdict.best_label.capitalize()} checkpoint", facts.best),
             ("Deployment", next((c for c in facts.checkpoints if c.is_deployment), None)),
             ("Recommended", next((c for c in facts.checkpoints if c.iteration == recommended), None))]
    named: list[tuple[str, Checkpoint]] = []
    for title, checkpoint in roles:
        if checkpoint is not None and all(checkpoint.id != other.id for _, other in named):
            named.append((title, checkpoint))
    return named


def header(facts: RunFacts) -> list[tuple[str, Text]]:
    run = facts.run
    lines: list[tuple[str, Text]] = [
        ("Run", text(f"#{run.id} ", Strong(run.name))),
        ("Date", text(when(facts, "started_at"))),
        ("Status", text(status_words(facts))),
    ]
    for title, checkpoint in named_checkpoints(facts):
        lines.append((title, text(Mono(f"{facts.folder}/{checkpoint.filename}"),
                                  f" (iteration {checkpoint.iteration:,}: {checkpoint_marks(facts, checkpoint)})")))
    if run.notes.strip():
        lines.append(("Notes", text(run.notes.strip())))
    return lines


def summary_section(facts: RunFacts) -> Section:
    summary = facts.summary
    model = str(facts.config.get("model", ""))
    method = str(facts.config.get("fine_tune_type", "lora"))
    sentences: list[Block] = [Para(text(
        "Fine-tuned ", Mono(model), f" with {METHODS.get(method, method)} on ", Mono(facts.dataset.path),
        f": {status_words(facts)}."))]
    if summary["best_val_loss"] is not None and summary["improvement_pct"] is not None:
        sentences.append(Para(text(
            f"The lowest validation loss, {summary['best_val_loss']:.3f} at iteration "
            f"{summary['best_val_iteration']:,}, is {summary['improvement_pct']:.1f}% below the first validation "
            f"({summary['first_val_loss']:.3f} at iteration {summary['first_val_iteration']:,}).")))
    else:
        sentences.append(Para(text("No validation loss has been reported yet.")))
    if facts.run.error:
        sentences.append(Para(text("Error: ", facts.run.error)))
    return Section("summary", "Summary", sentences)


def hardware_items(facts: RunFacts) -> list[tuple[str, Text]]:
    hw = facts.hardware
    if hw is None:
        return [("Hardware", text(f"{DASH} (not recorded: recorded when training starts)"))]
    cpu = str(hw.get("cpu") or DASH) + (f" ({hw['cpu_count']} cores)" if hw.get("cpu_count") else "")
    versions = ", ".join(f"{name} {hw[key]}" for name, key in (("mlx", "mlx"), ("mlx-lm", "mlx_lm")) if hw.get(key))
    return [
        ("CPU", text(cpu)),
        ("GPU", text(str(hw["gpu"]) if hw.get("gpu") else f"none (MLX computed on the {hw.get('device', 'cpu')})")),
        ("Memory", text(memory_text(hw.get("memory_bytes")))),
        ("OS", text(str(hw.get("os") or DASH))),
        ("Software", text(versions or DASH, f", Python {hw['python']}" if hw.get("python") else "")),
    ]


def configuration_section(facts: RunFacts) -> Section:
    run, summary = facts.run, facts.summary
    method = str(facts.config.get("fine_tune_type", "lora"))
    peak = summary["peak_memory"]
    model_items: list[tuple[str, Text]] = [
        ("Base model", text(Mono(str(facts.config.get("model", ""))))),
        ("Method", text(METHODS.get(method, method))),
        ("Trainable parameters", text(params_text(run.trainable_params, run.total_params))),
        ("Precision", text(run.train_dtype or f"{DASH} (recorded when training starts)")),
        ("Backend", text(run.backend or f"{DASH} (recorded when training starts)")),
    ]
    machine: list[tuple[str, Text]] = [
        *hardware_items(facts),
        ("Peak memory", text(f"{peak:.3f} GB (MLX peak)" if peak is not None else DASH)),
        ("Training time", text(f"{summary['wall_time']} ({when(facts, 'started_at')} to "
                               f"{when(facts, 'finished_at') if run.finished_at else 'now'})")),
    ]
    return Section("configuration", "Configuration", [
        Para(text(Strong("Model"))), FactList(model_items), Para(text(Strong("Hardware"))), FactList(machine)])


def dataset_section(facts: RunFacts) -> Section:
    data = facts.dataset
    counts = ", ".join(f"{split} {count:,}" for split, count in data.counts.items())
    items: list[tuple[str, Text]] = [
        ("Folder", text(Mono(data.path), f" (registered as {data.name})" if data.name else "")),
        ("Format", text(data.format or f"{DASH} (the first training line was not read)")),
        ("Examples", text(counts or f"{DASH} (the folder is gone)")),
    ]
    tokens = facts.tokens
    blocks: list[Block] = []
    if tokens.state == "done" and tokens.overall is not None:
        for split, summary in tokens.splits.items():
            mean = f"{summary.mean:,.1f}" if summary.mean is not None else DASH
            items.append((f"Tokens ({split})", text(f"mean {mean}, max {number(summary.longest)}, "
                                                    f"{summary.total_tokens:,} in all")))
        items.append(("Truncated by max_seq_length", text(over_text(tokens.overall))))
    elif tokens.state == "computing":
        blocks.append(Para(text(f"Token statistics are being computed (job #{tokens.job_id}); reload the report "
                                "for token lengths and the truncated examples.")))
    elif tokens.state == "uncounted":
        blocks.append(Para(text("Token statistics have not been counted for this data and model yet (Count tokens "
                                "on the report page starts them).")))
    else:
        blocks.append(Para(text("Token statistics are not available: ", tokens.error or "no job could be started",
                                ".")))
    return Section("dataset", "Dataset", [FactList(items), *blocks])


def _schedule(config: dict[str, Any]) -> str:
    rate = f"{float(config.get('learning_rate', 0)):g}"
    schedule = config.get("lr_schedule")
    if not schedule:
        return f"{rate} (constant)"
    args = ", ".join(f"{a:g}" for a in schedule.get("arguments", []))
    warm = f", {schedule['warmup']:,} warm-up steps" if schedule.get("warmup") else ""
    return f"{schedule['name']}({args}){warm}"


def hyperparameters_section(facts: RunFacts) -> Section:
    config, run = facts.config, facts.run
    lora = config.get("lora_parameters") or {}
    rule = config.get("early_stopping")
    live = run.early_stopping_json
    val_batches = int(config.get("val_batches", 0))
    items: list[tuple[str, Text]] = [
        ("Iterations", text(f"{run.iteration:,} of {int(config.get('iters', 0)):,} planned")),
        ("Batch size", text(f"{config.get('batch_size')}" + (
            f" (gradient accumulation {config['grad_accumulation_steps']})"
            if int(config.get("grad_accumulation_steps", 1)) > 1 else ""))),
        ("Learning rate", text(_schedule(config))),
        ("Optimizer", text(str(config.get("optimizer", "adam")))),
        ("Layers trained", text(str(config.get("num_layers")))),
    ]
    if config.get("fine_tune_type", "lora") != "full":
        lora_text = f"rank {lora.get('rank')}, scale {lora.get('scale')}, dropout {lora.get('dropout')}"
        items.append(("LoRA", text(lora_text)))
    items += [
        ("Max sequence length", text(f"{int(config.get('max_seq_length', 0)):,} tokens")),
        ("Batches", text(f"grouped by {_grouping(config)}, padding {config.get('batch_padding', 'mlx_lm')}")),
        ("Evaluation frequency", text(f"every {int(config.get('steps_per_eval', 0)):,} iterations")),
        ("Checkpoint frequency", text(f"every {int(config.get('save_every', 0)):,} iterations")),
        ("Validation batches", text("all (the whole validation set)" if val_batches < 0 else str(val_batches))),
        ("Early stopping", text(_rule_text(live, rule))),
        ("Prompt masking", text("on (loss on completions only)" if config.get("mask_prompt") else "off")),
        ("Seed", text(str(config.get("seed", 0)))),
    ]
    return Section("hyperparameters", "Hyperparameters", [FactList(items)])


def _grouping(config: dict[str, Any]) -> str:
    """How the run cut its training set into batches, in words (a run from before the option kept file order)."""
    grouping = str(config.get("batch_grouping", "file_order"))
    return "token length" if grouping == "length" else "file order (mlx-lm's)"


def _rule_text(live: str | None, configured: dict[str, Any] | None) -> str:
    rule = json.loads(live) if live else configured
    if not rule:
        return "off"
    return (f"patience {rule['patience']} evaluations, min_delta {rule['min_delta']:g} "
            "(stop when that many evaluations in a row do not improve on the best by at least min_delta)")


def build_report(facts: RunFacts) -> Report:
    sections = [
        summary_section(facts), configuration_section(facts), dataset_section(facts),
        hyperparameters_section(facts), validation_section(facts), training_section(facts),
        Section("loss-chart", "Loss chart", [Chart()]), performance_section(facts), stop_section(facts),
        checkpoint_section(facts), evaluation_section(facts), usage_section(facts),
    ]
    footer = text(f"Written by loraboard on {facts.generated_at:%Y-%m-%d %H:%M} UTC from run #{facts.run.id}'s "
                  "recorded reports.")
    return Report(f"Training report: {facts.run.name}", header(facts), sections, footer)


def chart_marks(facts: RunFacts) -> list[ChartMark]:
    best_id = facts.best.id if facts.best is not None else None
    return [ChartMark(c.iteration, c.val_loss, c.id == best_id, c.is_deployment) for c in facts.checkpoints]


def early_stop_at(facts: RunFacts) -> int | None:
    return facts.run.iteration if facts.run.status == RunStatus.early_stopped.value else None


def chart_svg(facts: RunFacts) -> str:
    """The loss chart of the Markdown report and of report.svg."""
    train = [(p["iteration"], p["train_loss"]) for p in facts.train]
    return loss_chart_svg(train, facts.val, chart_marks(facts), facts.spans, early_stop_at(facts))


def _number_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def chart_data(facts: RunFacts) -> dict[str, Any]:
    """What the HTML report's interactive chart draws (inlined in the page as JSON: nothing is fetched)."""
    marks = [m for m in chart_marks(facts) if _number_or_none(m.val_loss) is not None]
    return {
        "train": {"x": [p["iteration"] for p in facts.train],
                  "y": [_number_or_none(p["train_loss"]) for p in facts.train]},
        "val": {"x": [it for it, _ in facts.val], "y": [_number_or_none(loss) for _, loss in facts.val]},
        "checkpoints": {"x": [m.iteration for m in marks if not m.is_best],
                        "y": [m.val_loss for m in marks if not m.is_best]},
        "best": next(({"x": m.iteration, "y": m.val_loss} for m in marks if m.is_best), None),
        "best_label": facts.truth.verdict.best_label,
        "spans": [list(span) for span in facts.spans],
        "early_stop": early_stop_at(facts),
    }
