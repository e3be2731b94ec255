"""Pure: the report's result sections (loss tables, performance, the stop decision, checkpoints, evaluation,
usage), from a run's facts."""

from __future__ import annotations

from app.contract.status import RunStatus
from app.reports.blocks import DASH, Block, Command, FactList, Mono, Para, Section, Table, Text, text
from app.reports.facts import RunFacts
from app.reports.labels import LEGEND, sample_rows
from app.runs.store.checkpoints import improvement
from app.tables import Checkpoint
from app.templating import human_bytes

TRAIN_ROWS = 15  # the training loss table shows at most this many reports


def loss_text(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else DASH


def gain_text(first: float | None, value: float | None) -> str:
    gain = improvement(first, value)
    return f"{100 * gain:.1f}%" if gain is not None else DASH


def listing(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def tokens_text(count: int | None) -> str:
    if count is None:
        return DASH
    return f"{count / 1e6:.2f}M" if count >= 1_000_000 else f"{count:,}"


def validation_section(facts: RunFacts) -> Section:
    if not facts.val:
        return Section("validation", "Validation loss", [Para(text("No validation loss has been reported yet."))])
    first = facts.val[0][1]
    deployment = {c.iteration for c in facts.checkpoints if c.is_deployment}
    rows: list[list[Text]] = []
    strong: list[bool] = []
    for index, ((iteration, loss), status) in enumerate(zip(facts.val, facts.statuses, strict=True)):
        label = f"{iteration:,}" + (" (baseline)" if index == 0 else "")
        words = status + (" · deployment" if iteration in deployment else "")
        rows.append([text(label), text(loss_text(loss)), text(gain_text(first, loss) if index else "0%"),
                     text(words)])
        strong.append(status.startswith("best"))
    last = facts.val[-1][0]
    if facts.run.is_terminal and facts.run.iteration > last:
        rows.append([text(f"{facts.run.iteration:,} ({facts.run.status.replace('_', ' ')})"), text(DASH),
                     text(DASH), text("training ended")])
        strong.append(False)
    table = Table("validation", ["Iteration", "Val loss", "Improvement", "Status"], rows, strong)
    return Section("validation", "Validation loss", [
        table, Para(text("Improvement: below the first validation. Status: ", LEGEND))])


def training_section(facts: RunFacts) -> Section:
    if not facts.train:
        return Section("training", "Training loss", [Para(text("No training loss has been reported yet."))])
    first = facts.val[0][1] if facts.val else None
    shown = sample_rows(facts.train, TRAIN_ROWS)
    rows = [[text(f"{p['iteration']:,}"), text(loss_text(p["train_loss"])), text(gain_text(first, p["train_loss"])),
             text(tokens_text(p["trained_tokens"]))] for p in shown]
    note = (f"{len(shown)} of {len(facts.train):,} reports, evenly spread (the first and the last kept)."
            if len(shown) < len(facts.train) else f"All {len(facts.train):,} reports.")
    return Section("training", "Training loss", [
        Table("training", ["Iteration", "Train loss", "Improvement", "Tokens seen"], rows),
        Para(text(note, " Improvement: below the first validation loss." if first is not None else ""))])


def performance_section(facts: RunFacts) -> Section:
    s = facts.summary
    items: list[tuple[str, Text]] = [
        ("Average speed", text(f"{s['avg_iterations_per_second']:.3f} it/s"
                               if s["avg_iterations_per_second"] is not None else DASH)),
        ("Average throughput", text(f"{s['avg_tokens_per_second']:,.0f} tokens/s"
                                    if s["avg_tokens_per_second"] is not None else DASH)),
        ("Useful tokens", text(f"{100 * s['useful_token_share']:.0f}% of the positions computed (the rest is padding)"
                               if s.get("useful_token_share") is not None else DASH)),
        ("Total tokens trained", text(f"{s['total_tokens']:,}" if s["total_tokens"] is not None else DASH)),
        ("Wall time", text(s["wall_time"])),
        ("Peak memory", text(f"{s['peak_memory']:.3f} GB" if s["peak_memory"] is not None else DASH)),
    ]
    return Section("performance", "Performance", [FactList(items)])


def _why_stopped(facts: RunFacts) -> str:
    run = facts.run
    reason = run.stop_reason or ""
    if run.status == RunStatus.completed.value:
        return f"Training completed all {run.total_iters:,} planned iterations."
    if run.status == RunStatus.early_stopped.value:
        return f"Training stopped early at iteration {run.iteration:,} of {run.total_iters:,}: {reason}."
    if run.status == RunStatus.stopped.value:
        return f"Training was stopped at iteration {run.iteration:,} of {run.total_iters:,}: {reason or 'on request'}."
    if run.status == RunStatus.failed.value:
        return f"Training failed at iteration {run.iteration:,}: {run.error or 'no error was recorded'}."
    if run.status == RunStatus.interrupted.value:
        return f"Training was interrupted at iteration {run.iteration:,} (its worker ended without finishing)."
    return f"Training has not ended: iteration {run.iteration:,} of {run.total_iters:,} ({run.status})."


def _overfitting_words(facts: RunFacts) -> str | None:
    if not facts.spans:
        return None
    start, end = facts.spans[-1]
    val = dict(facts.val)
    train_at = {}
    for point in facts.train:
        for it in (start, end):
            if point["iteration"] <= it:
                train_at[it] = point["train_loss"]
    if start not in train_at or end not in train_at:
        return None
    return (f"Validation loss rose from {val[start]:.3f} (iteration {start:,}) to {val[end]:.3f} (iteration {end:,}) "
            f"while training loss fell ({train_at[start]:.3f} → {train_at[end]:.3f}): the model began to fit the "
            "training examples rather than the task.")


def _best_words(facts: RunFacts) -> list[Text]:
    best, verdict = facts.best, facts.truth.verdict
    if best is None or best.val_loss is None:
        return [text("No checkpoint has a validation loss yet, so none is called best.")]
    words = [text(f"The {verdict.best_label} checkpoint is iteration {best.iteration:,} (", Mono(best.filename),
                  f"): the lowest validation loss of the saved checkpoints, {best.val_loss:.3f}.")]
    tied = [c for c in facts.checkpoints if c.val_loss == best.val_loss]
    if len(tied) > 1:
        seen = ""
        earlier = tied[-2]
        if best.trained_tokens is not None and earlier.trained_tokens is not None:
            seen = f": {tokens_text(best.trained_tokens)} vs {tokens_text(earlier.trained_tokens)} tokens"
        words.append(text(f"Iterations {listing([f'{c.iteration:,}' for c in tied])} tie at {best.val_loss:.3f}; "
                          f"the later is kept (more training data seen at the same loss{seen})."))
    if verdict.warning:
        words.append(text(verdict.warning[0].upper() + verdict.warning[1:] + "."))
    if verdict.reason:
        words.append(text("Recommended: " + verdict.reason + "."))
    if verdict.disagreement:
        words.append(text(verdict.disagreement[0].upper() + verdict.disagreement[1:] + "."))
    deployment = next((c for c in facts.checkpoints if c.is_deployment), None)
    if deployment is not None:
        words.append(text(f"Iteration {deployment.iteration:,} is marked for deployment."))
    return words


def stop_section(facts: RunFacts) -> Section:
    blocks: list[Block] = [Para(text(_why_stopped(facts)))]
    overfit = _overfitting_words(facts)
    if overfit:
        blocks.append(Para(text(overfit)))
    blocks += [Para(words) for words in _best_words(facts)]
    return Section("decision", "Stop decision", blocks)


def checkpoint_marks(facts: RunFacts, checkpoint: Checkpoint) -> str:
    """A checkpoint's roles as the checkpoint table writes them: best (or least bad), deployment, recommended."""
    return _markers(facts, checkpoint.iteration, facts.best is not None and facts.best.id == checkpoint.id,
                    checkpoint.is_deployment)


def _markers(facts: RunFacts, iteration: int, is_best: bool, is_deployment: bool) -> str:
    verdict = facts.truth.verdict
    marks = []
    if is_best:
        marks.append(verdict.best_label)
    if is_deployment:
        marks.append("deployment")
    if verdict.recommended == iteration:
        marks.append("recommended")
    return ", ".join(marks)


def checkpoint_section(facts: RunFacts) -> Section:
    if not facts.checkpoints:
        return Section("checkpoints", "Checkpoints", [Para(text("No checkpoint has been saved yet."))])
    first = facts.val[0][1] if facts.val else None
    rows: list[list[Text]] = []
    strong: list[bool] = []
    for c in facts.checkpoints:
        is_best = facts.best is not None and facts.best.id == c.id
        marks = _markers(facts, c.iteration, is_best, c.is_deployment)
        notes = "; ".join(part for part in (marks, c.note) if part)
        rows.append([text(Mono(c.filename)), text(human_bytes(c.size_bytes)), text(f"{c.iteration:,}"),
                     text(loss_text(c.val_loss)), text(gain_text(first, c.val_loss)), text(loss_text(c.train_loss)),
                     text(notes or DASH)])
        strong.append(is_best or c.is_deployment)
    return Section("checkpoints", "Checkpoints", [
        Para(text("All checkpoints are stored in ", Mono(facts.folder), ".")),
        Table("checkpoints", ["Checkpoint", "Size", "Iteration", "Val loss", "Improvement", "Train loss", "Notes"],
              rows, strong)])


def evaluation_section(facts: RunFacts) -> Section:
    truth = facts.truth
    if not truth.figures or truth.split is None:
        return Section("evaluation", "Evaluation", [Para(text(
            "No checkpoint has been evaluated yet: evaluate them on the test split from the run page for test "
            "loss, perplexity and a task score."))])
    rows: list[list[Text]] = []
    for iteration in sorted(truth.figures):
        fig = truth.figures[iteration]
        name = "base model" if iteration == 0 else f"{iteration:,}"
        rows.append([text(name), text(loss_text(fig.loss)),
                     text(f"{fig.perplexity:,.2f}" if fig.perplexity is not None else DASH),
                     text(f"{fig.score:.3f}" if fig.score is not None else DASH)])
    return Section("evaluation", "Evaluation", [
        Table("evaluation", ["Checkpoint", f"{truth.split} loss", "Perplexity", "Task score"], rows),
        Para(text(f"Measured on the {truth.split} split by evaluate jobs (the newest measurement of each)."))])


def usage_section(facts: RunFacts) -> Section:
    shown = facts.command_checkpoint
    if shown is None or facts.commands is None:
        return Section("usage", "Usage", [Para(text("There is no checkpoint to use yet."))])
    which = "deployment" if shown.is_deployment else facts.truth.verdict.best_label
    return Section("usage", "Usage", [
        Para(text(f"The {which} checkpoint (iteration {shown.iteration:,}), downloaded from this loraboard:")),
        Command("Generate with the adapter", facts.commands["generate"]),
        Command("Fuse the adapter into the base model", facts.commands["fuse"]),
        Command("Serve it (OpenAI-compatible API)", facts.commands["server"]),
        FactList([("Adapter file on this machine", text(Mono(f"{facts.folder}/{shown.filename}")))]),
    ])
