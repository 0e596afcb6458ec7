# Two commands do everything on a fresh clone: `make repro` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install repro test test-fast lint ui serve dashboard chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the pinned versions or the package metadata change.
$(STAMP): $(BIN)/python requirements.lock pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The page `dvc plots show` fills (.dvc/config plots.html_template): vega, vega-lite and vega-embed inlined from
# the pinned django-js-lib-vega-embed package, so the plots draw with no network. Generated, not committed.
PLOTS_PAGE := .dvc/plots/page.html
$(PLOTS_PAGE): $(STAMP) .dvc/plots/page.in.html scripts/build_plots_page.py
	$(BIN)/python scripts/build_plots_page.py

install: $(STAMP) $(PLOTS_PAGE)

repro: install
	$(BIN)/dvc repro

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two pytest workers (pytest-xdist), one test module each at a time: its module fixtures are built once.
TEST_WORKERS ?= 2
test: install lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadscope

test-fast: install
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadscope -m "not slow"

# Kills a small study (dvc repro, dlpipe promote) at random moments and checks it ends as an uninterrupted one
# (benchmarks/chaos.py); not part of `make test`. KILLS and SEED choose how many kills and which.
KILLS ?= 24
SEED ?= 0
chaos: install
	$(BIN)/python benchmarks/chaos.py --kills $(KILLS) --seed $(SEED)

# One worker and no job runner (GenAI evaluation jobs): starts and stops faster on a small machine. MLflow 3 opens
# an experiment as a GenAI project unless the URL says workflowType=machine_learning, and its experiment list's links
# drop that: open the printed link, the study's own page (before the first select: the list, then add the mode).
UI_URL := http://127.0.0.1:5000/\#/experiments?workflowType=machine_learning
# MLflow 3.17's server imports Starlette's deprecated WSGI middleware: its warning is MLflow's to act on, not the user's.
QUIET_MLFLOW := PYTHONWARNINGS=ignore::UserWarning:mlflow.server.fastapi_app
ui: install
	-$(BIN)/dlpipe relocate  # a moved or copied project: its store first points at its own mlruns/
	@echo "MLflow UI, the study in model-training view: $$($(BIN)/dlpipe runs --link 2>/dev/null || echo '$(UI_URL)')"
	$(QUIET_MLFLOW) MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui \
		--backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root ./mlruns/artifacts \
		--host 127.0.0.1 --port 5000 --workers 1

# A registered model served by MLflow on this machine (its uvicorn is the venv's: PATH above). MODEL picks another.
MODEL ?= models:/dlpipe-digits@champion
SERVE_PORT ?= 5001
serve: install
	-$(BIN)/dlpipe relocate
	$(QUIET_MLFLOW) MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlruns/mlflow.db $(BIN)/mlflow models serve \
		-m "$(MODEL)" --env-manager local -h 127.0.0.1 -p $(SERVE_PORT)

# optuna-dashboard on the study storage (tune.storage, else optuna/journal.log), on this machine only.
DASHBOARD_PORT ?= 8080
dashboard: install
	$(BIN)/dlpipe dashboard --host 127.0.0.1 --port $(DASHBOARD_PORT)

clean:
	rm -rf data/raw data/prepared reports models optuna .pytest_cache
