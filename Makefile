# The two set-up commands of the README: `make demo` and `make test`.
# Both bootstrap a .venv from the package registries on a fresh machine.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.perdure-installed

.PHONY: demo test lint typecheck unit venv clean bench bench-backends fuzz

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

unit: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test: lint typecheck unit

bench: $(STAMP)
	$(PY) benchmarks/step_overhead.py

bench-backends: $(STAMP)
	$(PY) benchmarks/backends.py

fuzz: $(STAMP)
	$(PY) benchmarks/crash_fuzz.py --backend sqlite --kills 200 --seed $${SEED:-1}

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
