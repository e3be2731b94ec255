"""`python -m app ...` is the `loraboard` command."""

from app.main import cli

cli()
