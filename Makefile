# tfssl: `make train` (set-up + quickstart) and `make test` (set-up + test suite).
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-requirements
RUN ?= runs/quickstart
QUICKSTART ?= configs/fashion_mnist/quickstart.flags
PYTEST_ARGS ?=
# Two test processes (pytest-xdist), whole files per process (module fixtures run once).
PYTEST_WORKERS ?= 2

.PHONY: setup data train test clean

$(STAMP): requirements.txt
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

data:
	@sh tools/install_data.sh

setup: $(STAMP) data

# The quickstart starts over in $(RUN) each time (it is a demonstration; real runs
# resume when the same command is re-run).
train: setup
	rm -rf $(RUN)
	$(PYTHON) -m tfssl.train --flagfile=$(QUICKSTART) --model_dir=$(RUN)
	$(PYTHON) -m tfssl.export --model_dir=$(RUN) --export_dir=$(RUN)/export
	@echo "TensorBoard logs: $(RUN)/tb   (tensorboard --logdir=$(RUN)/tb)"
	@echo "SavedModel:       $(RUN)/export"

test: setup
	$(PYTHON) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) runs
