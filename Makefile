# fairgate: `make demo` runs the main job, `make test` runs every check (slow tests
# included, as CI does); `make test-quick` skips the tests marked slow, for the loop
# while editing.
# Each bootstraps a .venv with `pip install -e .[dev]` on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-quick lint format bench soak clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fairgate needs Python 3.11+")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gate demo $(DEMO_ARGS)

test: $(STAMP) lint
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-quick: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check gate tests bench
	$(VENV)/bin/ruff format --check gate tests bench
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix gate tests bench
	$(VENV)/bin/ruff format gate tests bench

bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

# 30 minutes at half capacity: memory flat after the warm-up, no errors (bench/README.md).
soak: $(STAMP)
	$(PY) -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .gate-data demo-out bench/out *.egg-info
