# Two entry points that work on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Scan the bundled example organization with the shipped baseline.
# Exit status 1 only means "findings at or above --fail-on", which is the point of the demo.
demo: $(STAMP)
	$(BIN)/auditor scan --source examples/org --source examples/k8s --cluster projects/ml-platform-prod/locations/us-central1/clusters/inference --fail-on never

test: $(STAMP)
	$(BIN)/ruff check auditor remediations tests bench
	$(BIN)/mypy
	$(BIN)/pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check auditor remediations tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist *.egg-info
