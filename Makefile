# The two commands of the quick start: `make serve` and `make test` (everything); `make test-fast` is the in-process
# tier alone (no real server, worker, browser or other program: tests marked `real` are left out).
# Recipes are not echoed: a run prints loraboard's own lines (and pip's or the tools' errors) only.
.PHONY: serve test test-fast coverage lint
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

# The whole suite under coverage.py (pyproject.toml's [tool.coverage]: every Python process counted), then the total.
# Slower than `make test`; a test that fails still counts what it ran.
COVERAGE = LORABOARD_COVERAGE_DIR=$(CURDIR)/.coverage-data .venv/bin/python -m coverage
coverage:
	@scripts/setup.sh dev
	@scripts/ensure-chromium.sh
	@.venv/bin/loraboard defaults
	@rm -rf .coverage-data && mkdir .coverage-data
	@PYTHONDONTWRITEBYTECODE= $(COVERAGE) run -m pytest -q -n $(TEST_PROCESSES) --dist loadgroup; \
	  $(COVERAGE) combine -q && $(COVERAGE) report --skip-covered

lint:
	@.venv/bin/ruff check .
