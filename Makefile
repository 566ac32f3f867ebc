# Two commands on a fresh machine:
#   make train   -- trains CAMA on the embedded synthetic re-ID data (creates .venv on first use)
#   make test    -- runs the test suite (creates or reuses the same .venv)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: train test env bench

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

env: $(STAMP)

train: $(STAMP)
	$(PY) train.py fit --config configs/cama_synthetic.yaml $(ARGS)

# two workers, whole files each (a module's fixtures are built once): the end-to-end tests' processes
# spend most of their time importing on one core
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile $(ARGS)

bench: $(STAMP)
	$(PY) bench/reid_eval.py
