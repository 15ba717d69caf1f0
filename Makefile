# Every target builds and uses the project's own virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed
LINT_STAMP := $(VENV)/.lint-installed
RELEASE_STAMP := $(VENV)/.release-installed
# Folders that ruff checks. mypy checks the package that pyproject.toml names.
LINT_PATHS := airflow_provider_sepa dags tests benchmarks .ci
PIP_VERSION := 26.3

.PHONY: venv test demo emulator constraints bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "pip==$(PIP_VERSION)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $(STAMP)

## test: run unit, emulator, integration and DAG tests, and system tests against `airflow standalone`.
test: $(STAMP)
	$(BIN)/python -m pytest

## docs: build the HTML documentation into docs/_build/html; any Sphinx warning fails the build.
.PHONY: docs
docs: $(DOCS_STAMP)
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

$(DOCS_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[docs]"
	touch $(DOCS_STAMP)

## test-floor: run the test suite on the lowest supported Airflow release, in .venv-floor.
.PHONY: test-floor
test-floor: .venv-floor/.installed
	.venv-floor/bin/python -m pytest

.venv-floor/.installed: pyproject.toml constraints-floor.txt
	$(PYTHON) -m venv .venv-floor
	.venv-floor/bin/python -m pip install --quiet --disable-pip-version-check "pip==$(PIP_VERSION)"
	.venv-floor/bin/python -m pip install --quiet --disable-pip-version-check -c constraints-floor.txt -e ".[test]"
	touch .venv-floor/.installed

## lint: check style and formatting with ruff, and the package's types with mypy in strict mode.
.PHONY: lint
lint: $(LINT_STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

$(LINT_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[lint]"
	touch $(LINT_STAMP)

## dist: build the wheel and sdist into dist/, check their metadata with twine and the wheel's files.
## The isolated build environment gets its setuptools version from constraints.txt.
.PHONY: dist dist-check
dist: $(RELEASE_STAMP)
	rm -rf dist build
	PIP_CONSTRAINT="$(CURDIR)/constraints.txt" $(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*
	$(BIN)/python .ci/check_wheel.py dist/*.whl

## dist-check: install the wheel from dist/ into a throwaway venv and check that Airflow lists the
## provider and the connection type emporix. It takes 20 to 60 s, depending on pip's cache.
dist-check: $(STAMP)
	$(BIN)/python .ci/check_install.py dist/*.whl --python $(PYTHON) --pip-version $(PIP_VERSION)

$(RELEASE_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[release]"
	touch $(RELEASE_STAMP)

## demo: run the nightly DAG against the local emulator; files land under exports/.
demo: $(STAMP)
	$(BIN)/python -m airflow_provider_sepa.emulator.demo --dags-folder dags --output exports

## emulator: start the local API emulator on 127.0.0.1:8765 and print its client secret.
emulator: $(STAMP)
	$(BIN)/python -m airflow_provider_sepa.emulator --port 8765 --print-secret

## airflow: run Airflow 3 with `airflow standalone` and the emulator on 127.0.0.1, with the
## connection, pool and Variables of the sample DAGs; state stays in .airflow/. Ctrl+C stops it.
.PHONY: airflow
airflow: $(STAMP)
	$(BIN)/python -m tests.system.standalone

## screenshots: save screenshots of the Airflow UI's forms to docs/images/ with headless Chromium
## from Debian's chromium package (apt-get install -y chromium).
.PHONY: screenshots
screenshots: $(STAMP)
	$(BIN)/python -m tests.system.screenshots

## bench: measure import cost, requests per export, download speed and memory, and many waiting triggers;
## builds .venv-bench with reference providers once, appends results to docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --base-python $(PYTHON) --record docs/benchmarks.md

## constraints: pin the versions of a fresh install into constraints.txt.
constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/python -m pip install --quiet "pip==$(PIP_VERSION)"
	.venv-constraints/bin/python -m pip install --quiet ".[test,docs,lint,release]" "setuptools>=77.0.3"
	{ echo "# Exact versions installed by 'make venv', 'make docs', 'make lint' and 'make dist' (Python 3.11),"; \
	  echo "# so every machine tests and builds with the same set. setuptools is the build backend that"; \
	  echo "# 'make dist' installs in its isolated build environment."; \
	  echo "# Regenerate with 'make constraints' after changing dependencies in pyproject.toml."; \
	  .venv-constraints/bin/python -m pip freeze --all --exclude pip --exclude airflow-provider-sepa; } > constraints.txt
	rm -rf .venv-constraints

clean:
	rm -rf $(VENV) build dist *.egg-info exports .airflow .pytest_cache docs/_build
