# tuneloop: `make demo` sets everything up and runs the pipeline on the demo data;
# `make test` sets up and runs the tests. Both create the virtual environment when missing.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
DEMO_ROWS ?= 2000

# Stages run by `dvc repro` call `python -m tuneloop`: the venv's python must come first.
export PATH := $(BIN):$(PATH)
# Offline by design: no hub downloads, no telemetry.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GX_ANALYTICS_ENABLED := False
export DVC_NO_ANALYTICS := 1
export BENTOML_DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# The embedded (ephemeral) Prefect server gets 20 s to start by default; a busy 2-core machine needed more.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: install demo loop-demo test test-fast lint lock clean help fuzz

help:
	@echo "make demo   set up and run the pipeline on the demo data"
	@echo "make test   set up and run the tests (what CI runs, after make lint)"
	@echo "make test-fast  the inner loop: no DVC, Prefect or BentoML servers, no shared data, no kill or load tests (66-177 s of tests on the 2-core boxes measured before 2026-12-06's speed-ups, 64-118 s since)"
	@echo "make lint   ruff (lint + format) and mypy on src/ and flows/"
	@echo "make fuzz   the fuzz tests: the service's (Schemathesis + hostile requests, 2000 examples each), monitoring's hostile windows (333)"
	@echo "make loop-demo  after make demo: drift -> monitor -> retrain -> gate -> promote -> the service switches"
	@echo "make lock   re-resolve requirements.lock from pyproject.toml"

# uv installs the locked set in 47-59 s where pip took 2.5 minutes (one 2-core box; most of CI's set-up); pip
# stays the fallback where uv cannot be installed or cannot install the set. uv does not read pip's configuration:
# the machine's find-links (where a CPU torch wheel may lie) and index URL are passed on. --compile-bytecode as
# pip does: where PYTHONDONTWRITEBYTECODE is set (these machines set it) every process would otherwise compile
# each module it imports from source, every time (transformers + torch + GX + Prefect: 18 s to import, not 9 s).
UV_VERSION ?= 0.13.9
PIP_CONFIG  = $(shell $(PYTHON) -m pip config get global.$(1) 2>/dev/null)
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(call PIP_CONFIG,find-links))
INDEX_URL  ?= $(or $(PIP_INDEX_URL),$(call PIP_CONFIG,index-url))
UV_INSTALL  = $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c requirements.lock \
              $(foreach link,$(FIND_LINKS),--find-links $(link)) $(if $(INDEX_URL),--index-url $(INDEX_URL))
PIP_INSTALL = $(BIN)/python -m pip install -q -c requirements.lock

# torch first, exactly pinned: on a CPU machine that takes the CPU build; an open range with no torch
# installed would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if $(BIN)/python -m pip install -q "uv==$(UV_VERSION)" && \
	   $(UV_INSTALL) "torch==2.13.0" && $(UV_INSTALL) -e ".[dev,postgres]"; then :; else \
	  echo "uv could not install the locked set (see above): installing with pip (minutes)"; \
	  $(PIP_INSTALL) "torch==2.13.0" && $(PIP_INSTALL) -e ".[dev,postgres]"; \
	fi
	@touch $@

install: $(VENV)/.installed

demo: install
	@test -d .git || (git init -q && git add -A >/dev/null)
	tuneloop data demo --out build/demo.csv --rows $(DEMO_ROWS) --seed 42
	tuneloop data import build/demo.csv
	tuneloop pipeline run
	@echo
	@echo "Validation report:  reports/validation/report.md (summary.json, metrics.json)"
	@echo "Prepared splits:    data/prepared/{train,val,test}.csv, labels.json; quarantine in data/validated/"
	@echo "Raw corpus:         data/raw/corpus.csv, version in data.dvc (dvc push -> dvc-remote/)"
	@echo "Model:              models/candidate/ (tuneloop.json describes it); curves in dvclive/"
	@echo "Evaluation:         reports/eval/ (metrics.json, slices.json, behaviour.json, *.png, predictions.csv)"
	@echo "Gate verdict:       reports/gate/gate.md"
	@echo "Registry:           tuneloop models list"
	@echo "Prefect dashboard:  tuneloop dashboard   (then open http://127.0.0.1:4200: the run and its artifacts)"
	@echo "Serve the champion: tuneloop serve --port 3000   (same as: bentoml serve tuneloop.serve.service:TextClassifier)"
	@echo "   and try:         curl -s -X POST http://127.0.0.1:3000/classify -H 'content-type: application/json' -d '{\"texts\": [\"I lost my card\"]}'"
	@echo "                    curl -s http://127.0.0.1:3000/metadata   (load test: .venv/bin/python bench/serve_load.py)"
	@echo "Drifted traffic:    tuneloop simulate --url http://127.0.0.1:3000 --rows 500 --drift vocabulary --share 0.2 --feedback 0.3"
	@echo "Monitor:            tuneloop monitor run   (verdict: monitoring/state/<task>/verdict.json + summary.md)"
	@echo "Monitoring UI:      tuneloop monitor ui --port 8000   (then open http://127.0.0.1:8000: Evidently, one project per task)"
	@echo "The whole loop:     make loop-demo   (drift -> monitor -> retrain on feedback -> gate -> promote -> the service switches)"
	@tuneloop models list

# The closed loop on the demo champion (run `make demo` first): serve, drifted traffic with feedback, monitor,
# retrain, gate, promote, and the running service switches; prints accuracy before and after.
loop-demo: install
	bash scripts/loop-demo.sh

test: install
	$(BIN)/python -m pytest -q --durations=15

# Unit, data and model tests with the tiny model; the tests marked `integration` (DVC repro, Prefect
# servers and workers, `bentoml serve` processes), `system` (busy cores, injected stalls, processes killed
# mid-run) and `slow` (full weights, ../shared/data) are left out. `make test` runs them all.
test-fast: install
	$(BIN)/python -m pytest -q --durations=10 -m "not integration and not system and not heavy and not slow"

# The fuzz tests of tests/serve/test_service_asgi.py (60 seeded examples each in CI, 2000 unseeded here) and
# tests/monitor/test_hostile_windows.py (a sixth of those: each example runs a whole monitoring assessment). Minutes.
fuzz: install
	TUNELOOP_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest -q tests/serve/test_service_asgi.py -k fuzz
	TUNELOOP_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest -q tests/monitor/test_hostile_windows.py -k any_window

lint: install
	$(BIN)/ruff check src flows
	$(BIN)/ruff format --check src flows
	$(BIN)/mypy src flows

lock:
	rm -rf /tmp/tuneloop-lock && $(PYTHON) -m venv /tmp/tuneloop-lock
	/tmp/tuneloop-lock/bin/pip install -q "torch==2.13.0" && /tmp/tuneloop-lock/bin/pip install -q -e ".[dev,postgres]"
	( head -3 requirements.lock; /tmp/tuneloop-lock/bin/pip freeze --exclude-editable | sed 's/+cpu//' ) > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf build reports data/validated data/prepared dvclive
