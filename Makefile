# The two commands of the quick start: `make serve` and `make test`.
# Recipes are not echoed: a run prints loraboard's own lines (and pip's or the tools' errors) only.
.PHONY: serve test lint
# The suite runs in this many processes (a test module, or modules sharing a trained run, stay in one).
TEST_PROCESSES ?= 2

serve:
	@scripts/setup.sh
	@.venv/bin/loraboard serve

test:
	@scripts/setup.sh dev
	@scripts/ensure-chromium.sh
	@.venv/bin/loraboard defaults
	@.venv/bin/ruff check --quiet .
	@.venv/bin/python -m pytest -n $(TEST_PROCESSES) --dist loadgroup

lint:
	@.venv/bin/ruff check .
