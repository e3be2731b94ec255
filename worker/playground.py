"""The `playground` job (worker/job.py): answers the playground's generations while the model stays loaded.

The app writes a Generation (status queued) and its GenerationColumn rows (app/tables.py); this worker claims the
oldest queued one, loads its base model with mlx_lm.utils.load (as `mlx_lm generate` does, no dtype change) or keeps
the one loaded, prepares each column's checkpoint (worker/playground_adapters.py: swapped into the one model, cached
by run, iteration and file time), and generates every column at the same time: round-robin, one token per column per
round, each column its own mlx_lm `generate_step` with its own prompt cache and `make_sampler(temperature, top_p)`;
with a seed, the random key is seeded before each of a column's turns from the seed and that column's turn count
alone, so a column's sampled answer does not depend on the columns beside it. A column's adapter is put in place
right before its generator is advanced: that call builds both the token it returns and the next one (generate_step's
async prefetch), so every graph holds its own column's weights. A single column sets its adapter once. Tokens stop
at the tokenizer's EOS ids or max_tokens and are detokenized by the tokenizer's streaming detokenizer, as
`stream_generate` does, so greedy output equals `mlx_lm generate --temp 0` token for token.

Each token's text becomes a GenerationToken row (written one token late: the last token's row also carries the
text the detokenizer flushes at the end, so a column's rows joined equal its text); rows are committed in one
transaction every COMMIT_EVERY_S while tokens come. A column's figures: first_token_s from the start of the
generation's columns (all start together) to its first token, tokens_per_second over the tokens after the first.
A generation that cannot be answered (a deleted checkpoint, an adapter of another base model, a model that does
not load) fails with one line naming the file; the worker goes on with the next.

Release: after `idle_s` (param; settings.playground_idle_s) without a queued generation the job ends itself
completed, unless a generation was queued at that moment; a cancel ends the running generation `stopped` and the
job stopped, leaving queued generations to the next playground job.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.contract.kinds import PlaygroundParams
from app.contract.paths import checkpoint_files, run_dir
from app.contract.run_config import looks_like_path
from app.contract.status import RunStatus
from worker.job import JobContext, JobInputError, JobStopped, one_line
from worker.reporting import connect, now_text

UNIT = "prompts"  # progress counts generations answered (the app's unit for this kind)
POLL_S = 0.02  # how often an idle worker looks for a queued generation
COMMIT_EVERY_S = 0.05  # token rows are committed at least this often while tokens come
# The oldest queued generation, taken only while this job runs (one being released leaves it to the next job).
CLAIM = ("UPDATE generation SET status = 'running', job_id = ?, started_at = ? WHERE id = (SELECT id FROM generation"
         " WHERE status = 'queued' ORDER BY id LIMIT 1) AND (SELECT status FROM job WHERE id = ?) = 'running'"
         " RETURNING id, model, request_json")
RELEASE = ("UPDATE job SET status = 'stopping' WHERE id = ? AND status = 'running' AND NOT EXISTS"
           " (SELECT 1 FROM generation WHERE status = 'queued')")


class GenerationError(JobInputError):
    """A generation that cannot be answered; the message (one line) is its error."""


class StopRequested(Exception):
    """The job was cancelled while a generation was running."""


def same_model(a: str, b: str) -> bool:
    """Two model names mean the same base model: folders compared by resolved path, hub ids as written."""
    if looks_like_path(a) and looks_like_path(b):
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    return a == b


def draw_seed(seed: int, turn: int) -> int:
    """The random seed of a column's `turn`-th advance in a generation seeded with `seed` (the same for every column,
    different for every turn)."""
    return (seed * 1_000_003 + turn) % 2**63


def model_label(model: str) -> str:
    return Path(model).name if looks_like_path(model) else model


@dataclass
class Writer:
    """Token rows and column/generation updates of the running generation, committed in order, in batches."""

    conn: Any
    pending: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    last_commit: float = field(default_factory=time.perf_counter)

    def add(self, sql: str, params: tuple[Any, ...]) -> None:
        self.pending.append((sql, params))

    def token(self, generation_id: int, column: int, seq: int, text: str) -> None:
        self.add("INSERT INTO generationtoken (generation_id, column_index, seq, text) VALUES (?, ?, ?, ?)",
                 (generation_id, column, seq, text))

    def maybe_flush(self) -> None:
        if self.pending and time.perf_counter() - self.last_commit >= COMMIT_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            ops, self.pending = self.pending, []
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in ops:
                    self.conn.execute(sql, params)
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        self.last_commit = time.perf_counter()


@dataclass
class Column:
    """One column while it generates."""

    index: int
    adapter: Any  # playground_adapters.Adapter, or None for the base model
    generator: Any = None
    detokenizer: Any = None
    tokens: int = 0
    held: str | None = None  # the latest token's text, written with the next token (or at the end)
    first_at: float | None = None
    last_at: float | None = None
    draws: int = 0  # times its generator was advanced: with a seed, each advance draws from seed and this alone
    finish_reason: str | None = None


class Playground:
    """The loaded model (reloaded only for another model), its adapters, and the generations answered."""

    def __init__(self, ctx: JobContext, conn: Any) -> None:
        self.ctx = ctx
        self.conn = conn
        self.settings = ctx.settings
        self.model_name: str | None = None
        self.tokenizer: Any = None
        self.slot: Any = None  # playground_adapters.AdaptedModel
        self.answered = 0

    # Model and adapters ------------------------------------------------------------------------------------

    def load(self, model: str) -> None:
        if self.slot is not None and self.model_name is not None and same_model(self.model_name, model):
            return
        from mlx_lm.utils import load

        from worker.playground_adapters import AdaptedModel

        self.slot, self.tokenizer, self.model_name = None, None, None
        if looks_like_path(model) and not (Path(model).expanduser() / "config.json").is_file():
            raise GenerationError(f"model folder {model} does not exist or has no config.json")
        self.ctx.detail = f"loading {model_label(model)}"
        try:
            loaded, tokenizer = load(model)
        except Exception as exc:
            raise GenerationError(f"model {model} cannot be loaded: {one_line(exc)}") from None
        self.slot, self.tokenizer, self.model_name = AdaptedModel(loaded), tokenizer, model

    def adapter(self, model: str, run_id: int, iteration: int) -> Any:
        """A checkpoint's adapter for this model: the run must exist, be on the same base, and have the file."""
        from worker.playground_adapters import AdapterError

        row = self.conn.execute("SELECT config_json FROM run WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise GenerationError(f"run {run_id} does not exist")
        trained_on = str(json.loads(row[0]).get("model", ""))
        weights, _ = checkpoint_files(self.settings, run_id, iteration)
        if not same_model(trained_on, model):
            raise GenerationError(f"run {run_id} checkpoint {iteration} ({weights}) was trained on {trained_on}, "
                                  f"not on {model}: an adapter only fits its own base model")
        config = run_dir(self.settings, run_id) / "adapter_config.json"
        for needed in (weights, config):
            if not needed.is_file():
                raise GenerationError(f"run {run_id} checkpoint {iteration}: {needed} does not exist (deleted?)")
        try:
            return self.slot.adapter((run_id, iteration, weights.stat().st_mtime_ns), weights, config)
        except AdapterError as exc:
            raise GenerationError(f"run {run_id} checkpoint {iteration}: {exc}") from None

    def prompt_tokens(self, request: dict[str, Any]) -> list[int]:
        """The prompt as `mlx_lm generate` makes it: the chat template with the generation prompt, or the text."""
        messages = request.get("messages")
        if messages is None:
            messages = [{"role": "user", "content": str(request.get("prompt", ""))}]
        if not isinstance(messages, list) or not messages:
            raise GenerationError("the request has no messages")
        tokenizer = self.tokenizer
        if tokenizer.has_chat_template:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            tokens: list[int] = tokenizer.encode(text, add_special_tokens=False)
        else:
            tokens = tokenizer.encode("\n".join(str(m.get("content", "")) for m in messages))
        if not tokens:
            raise GenerationError("the prompt is empty once tokenized")
        return tokens

    # One generation ----------------------------------------------------------------------------------------

    def answer(self, generation_id: int, model: str, request: dict[str, Any]) -> None:
        self.load(model)
        rows = self.conn.execute("SELECT column_index, run_id, iteration FROM generationcolumn"
                                 " WHERE generation_id = ? ORDER BY column_index", (generation_id,)).fetchall()
        if not rows:
            raise GenerationError("the generation has no columns")
        columns = [Column(index, None if run_id is None else self.adapter(model, run_id, iteration))
                   for index, run_id, iteration in rows]
        prompt = self.prompt_tokens(request)
        try:
            max_tokens = int(request.get("max_tokens", 256))
            temperature = float(request.get("temperature", 0.0))
            top_p = float(request.get("top_p", 1.0))
            seed = request.get("seed")
            seed = None if seed is None else int(seed)
        except (TypeError, ValueError) as exc:
            raise GenerationError(f"the request's settings are not valid: {exc}") from None
        if max_tokens < 1:
            raise GenerationError(f"max_tokens must be at least 1, got {max_tokens}")
        self.generate(generation_id, columns, prompt, max_tokens, temperature, top_p, seed)

    def generate(self, generation_id: int, columns: list[Column], prompt: list[int], max_tokens: int,
                 temperature: float, top_p: float, seed: int | None) -> None:
        import mlx.core as mx
        from mlx_lm.generate import generate_step, generation_stream, wired_limit
        from mlx_lm.models.cache import make_prompt_cache
        from mlx_lm.sample_utils import make_sampler

        model, tokenizer, slot = self.slot.model, self.tokenizer, self.slot
        eos = set(tokenizer.eos_token_ids)
        writer = Writer(self.conn)
        prompt_array = mx.array(prompt)
        for column in columns:
            column.generator = generate_step(prompt_array, model, max_tokens=max_tokens,
                                             sampler=make_sampler(temperature, top_p),
                                             prompt_cache=make_prompt_cache(model))
            column.detokenizer = tokenizer.detokenizer
        single = len(columns) == 1
        slot.use(columns[0].adapter)  # a single column's adapter stays in place
        active = list(columns)
        label = f"generation {generation_id}: {len(columns)} column{'s' if len(columns) > 1 else ''}"
        self.ctx.detail = f"{self.holding()}; {label}"
        try:
            with wired_limit(model, [generation_stream]):
                start = time.perf_counter()
                while active:
                    for column in list(active):
                        if not single:
                            slot.use(column.adapter)
                        if seed is not None:  # the sampler draws from the global key: seeded for this column's turn
                            mx.random.seed(draw_seed(seed, column.draws))
                        column.draws += 1
                        token, _ = next(column.generator)
                        now = time.perf_counter()
                        if column.first_at is None:
                            column.first_at = now
                        if token in eos:
                            self.finish(writer, generation_id, column, "stop", start, len(prompt))
                            active.remove(column)
                            continue
                        column.last_at = now
                        column.detokenizer.add_token(token)
                        if column.held is not None:
                            writer.token(generation_id, column.index, column.tokens - 1, column.held)
                        column.held = column.detokenizer.last_segment
                        column.tokens += 1
                        if column.tokens == max_tokens:
                            self.finish(writer, generation_id, column, "length", start, len(prompt))
                            active.remove(column)
                    writer.maybe_flush()
                    if self.ctx.stop.is_set():
                        raise StopRequested
        except StopRequested:
            for column in columns:  # what an unfinished column said so far (not done, no finish reason)
                if column.finish_reason is None and column.held is not None:
                    writer.token(generation_id, column.index, column.tokens - 1, column.held)
                    writer.add("UPDATE generationcolumn SET text = ?, tokens = ? WHERE generation_id = ?"
                               " AND column_index = ?", (column.detokenizer.text, column.tokens, generation_id,
                                                         column.index))
            writer.add("UPDATE generation SET status = ?, error = ?, finished_at = ? WHERE id = ?",
                       (RunStatus.stopped.value, "stopped on request (the playground was released)", now_text(),
                        generation_id))
            writer.flush()
            raise
        finally:
            for column in columns:
                if column.generator is not None:
                    column.generator.close()
        writer.add("UPDATE generation SET status = ?, finished_at = ? WHERE id = ?",
                   (RunStatus.completed.value, now_text(), generation_id))
        writer.flush()

    @staticmethod
    def finish(writer: Writer, generation_id: int, column: Column, reason: str, start: float,
               prompt_tokens: int) -> None:
        """The column's last token row (with what the detokenizer flushes) and its text and figures."""
        column.detokenizer.finalize()
        rest = column.detokenizer.last_segment
        if column.held is not None:
            writer.token(generation_id, column.index, column.tokens - 1, column.held + rest)
        column.held = None
        column.finish_reason = reason
        first_token_s = column.first_at - start if column.first_at is not None else None
        speed = None
        if column.tokens > 1 and column.first_at is not None and column.last_at is not None \
                and column.last_at > column.first_at:
            speed = (column.tokens - 1) / (column.last_at - column.first_at)
        writer.add("UPDATE generationcolumn SET text = ?, tokens = ?, prompt_tokens = ?, first_token_s = ?,"
                   " tokens_per_second = ?, finish_reason = ?, done = 1 WHERE generation_id = ? AND column_index = ?",
                   (column.detokenizer.text, column.tokens, prompt_tokens, first_token_s, speed, reason,
                    generation_id, column.index))

    # The job's loop ----------------------------------------------------------------------------------------

    def holding(self) -> str:
        if self.slot is None or self.model_name is None:
            return "no model loaded"
        count = len(self.slot.cache)
        return f"{model_label(self.model_name)} loaded, {count} adapter{'' if count == 1 else 's'} cached"

    def claim(self) -> tuple[int, str, dict[str, Any]] | None:
        if self.conn.execute("SELECT 1 FROM generation WHERE status = 'queued' LIMIT 1").fetchone() is None:
            return None
        row = self.conn.execute(CLAIM, (self.ctx.job_id, now_text(), self.ctx.job_id)).fetchone()
        if row is None:
            status = self.conn.execute("SELECT status FROM job WHERE id = ?", (self.ctx.job_id,)).fetchone()
            if status is None or status[0] != RunStatus.running.value:
                self.ctx.stop.set()  # cancelled: seen here before the report thread's next look
            return None
        generation_id, model, request_json = row
        try:
            request = json.loads(request_json)
        except ValueError:
            request = None
        return generation_id, model, request if isinstance(request, dict) else {}

    def count_progress(self) -> None:
        queued = self.conn.execute("SELECT COUNT(*) FROM generation WHERE status = 'queued'").fetchone()[0]
        self.ctx.set_total(self.answered + int(queued), UNIT)
        self.ctx.done = self.answered

    def fail(self, generation_id: int, error: str) -> None:
        self.conn.execute("UPDATE generation SET status = ?, error = ?, finished_at = ? WHERE id = ?",
                          (RunStatus.failed.value, error, now_text(), generation_id))

    def serve(self, idle_s: float) -> dict[str, Any]:
        idle_since = time.monotonic()
        while True:
            if self.ctx.stop.is_set():
                raise JobStopped({"generations": self.answered, "released": "request"})
            claimed = self.claim()
            if claimed is None:
                idle = time.monotonic() - idle_since
                if idle >= idle_s and self.conn.execute(RELEASE, (self.ctx.job_id,)).rowcount == 1:
                    return {"generations": self.answered, "released": "idle"}
                self.count_progress()
                self.ctx.detail = f"{self.holding()}; idle {int(idle)} s"
                time.sleep(POLL_S)
                continue
            generation_id, model, request = claimed
            self.count_progress()
            try:
                self.answer(generation_id, model, request)
            except StopRequested:
                raise JobStopped({"generations": self.answered, "released": "request"}) from None
            except GenerationError as exc:
                self.fail(generation_id, one_line(exc))
            except Exception as exc:  # anything else fails this generation only; the worker keeps serving
                self.fail(generation_id, one_line(exc))
            self.answered += 1
            self.count_progress()
            idle_since = time.monotonic()


def run(ctx: JobContext[PlaygroundParams]) -> dict[str, Any]:
    conn = connect(ctx.settings.database_path)
    try:
        ctx.set_total(0, UNIT)
        return Playground(ctx, conn).serve(ctx.params.idle_s)
    finally:
        conn.close()
