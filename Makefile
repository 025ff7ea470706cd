# The two commands: `make run` (Shanzhi on the embedded default with demo data) and
# `make test` (the whole suite: lint, types, layers, tests on SQLite and PostgreSQL).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
RUNSTAMP = $(VENV)/.installed-run
PORT   ?= 8700
export SHANZHI_HOME ?= $(HOME)/.local/share/shanzhi

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# `make test` needs the development tools; `make run` only what running needs.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP) $(RUNSTAMP)

$(RUNSTAMP): pyproject.toml | $(BIN)/python
	@echo "Installing Shanzhi and what it needs to run into $(VENV) (a minute or two the first time) ..."
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -e .
	touch $(RUNSTAMP)

run: $(RUNSTAMP)
	@echo "Starting the demo; in another terminal use $(BIN)/shanzhi (or: source $(BIN)/activate)"
	$(BIN)/shanzhi serve --demo --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# The single sign-on tests run a real OpenID Connect provider (panva's oidc-provider, on Node.js).
OIDC_PROVIDER = tests/oidc_provider/node_modules/.installed
# Without npm those tests skip and say so (CI requires them: SHANZHI_REQUIRE_OIDC=1).
$(OIDC_PROVIDER): tests/oidc_provider/package-lock.json
	@if command -v npm >/dev/null; then \
	  cd tests/oidc_provider && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm not found: the single sign-on tests will skip (apt-get install nodejs npm)"; fi

test: lint $(OIDC_PROVIDER)
	$(BIN)/python tests/pg_probe.py
	$(BIN)/python -m pytest -p no:cacheprovider -n 2 --reruns 1 --reruns-delay 2

bench: $(STAMP)
	$(BIN)/python bench/reconcile.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
