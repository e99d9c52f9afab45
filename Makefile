# One-command set-up: `make test` and `make demo` work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench torture lint clean compat

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the tested version, a local CPU wheel on these machines
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/aiotrain train examples/digits.sdn --mode=check_and_train

# pytorch-ignite's own engine/event/state-dict/handler tests against aiotrain (downloads its sdist)
compat: setup
	$(BIN)/python tests/compat/run_ignite_suite.py

bench: setup
	@for b in benchmarks/bench_*.py; do echo "# $$b"; $(BIN)/python $$b || exit 1; done

# the long fault runs (not part of `make test`): about an hour on 2 cores; prints one line of counts
torture: setup
	$(BIN)/python torture/run.py

lint: setup
	$(BIN)/ruff check aiotrain tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/python tests/security/html_sinks.py aiotrain/dashboard/static

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
