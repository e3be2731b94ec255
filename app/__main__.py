"""`python -m app ...` is the `loraboard` command."""

from app.cli import main

main()
