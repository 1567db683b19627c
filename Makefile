# tillpoint — everything a developer or CI needs starts here.
# `make demo` and `make test` create .venv and install the pinned dependencies themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_SRC := proto/tillpoint/v1/tillpoint.proto
PROTO_OUT := proto
# Byte code is written and read again, whatever the caller's environment says: with
# PYTHONDONTWRITEBYTECODE set (some images and shells set it) every `tillpoint` process
# the tests start compiles the package from source again, and every pytest worker
# rewrites the asserts of all the test files again (~20 s of CPU each: a collection took
# 22.7 s of CPU here without the cache and 4.5 s with it). .ci/run says the same.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: deb wheel help venv test test-all test-pg lint typecheck proto proto-check openapi-examples demo bench bench-quick profile instructions deps-bench faults faults-pg faults-quick clean deps-system

help:
	@echo "make demo       run a whole store on one machine (embedded defaults)"
	@echo "make test       the default test suite (fast)"
	@echo "make test-all   every suite, slow ones included"
	@echo "make test-pg    the hub's suites with the hub on PostgreSQL"
	@echo "make lint       ruff + mypy --strict + stale generated code check"
	@echo "make proto      regenerate the protobuf/gRPC code from proto/"
	@echo "make openapi-examples  regenerate /openapi.json's examples from examples/"

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the device tests need (pseudo-terminals through socat), faketime for
# the run of the suite's dated parts a year ahead (tests/test_review33_date33.py), a JDK for
# the Java example of docs/INTEGRATION.md, and PostgreSQL's server for the hub's store
# (the tests start their own throwaway cluster, never the system's).
deps-system:
	@command -v socat >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq socat >/dev/null; \
	  else echo "socat missing: tests that need it will be skipped"; fi; }
	@command -v faketime >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq faketime >/dev/null; \
	  else echo "faketime missing: the run of the dated tests a year ahead will be skipped"; fi; }
	@command -v strace >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq strace >/dev/null; \
	  else echo "strace missing: the test reading a write's fsyncs will be skipped"; fi; }
	@command -v javac >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    apt-get install -y -qq default-jdk-headless >/dev/null; \
	  else echo "javac missing: the Java example's tests will be skipped"; fi; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else echo "postgresql missing: the PostgreSQL hub tests will be skipped"; fi; }

# The suite runs on TEST_WORKERS processes (pytest-xdist; each test file stays on one
# worker, so a file's module fixtures are built once). `make test TEST_WORKERS=0` runs it
# in this process, one test after another. The files are handed out longest first
# (tests/conftest.py orders them by tests/file_seconds.json; `--no-loadscope-reorder`
# keeps that order: xdist's own, most tests first, ended on long few-test files).
# Three on this project's two cores (review 42): the suite waits on its real processes,
# sockets, serial lines and fsyncs about as long as it computes, so a third worker fills
# the cores the two left idle: CI's pass took 683 s with three against 930 s with two,
# every test passing (the tests are written to pass on a loaded machine). Four since
# review 51: 693 s against 717 s with three, the same tests, quiet (docs/DECISIONS.md,
# "Session 51 (lead)").
TEST_WORKERS ?= 4
XDIST := $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# PYTEST_ARGS: more arguments for pytest (.ci/run deselects what its faults-quick stage runs).
test: $(STAMP) deps-system
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

test-all: $(STAMP) deps-system
	$(BIN)/python -m pytest -q -m '' $(XDIST)

# The hub's suites again with every hub on PostgreSQL (a throwaway cluster, a fresh
# database per test); the hub store suite runs over both stores in `make test` already.
test-pg: $(STAMP) deps-system
	$(BIN)/python -m pytest -q -m '' --hub-store=postgresql tests/test_sync_*.py \
	  tests/test_hub_*.py tests/test_faults_quick.py

lint: $(STAMP) proto-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory typecheck

# mypy cannot see through the editable install's path mapping, so it reads the same
# folders through a symlinked `tillpoint` tree.
typecheck: $(STAMP)
	@mkdir -p build/typecheck/tillpoint
	@for p in agent sync printer; do ln -sfn ../../../$$p build/typecheck/tillpoint/$$p; done
	@ln -sfn ../../../proto/tillpoint/v1 build/typecheck/tillpoint/v1
	@ln -sfn ../../../agent/tillpoint_client build/typecheck/tillpoint/client
	$(BIN)/mypy -p tillpoint.agent -p tillpoint.sync -p tillpoint.printer -p tillpoint.client

proto: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -I proto \
	  --python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
	  --mypy_out=$(PROTO_OUT) --mypy_grpc_out=$(PROTO_OUT) $(PROTO_SRC)

# The request and answer examples of /openapi.json: the examples/ files sent to a throwaway
# till, its answers recorded (agent/openapi_examples.py); a test fails when the committed
# file is not what this writes.
openapi-examples: $(STAMP)
	$(BIN)/python -m tillpoint.agent.openapi_examples

# Fails when the committed generated code is not what `make proto` writes.
proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && \
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -I proto --python_out=$$tmp --grpc_python_out=$$tmp \
	  --mypy_out=$$tmp --mypy_grpc_out=$$tmp $(PROTO_SRC) && \
	diff -r -x '__pycache__' -x '*.proto' -x 'py.typed' -x '__init__.py' $$tmp/tillpoint/v1 proto/tillpoint/v1 \
	  && echo "generated code is up to date" || { echo "generated code is stale: run 'make proto'"; exit 1; }

demo: $(STAMP) deps-system
	$(BIN)/tillpoint demo

# bench.cli_startup: a one-shot `tillpoint` call's wall time against `python -c pass` and
# `python -c 'import pydantic'` (~30 s; 3 rounds in bench-quick).
bench: $(STAMP) deps-system
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.hub
	$(BIN)/python -m bench.cli_startup --json bench/results/cli_startup.json

bench-quick: $(STAMP) deps-system
	$(BIN)/python -m bench.run --quick
	$(BIN)/python -m bench.hub --quick
	$(BIN)/python -m bench.cli_startup --runs 3 --json bench/results/cli_startup.json

# Where a quote's and a checkout's CPU goes, by area (docs/PERFORMANCE.md's accounting).
profile: $(STAMP)
	$(BIN)/python -m bench.profile --json bench/results/profile.json

# A known card's first-sight 50-line quote counted in instructions by callgrind, this tree
# against BASE (docs/PERFORMANCE.md, "A known card's quote, cheaper"): deterministic where
# wall times on a shared machine are not. `make instructions BASE=main`.
BASE ?= main
instructions: $(STAMP) deps-bench
	$(BIN)/python -m bench.quote_instructions --base $(BASE)

# valgrind, for `make instructions` (Debian's package; as root, else say so).
deps-bench:
	@command -v valgrind >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; \
	  else echo "valgrind missing: apt-get install valgrind (make instructions needs it)"; exit 1; fi; }

# Fault injection against the real agent and hub on loopback (docs/FAULTS.md); exits 1
# when a promise is broken. faults-quick is the CI size (~1 minute): its scenarios in two
# processes side by side (`--jobs 2`), as they mostly wait on their processes and clocks.
faults: $(STAMP)
	$(BIN)/python -m bench.faults

# The same with the hub on PostgreSQL (a throwaway cluster, a database per scenario).
faults-pg: $(STAMP) deps-system
	$(BIN)/python -m bench.faults --hub-store postgresql

faults-quick: $(STAMP)
	$(BIN)/python -m bench.faults --quick --jobs 2

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

# A Debian package with the agent's own venv under /opt/tillpoint (see packaging/).
deb: $(STAMP)
	PY=$(BIN)/python packaging/build-deb.sh

wheel: $(STAMP)
	$(BIN)/python -m build --wheel --no-isolation --outdir dist .
