# The two commands of the quick start: `make serve` and `make test` (everything); `make test-fast` is the in-process
# tier alone (no real server, worker, browser or other program: tests marked `real` are left out).
# Recipes are not echoed: a run prints loraboard's own lines (and pip's or the tools' errors) only.
.PHONY: serve test test-fast lint
# The suite runs in this many processes (a test module, or modules sharing a trained run, stay in one).
TEST_PROCESSES ?= 2
# pytest keeps the test modules it rewrote (for its assertion messages) under __pycache__, where Python may write
# bytecode; where PYTHONDONTWRITEBYTECODE is set, every test process would rewrite every module again (seconds each).
PYTEST = PYTHONDONTWRITEBYTECODE= .venv/bin/python -m pytest

serve:
	@scripts/setup.sh
	@.venv/bin/loraboard serve

test:
	@scripts/setup.sh dev
	@scripts/ensure-chromium.sh
	@.venv/bin/loraboard defaults
	@.venv/bin/ruff check --quiet .
	@$(PYTEST) -n $(TEST_PROCESSES) --dist loadgroup

test-fast:
	@scripts/setup.sh dev
	@.venv/bin/loraboard defaults
	@.venv/bin/ruff check --quiet .
	@$(PYTEST) -n $(TEST_PROCESSES) --dist loadgroup -m "not real"

lint:
	@.venv/bin/ruff check .
