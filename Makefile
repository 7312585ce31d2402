# Everything a fresh machine needs: `make demo` and `make test` build .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Ray >= 2.59 turns token auth on for local clusters; say so explicitly everywhere.
export RAY_AUTH_MODE ?= token
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-fast lint data clean browser bench-tools

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned exactly: a looser spec would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

data/digits.parquet: | $(STAMP)
	$(BIN)/orchestrator data export digits --out $@

data: data/digits.parquet

demo: $(STAMP) data/digits.parquet
	$(BIN)/orchestrator sweep jobs/configs/quickstart.yaml

lint: $(STAMP)
	$(BIN)/ruff check orchestrator jobs tests
	$(BIN)/ruff format --check orchestrator jobs tests
	$(BIN)/mypy

test-fast: $(STAMP)
	$(BIN)/pytest tests/unit -q

# Debian's Chromium: the report test opens the HTML report in a real headless browser.
browser:
	command -v chromium >/dev/null || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# wrk: the load generator of `python -m jobs.bench serve` (a Python client would need most
# of a core itself on a small machine and understate every server alike)
bench-tools:
	command -v wrk >/dev/null || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk; }

test: $(STAMP) lint browser
	$(BIN)/pytest -q

clean:
	rm -rf results mlflow.db data
