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

# The console's accessibility check runs axe-core (npm) in the browser the console tests drive.
AXE = tests/console/node_modules/.installed
$(AXE): tests/console/package-lock.json
	@if command -v npm >/dev/null; then \
	  cd tests/console && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm not found: the console tests will skip (apt-get install nodejs npm)"; fi

# The single sign-on tests run a real OpenID Connect provider (panva's oidc-provider, on Node.js).
OIDC_PROVIDER = tests/oidc_provider/node_modules/.installed
# Without npm those tests skip and say so (CI requires them: SHANZHI_REQUIRE_OIDC=1).
$(OIDC_PROVIDER): tests/oidc_provider/package-lock.json
	@if command -v npm >/dev/null; then \
	  cd tests/oidc_provider && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm not found: the single sign-on tests will skip (apt-get install nodejs npm)"; fi

# Real VMs (tests/e2e/test_vms.py): QEMU, libvirt, the cloud kernel and busybox from Debian, and
# libvirt-python; nftables for tenant networks (tests/network); Patroni and etcd for DR (tests/dr);
# Chromium for the console's browser tests (tests/console); Prometheus for the scrape test. Installed here when run as root with apt-get (CI); otherwise the VM tests skip
# and say what to install (CI never skips: SHANZHI_REQUIRE_VM=1).
VM_PACKAGES = qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-dev pkg-config \
              linux-image-cloud-amd64 busybox-static xorriso cpio nftables conntrack \
              patroni etcd-server etcd-client chromium prometheus
VMSTAMP = $(VENV)/.installed-vm
$(VMSTAMP): pyproject.toml $(STAMP)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing what real VMs need: $(VM_PACKAGES) (a minute the first time) ..."; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends $(VM_PACKAGES) >/dev/null \
	    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(VM_PACKAGES) >/dev/null; } \
	    && $(BIN)/python -m pip install -q -e '.[dev,vm]' && touch $(VMSTAMP); \
	else \
	  echo "Not root: the VM tests will skip. To run them: apt-get install $(VM_PACKAGES); $(BIN)/pip install -e '.[vm]'"; \
	fi

test: $(VMSTAMP) lint $(OIDC_PROVIDER) $(AXE)
	$(BIN)/python tests/pg_probe.py
	$(BIN)/python -m pytest -p no:cacheprovider -n 2 --reruns 1 --reruns-delay 2

bench: $(STAMP)
	$(BIN)/python bench/reconcile.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
