# The two commands of the quick start: `make serve` and `make test`.
# Recipes are not echoed: a run prints loraboard's own lines (and pip's or the tools' errors) only.
.PHONY: serve test lint

serve:
	@scripts/setup.sh
	@.venv/bin/loraboard serve

test:
	@scripts/setup.sh dev
	@scripts/ensure-chromium.sh
	@.venv/bin/ruff check --quiet .
	@.venv/bin/python -m pytest

lint:
	@.venv/bin/ruff check .
