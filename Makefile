# The two set-up commands of the README: `make demo` and `make test`.
# Both bootstrap a .venv from the package registries on a fresh machine.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.perdure-installed

.PHONY: demo test lint typecheck unit venv clean bench bench-backends fuzz browser bench-ui

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(PY) -m mypy
	$(PY) -m mypy --strict tests/typing_public_api.py

# The dashboard's browser tests (tests/ui) drive Debian's chromium with Playwright (no browser
# download). As root with apt-get, install it when missing, as the test fixtures do for PostgreSQL
# and Redis; otherwise those tests skip locally (and fail with CI=true).
CHROMIUM := /usr/bin/chromium

browser:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian chromium for the dashboard's browser tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || \
		{ apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null; }; \
	fi

unit: $(STAMP) browser
	$(PY) -m pytest -q -p no:cacheprovider

test: lint typecheck unit

bench: $(STAMP)
	$(PY) benchmarks/step_overhead.py

bench-backends: $(STAMP)
	$(PY) benchmarks/backends.py

bench-ui: $(STAMP)
	$(PY) benchmarks/ui_list_100k.py

fuzz: $(STAMP)
	$(PY) benchmarks/crash_fuzz.py --backend sqlite --kills 200 --seed $${SEED:-1}

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
