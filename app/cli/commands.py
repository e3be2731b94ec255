"""The `loraboard` commands that talk to a running dashboard over its HTTP API (API.md)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from app.cli.client import DEFAULT_URL, TOKEN_ENV, URL_ENV, ApiError, Client

TERMINAL = {"completed", "stopped", "early_stopped", "failed", "interrupted"}
FAILED = {"failed", "interrupted"}
POLL_S = 0.5

UrlOption = Annotated[str, typer.Option("--url", envvar=URL_ENV, help=f"the dashboard's address ({URL_ENV})")]
TokenOption = Annotated[str | None, typer.Option(
    "--token", envvar=TOKEN_ENV, show_default=False,
    help=f"the dashboard's access token, when it was started with one ({TOKEN_ENV})")]
OutputOption = Annotated[Path | None, typer.Option(
    "-o", "--output", show_default=False, help="write to this file instead of standard output")]


def is_tty() -> bool:
    return sys.stdout.isatty()


def console(stderr: bool = False) -> Console:
    """Colour and live displays on a terminal; plain text (wide, no colour) otherwise."""
    tty = (sys.stderr if stderr else sys.stdout).isatty()
    return Console(stderr=stderr, no_color=not tty, highlight=False, soft_wrap=not tty,
                   width=None if tty else 200, force_terminal=tty or None)


def fail(message: str, code: int = 1) -> typer.Exit:
    err = console(stderr=True)
    for line in message.splitlines() or [message]:
        err.print(f"error: {line}", markup=False)
    return typer.Exit(code)


def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run an API call; an API error is printed as the API words it and the command exits 1."""
    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        raise fail(str(exc)) from None


def write_out(data: bytes, output: Path | None) -> None:
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    output.write_bytes(data)
    console(stderr=True).print(f"wrote {output} ({len(data):,} bytes)", markup=False)


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec) if isinstance(value, float) else str(value)


# run --------------------------------------------------------------------------------------------------


class Follower:
    """Follows a run to its end: a live bar on a terminal, one line per report otherwise; Ctrl-C asks what to
    do (stop and save, or detach) on a terminal, and stops and saves elsewhere."""

    def __init__(self, client: Client, run_id: int) -> None:
        self.client = client
        self.run_id = run_id
        self.out = console()
        self.interrupted = threading.Event()
        self.stop_sent = False
        self.after = 0
        self.val_after = 0

    def _on_sigint(self, _signum: int, _frame: Any) -> None:
        if self.interrupted.is_set() or self.stop_sent:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now, the run goes on (or keeps stopping)
        self.interrupted.set()

    def _decide(self) -> bool:
        """After Ctrl-C: True to keep following (the stop was sent), False to detach."""
        self.interrupted.clear()
        choice = "s"
        if sys.stdin.isatty() and is_tty():
            choice = typer.prompt("Stop the run and save its adapter, or detach (it trains on)? [s/d]",
                                  default="s").strip().lower()[:1]
        if choice == "d":
            self.out.print(f"detached: run {self.run_id} trains on (loraboard show {self.run_id})", markup=False)
            return False
        self.client.post(f"/api/runs/{self.run_id}/stop")
        self.stop_sent = True
        self.out.print(f"stopping run {self.run_id}: the worker saves the current adapter…", markup=False)
        return True

    def _print_new_points(self) -> None:
        metrics = self.client.get(f"/api/runs/{self.run_id}/metrics", after=min(self.after, self.val_after))
        for point in metrics["train"]:
            if point["iteration"] > self.after:
                self.out.print(f"iter {point['iteration']}: train loss {point['train_loss']:.4f}, "
                               f"{point['tokens_per_second']:.0f} tok/s", markup=False)
                self.after = point["iteration"]
        for point in metrics["val"]:
            if point["iteration"] > self.val_after:
                self.out.print(f"iter {point['iteration']}: val loss {point['val_loss']:.4f}", markup=False)
                self.val_after = point["iteration"]

    def follow(self) -> dict[str, Any]:
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            return self._loop()
        except KeyboardInterrupt:
            run = self.client.get(f"/api/runs/{self.run_id}")
            self.out.print(f"left run {self.run_id} ({run['status']})", markup=False)
            raise typer.Exit(130) from None
        finally:
            signal.signal(signal.SIGINT, previous)

    def _loop(self) -> dict[str, Any]:
        live = is_tty()
        progress = Progress(TextColumn("[bold]run {task.fields[run]}[/bold] {task.fields[status]}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
                            console=self.out, disable=not live, transient=False)
        status = ""
        with progress:
            task = progress.add_task("train", total=None, run=self.run_id, status="", loss="—")
            while True:
                if self.interrupted.is_set():
                    progress.stop()
                    if not self._decide():
                        return self.client.get(f"/api/runs/{self.run_id}")
                    progress.start()
                run = self.client.get(f"/api/runs/{self.run_id}")
                if run["status"] != status:
                    status = run["status"]
                    if not live:
                        reason = run.get("waiting_reason") if status == "queued" else None
                        waits = f" ({reason})" if reason else ""
                        self.out.print(f"run {self.run_id}: {status}{waits}", markup=False)
                if live:
                    latest = self.client.get(f"/api/runs/{self.run_id}/metrics", after=self.after)["train"]
                    if latest:
                        self.after = latest[-1]["iteration"]
                        progress.update(task, loss=f"{latest[-1]['train_loss']:.4f}")
                    progress.update(task, total=run["total_iters"] or None, completed=run["iteration"], status=status)
                else:
                    self._print_new_points()
                if status in TERMINAL:
                    return run
                time.sleep(POLL_S)


def summary_lines(run: dict[str, Any]) -> list[str]:
    best = run.get("best_checkpoint")
    lines = [f"run {run['id']} ({run['name']}): {run['status']} at iteration {run['iteration']:,} "
             f"of {run['total_iters']:,}"]
    if run["status"] == "queued" and run.get("waiting_reason"):
        lines.append(f"it {run['waiting_reason']}")
    if run.get("stop_reason"):
        lines.append(f"reason: {run['stop_reason']}")
    if run.get("error"):
        lines.append(f"error: {run['error']}")
    if best:
        lines.append(f"best checkpoint: iteration {best['iteration']:,}, val loss {_fmt(best['val_loss'])}")
    return lines


RUN_EPILOG = """A config is mlx_lm lora's YAML, e.g. (a run page's "Export YAML" writes one):

\b
    model: data/models/tiny-mistral
    data: data/contact-center
    fine_tune_type: lora
    num_layers: 4
    batch_size: 4
    iters: 200
    learning_rate: 1.0e-4
    steps_per_eval: 20
    save_every: 20
    loraboard:
      name: first run
      early_stopping: {patience: 3, min_delta: 0.0}

Without --config, the run starts from the new-run form's defaults (the embedded model and the sample data)."""


def run(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", exists=True, dir_okay=False, readable=True, show_default=False,
        help="an mlx_lm lora YAML config (loraboard's own keys under loraboard:); without it, the form's defaults")
    ] = None,
    name: Annotated[str | None, typer.Option(help="a name for the run (default: the config's, or model and time)",
                                             show_default=False)] = None,
    detach: Annotated[bool, typer.Option("--detach", help="start the run and return at once")] = False,
    url: UrlOption = DEFAULT_URL, token: TokenOption = None,
) -> None:
    """Start a run from a YAML config and follow it to its end (Ctrl-C: stop and save, or detach)."""
    client = Client(url, token)
    out = console()
    if config is None:
        payload = call(client.get, "/api/configs/defaults")
        out.print(f"no --config: the new-run form's defaults ({payload['model']} on {payload['data']})", markup=False)
    else:
        try:
            text = config.read_bytes()
        except OSError as exc:
            raise fail(f"cannot read {config}: {exc.strerror}") from None
        parsed = call(client.request, "POST", "/api/configs/parse", raw=text, content_type="application/yaml").json()
        for ignored in parsed.get("ignored", []):
            out.print(f"ignored {ignored['key']}: {ignored['reason']}", markup=False)
        payload = parsed["config"]
    if name:
        payload["name"] = name
    created = call(client.post, "/api/runs", payload)
    out.print(f"run {created['id']} ({created['name']}): {created['status']} — {url.rstrip('/')}/runs/{created['id']}",
              markup=False)
    if detach:
        return
    final = call(Follower(client, created["id"]).follow)
    for line in summary_lines(final):
        out.print(line, markup=False)
    if final["status"] in FAILED:
        raise typer.Exit(1)


# runs, show, stop --------------------------------------------------------------------------------------


def runs(url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """List the runs, newest first."""
    answer = call(Client(url, token).get, "/api/runs")
    table = Table(box=box.SIMPLE_HEAD if is_tty() else box.ASCII2, show_edge=False)
    for column in ("id", "name", "status", "iteration", "best val loss", "created"):
        table.add_column(column, justify="right" if column in ("id", "iteration", "best val loss") else "left")
    for item in answer:
        best = item.get("best_val")  # the lowest validation loss, as the run page's summary shows it
        waits = item.get("waiting_reason") if item["status"] == "queued" else None
        table.add_row(str(item["id"]), item["name"], f"{item['status']}: {waits}" if waits else item["status"],
                      f"{item['iteration']:,}/{item['total_iters']:,}",
                      f"{_fmt(best['val_loss'])} @ {best['iteration']:,}" if best else "—",
                      (item.get("created_at") or "")[:16].replace("T", " "))
    out = console()
    out.print(table) if answer else out.print("no runs yet", markup=False)


def show(run_id: Annotated[int, typer.Argument(help="the run's id")],
         url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """A run: its status, config highlights and checkpoints."""
    client = Client(url, token)
    item = call(client.get, f"/api/runs/{run_id}")
    checkpoints = call(client.get, f"/api/runs/{run_id}/checkpoints")
    out = console()
    for line in summary_lines(item):
        out.print(line, markup=False)
    config = item["config"]
    for key in ("model", "data", "fine_tune_type", "num_layers", "batch_size", "learning_rate", "iters"):
        out.print(f"{key}: {config.get(key)}", markup=False)
    for key in ("backend", "test_loss", "notes"):
        if item.get(key):
            out.print(f"{key}: {item[key]}", markup=False)
    table = Table(box=box.SIMPLE_HEAD if is_tty() else box.ASCII2, show_edge=False, title="checkpoints")
    for column in ("iteration", "val loss", "size", "sha256", "best", "deployment"):
        table.add_column(column)
    for c in checkpoints:
        table.add_row(f"{c['iteration']:,}", _fmt(c["val_loss"]), f"{c['size_bytes']:,}", c["sha256"][:12],
                      "yes" if c["is_best"] else "", "yes" if c["is_deployment"] else "")
    out.print(table) if checkpoints else out.print("no checkpoints", markup=False)


def stop(run_id: Annotated[int, typer.Argument(help="the run's id")],
         url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Stop a run: its worker saves the current adapter, then the run ends `stopped`."""
    answer = call(Client(url, token).post, f"/api/runs/{run_id}/stop")
    console().print(f"run {run_id}: {answer['status']}", markup=False)


# report, import, export ---------------------------------------------------------------------------------


def report(run_id: Annotated[int, typer.Argument(help="the run's id")],
           fmt: Annotated[str, typer.Option("--format", "-f", help="md (Markdown) or html (printable page)")] = "md",
           output: OutputOption = None, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """A run's report, as Markdown or printable HTML."""
    paths = {"md": f"/api/runs/{run_id}/report.md", "html": f"/runs/{run_id}/report"}
    if fmt not in paths:
        raise fail(f"--format must be md or html, got {fmt!r}", 2)
    write_out(call(Client(url, token).request, "GET", paths[fmt]).body, output)


def import_(adapter_dir: Annotated[Path, typer.Argument(help="the adapter folder mlx_lm lora wrote (--adapter-path)")],
            log: Annotated[Path | None, typer.Option(help="that run's output saved to a file (for the curves)",
                                                     show_default=False)] = None,
            name: Annotated[str | None, typer.Option(help="a name for the run (default: the folder's name)",
                                                     show_default=False)] = None,
            link: Annotated[bool, typer.Option("--link", help="link the files (symlinks) instead of copying them")]
            = False,
            url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Import a run trained with the mlx_lm lora CLI: its checkpoints, and its curves from the log."""
    body = {"adapter_dir": str(adapter_dir.expanduser().absolute()),
            "log": str(log.expanduser().absolute()) if log else None, "name": name, "copy": not link}
    answer = call(Client(url, token).post, "/api/imports", body)
    info = answer["import"]
    out = console()
    out.print(f"imported run {answer['id']} ({answer['name']}): {len(info['checkpoints'])} checkpoints "
              f"({'linked' if info['linked'] else 'copied'})", markup=False)
    counts = info.get("log_counts")
    if counts:
        out.print(f"log: {counts['train_points']} train and {counts['val_points']} validation reports "
                  f"({counts['style']}); {counts['lines']} lines, {counts['unrecognised']} unrecognised", markup=False)
    if info.get("dropped_config_keys"):
        out.print("config keys dropped: " + ", ".join(info["dropped_config_keys"]), markup=False)
    out.print(f"{url.rstrip('/')}/runs/{answer['id']}", markup=False)


def export(run_id: Annotated[int, typer.Argument(help="the run's id")],
           fmt: Annotated[str, typer.Option("--format", "-f", help="csv or json")] = "csv",
           output: OutputOption = None, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Every report of a run (train and validation), as CSV or JSON."""
    if fmt not in ("csv", "json"):
        raise fail(f"--format must be csv or json, got {fmt!r}", 2)
    write_out(call(Client(url, token).request, "GET", f"/api/runs/{run_id}/metrics.{fmt}").body, output)
