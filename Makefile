# strongmoose — the targets a developer and CI use. Each creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-unit test-e2e lint demo up down bench bench-matching chaos clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: install  ## everything: unit, integration and e2e (starts its own NATS and PostgreSQL)
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q tests/unit -m "not integration"

test-e2e: install
	$(PY) -m pytest -q tests/e2e

lint: install
	$(VENV)/bin/ruff check libs services clients tests

demo: install  ## the seed job's whole life on one machine, then a word count on real data
	$(VENV)/bin/smctl demo

up: install
	$(VENV)/bin/smctl up

down: install
	$(VENV)/bin/smctl down

bench: install  ## throughput and latency of the five services vs bare JetStream (starts its own NATS and PostgreSQL)
	$(PY) bench/pipeline.py

bench-matching: install  ## the order book at 100,000 offers and jobs vs a naive matcher and HTCondor ClassAds; continuous vs periodic clearing (a few minutes)
	$(PY) bench/matching.py $(BENCH_MATCHING_ARGS)

chaos: install  ## 2,000 jobs through the five services as processes while services, NATS and PostgreSQL are killed
	$(PY) bench/chaos.py $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .state .pytest_cache
