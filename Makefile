# `make run` runs the main job on built-in data; `make test` runs the test suite.
# Both create .venv on first use (torch pinned to the CPU build through constraints.txt).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-slow lint bench bench-load bench-grpo bench-estimators bench-structural bench-audit bench-rollout bench-integrations clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/stepcredit experiment

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/mypy
	$(BIN)/python tools/check_imports.py
	$(BIN)/python -m pytest -n 2 -q

# the benchmark smoke tests (marked slow), out of `make test`
test-slow: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/mypy
	$(BIN)/python tools/check_imports.py

# every benchmark in a fresh process, in a fixed order; rewrites benchmarks/RESULTS.md (and scaling.png)
bench: $(STAMP)
	$(BIN)/python benchmarks/suite.py

bench-load: $(STAMP)
	$(BIN)/python benchmarks/bench_load.py

bench-grpo: $(STAMP)
	$(BIN)/python benchmarks/bench_grpo.py

bench-estimators: $(STAMP)
	$(BIN)/python benchmarks/bench_estimators.py

bench-structural: $(STAMP)
	$(BIN)/python benchmarks/bench_structural.py

bench-audit: $(STAMP)
	$(BIN)/python benchmarks/bench_audit.py

bench-rollout: $(STAMP)
	$(BIN)/python benchmarks/bench_rollout.py

bench-integrations: $(STAMP)
	$(BIN)/python benchmarks/bench_integrations.py

clean:
	rm -rf $(VENV)
