"""The `loraboard` command (also `python -m app`): `serve` (the default) and the commands that drive a running
dashboard over its HTTP API: run, runs, show, stop, report, import, export."""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperCommand

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


class FlagsTakeNoValue(TyperCommand):
    """A command whose help shows no type beside a flag (typer would write `<bool>`: a flag takes no value)."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


app.command("run", cls=FlagsTakeNoValue, epilog=commands.RUN_EPILOG)(commands.run)
for name, command in (("runs", commands.runs), ("show", commands.show), ("stop", commands.stop),
                      ("report", commands.report), ("import", commands.import_), ("export", commands.export)):
    app.command(name, cls=FlagsTakeNoValue)(command)


def main(argv: list[str] | None = None) -> None:
    """`loraboard` alone serves, as it always did; `serve` and `defaults` keep their argparse options as they
    were; everything else is the Typer app."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in SERVE_COMMANDS:
        from app.cli.serve import serve_main

        serve_main(args)
        return
    app(args=args, prog_name="loraboard")
