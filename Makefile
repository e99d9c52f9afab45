# One-command set-up: `make test` and `make demo` work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo demo-remote bench bench-remote torture lint clean compat gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the tested version, a local CPU wheel on these machines
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

# one pytest worker per core (at most 4), each taking whole test files: module fixtures (the docs
# runner, the servers) run once, in one worker
test: setup
	$(BIN)/python -m pytest -q -n auto --maxprocesses=4 --dist loadfile

demo: setup
	$(BIN)/aiotrain train examples/digits.sdn --mode=check_and_train

# the digits example streamed from a local S3 server (moto, from the dev extra): start it, pack
# the data into a bucket, train from there, stop the server
demo-remote: setup
	@set -e; env_file=$$(mktemp); \
	$(BIN)/python -m examples.local_s3 serve --bucket aiotrain-demo > $$env_file & pid=$$!; \
	trap "kill $$pid 2>/dev/null; wait $$pid 2>/dev/null; rm -f $$env_file" EXIT; \
	while ! [ -s $$env_file ]; do kill -0 $$pid || exit 1; sleep 0.2; done; \
	export $$(cat $$env_file); \
	$(BIN)/python -m examples.remote_digits pack s3://aiotrain-demo/digits; \
	$(BIN)/aiotrain train examples/remote_digits.sdn data.url=s3://aiotrain-demo/digits --no-progress

# benchmarks/bench_remote.py with its peers (the bench extra) in a venv of their own: they pin
# versions the project's venv does not want (and torch stays the tested CPU build)
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml
	test -d $(BENCH_VENV) || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q torch==2.13.0
	echo "torch==2.13.0" > $(BENCH_VENV)/constraints.txt
	$(BENCH_VENV)/bin/pip install -q -c $(BENCH_VENV)/constraints.txt -e ".[remote,media,bench,dev]"
	touch $(BENCH_VENV)/.installed

bench-remote: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python benchmarks/bench_remote.py

# pytorch-ignite's own engine/event/state-dict/handler tests against aiotrain (downloads its sdist)
compat: setup
	$(BIN)/python tests/compat/run_ignite_suite.py

bench: setup
	@for b in benchmarks/bench_*.py; do echo "# $$b"; $(BIN)/python $$b || exit 1; done

# every CUDA path's tests and the GPU benchmarks, one JSON line (on a machine with a GPU: see README)
gpu-check: setup
	$(BIN)/python benchmarks/gpu_check.py

# the long fault runs (not part of `make test`): about an hour on 2 cores; prints one line of counts
torture: setup
	$(BIN)/python torture/run.py

lint: setup
	$(BIN)/ruff check aiotrain tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/python tests/security/html_sinks.py aiotrain/dashboard/static

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache build *.egg-info
