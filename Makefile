# A fresh clone needs only `make run` (install + whole pipeline) or `make test` (install + tests).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DOCS_ASSETS := .cache/docs_assets

.PHONY: install run test test-all ops serve review promote rollback tune tune-dashboard deps

install: $(VENV)/.installed $(DOCS_ASSETS)/.installed

# Re-installs when pyproject.toml changes. pip, not uv/poetry: only pip finds the local torch wheels.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

# The CSS/JS that Great Expectations' Data Docs load from CDNs, at the versions pinned in
# tasks/data/docs_assets; the validate stage copies them into the docs (tasks/data/data_docs_offline.py).
# Without npm the docs keep their CDN links and need a network to show styled.
$(DOCS_ASSETS)/.installed: $(addprefix tasks/data/docs_assets/,package.json package-lock.json .npmrc)
	@if ! command -v npm >/dev/null; then echo "npm not found: Data Docs will load their CSS/JS from CDNs"; \
	else mkdir -p $(DOCS_ASSETS) && cp $^ $(DOCS_ASSETS)/ && \
	npm ci --prefix $(DOCS_ASSETS) --silent --no-audit --no-fund --ignore-scripts && touch $@; fi

run: install
	$(BIN)/python -m flows.pipeline

# Two layers (docs/testing.md); ARGS passes pytest options, e.g. make test-all ARGS="-m serving" (one area).
# make test: every test not marked slow, the flow's end-to-end run and the served Bento included (about 4 min here).
test: install
	$(BIN)/python -m pytest -m "not slow" -n 2 --dist loadgroup --durations=10 $(ARGS)

# make test-all: every test, in two workers; a skipped test fails the run (.ci/run calls this).
test-all: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup --fail-on-skip --durations=25 $(ARGS)

# The operations stack: Prefect server + deployments + worker, Evidently UI (docs/operations.md).
ops: install
	$(BIN)/python -m flows.ops

# Label Studio on ops.label_studio_port, where people review suspect labels and uncertain served images
# (docs/labelling.md); installed into an environment of its own on first use. `make ops` starts it too.
review: install
	$(BIN)/python -m flows.review serve

# The production model as a long-running service on ops.service_port, following promotion and rollback.
serve: install
	$(BIN)/python -m tasks.production serve

# Production pointer (deploy/production.json): the gate-passed challenger in, or the previous model back.
promote: install
	$(BIN)/python -m tasks.production promote

rollback: install
	$(BIN)/python -m tasks.production rollback

# An Optuna search of the train recipe over tune.space (params.yaml), on train and val; it continues a
# study run before on the same split (docs/training.md, "Finding a better recipe").
tune: install
	$(BIN)/python -m tasks.tune

# optuna-dashboard on the study (journal file or IMGCLF_TUNE_STORAGE) at http://127.0.0.1:8084
tune-dashboard: install
	$(BIN)/python -m tasks.tune --dashboard

# dvc.yaml code deps from the imports: run after adding, moving or changing imports of a module.
deps: install
	$(BIN)/python -m tasks.common.code_deps --write
