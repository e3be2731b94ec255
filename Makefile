# The two commands of the quick start: `make serve` and `make test`.
.PHONY: serve test lint bench

serve:
	scripts/setup.sh
	.venv/bin/loraboard serve

test:
	scripts/setup.sh dev
	scripts/ensure-chromium.sh
	.venv/bin/ruff check .
	.venv/bin/python -m pytest

lint:
	.venv/bin/ruff check .
