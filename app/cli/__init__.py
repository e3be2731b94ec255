"""The `loraboard` command (also `python -m app`): `serve` (the default) and the commands that drive a running
dashboard over its HTTP API: run, runs, show, stop, report, import, export."""

from __future__ import annotations

import sys

import typer

from app.cli import commands

SERVE_COMMANDS = ("serve", "defaults")

app = typer.Typer(name="loraboard", help="Local dashboard for MLX LoRA runs, and its command line.",
                  no_args_is_help=False, add_completion=False, pretty_exceptions_enable=False)
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=PASS_THROUGH)
def serve(ctx: typer.Context) -> None:
    """Serve the dashboard (the default command): --host, --port, --token [TOKEN], --no-token; see serve --help."""
    from app.cli.serve import serve_main

    serve_main(["serve", *ctx.args])


@app.command(context_settings=PASS_THROUGH)
def defaults(ctx: typer.Context) -> None:
    """Create the embedded default model and sample data, then exit."""
    from app.cli.serve import serve_main

    serve_main(["defaults", *ctx.args])


app.command("run")(commands.run)
app.command("runs")(commands.runs)
app.command("show")(commands.show)
app.command("stop")(commands.stop)
app.command("report")(commands.report)
app.command("import")(commands.import_)
app.command("export")(commands.export)


def main(argv: list[str] | None = None) -> None:
    """`loraboard` alone serves, as it always did; `serve` and `defaults` keep their argparse options as they
    were; everything else is the Typer app."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in SERVE_COMMANDS:
        from app.cli.serve import serve_main

        serve_main(args)
        return
    app(args=args, prog_name="loraboard")
