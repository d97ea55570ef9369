# A fresh clone needs only `make run` (install + whole pipeline) or `make test` (install + tests).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test ops serve promote rollback deps

install: $(VENV)/.installed

# Re-installs when pyproject.toml changes. pip, not uv/poetry: only pip finds the local torch wheels.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

run: install
	$(BIN)/python -m flows.pipeline

test: install
	$(BIN)/python -m pytest

# The operations stack: Prefect server + deployments + worker, Evidently UI (README, "Operating it").
ops: install
	$(BIN)/python -m flows.ops

# The production model as a long-running service on ops.service_port, following promotion and rollback.
serve: install
	$(BIN)/python -m tasks.production serve

# Production pointer (deploy/production.json): the gate-passed challenger in, or the previous model back.
promote: install
	$(BIN)/python -m tasks.production promote

rollback: install
	$(BIN)/python -m tasks.production rollback

# dvc.yaml code deps from the imports: run after adding, moving or changing imports of a module.
deps: install
	$(BIN)/python -m tasks.common.code_deps --write
