# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint clean

# torch==2.13.0 goes in first and explicitly: it is the CPU wheel on this machine's disk, and
# letting pip choose a torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/bertkit demo

test: $(STAMP)
	$(VENV)/bin/ruff check bertkit tests benchmarks
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV)
