# Everything runs inside .venv, created on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.deps-installed

.PHONY: help run test test-rust test-python test-fast lint fmt bench develop develop-release clean browser prereqs

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

prereqs: ## Check the build's prerequisites (apt-installs missing Debian packages as root)
	@sh scripts/prereqs.sh $(PY)

$(STAMP): pyproject.toml requirements-dev.txt
	@$(MAKE) --no-print-directory prereqs
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $(STAMP)

# No -q: cargo's progress shows (a first build takes minutes).
develop: $(STAMP) ## Build the engine (debug) into .venv
	$(BIN)/maturin develop

develop-release: $(STAMP) ## Build the engine (release) into .venv
	@echo "building the engine (release; the first build takes several minutes)"
	$(BIN)/maturin develop --release

run: develop-release ## Run the star leaders example on the embedded defaults
	$(BIN)/python -m wallaroo star_leaders

lint: $(STAMP) ## cargo fmt --check, clippy -D warnings, ruff
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	$(BIN)/ruff check python tests benches

fmt: $(STAMP) ## Format Rust and Python
	cargo fmt
	$(BIN)/ruff check --fix python tests benches

test-rust: ## Rust unit tests
	cargo test --lib

browser: ## Install headless Chromium (Debian package) for the dashboard UI test
	@if command -v chromium >/dev/null 2>&1; then \
		echo "chromium already installed: $$(command -v chromium)"; \
	else \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	fi

# Two pytest workers (xdist; tests/conftest.py says what that asks of a test).
# --dist loadscope keeps a module's tests on one worker, so a module-scoped
# fixture (a cluster run several tests check) runs once. The chaos runs
# (kill -9, minutes each) come second, spread over both workers. pytest exits
# 5 when it collected no test, and make fails on it like on any other error.
PYTEST := $(BIN)/python -m pytest -q -n 2 --durations=15

test-python: develop browser ## pytest suites (apt-installs Chromium for the UI tests)
	$(PYTEST) --dist loadscope -m "not chaos"
	$(PYTEST) -m chaos

test-fast: develop ## pytest without the chaos runs
	$(PYTEST) --dist loadscope -m "not chaos"

test: lint test-rust test-python ## Everything CI runs

bench: develop-release ## Benchmarks: engine against a bare Python loop, same run
	$(BIN)/python benches/run.py
	$(BIN)/python benches/cluster.py
	$(BIN)/python benches/resilience.py
	$(BIN)/python benches/kafka.py
	$(BIN)/python benches/star_leaders.py --events 300000 --workers 1,2
	$(BIN)/python benches/star_leaders.py --events 300000 --workers 2 --partitions 2
	$(BIN)/python benches/windows.py
	$(BIN)/python benches/startup.py
	$(BIN)/python benches/breakdown.py --wall-events 300000 --repeat 3

clean: ## Remove build products and the venv
	rm -rf target $(VENV) artifacts
