# Everything runs inside .venv, created on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.deps-installed

.PHONY: help run test test-rust test-python lint fmt bench develop develop-release clean browser

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements-dev.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $(STAMP)

develop: $(STAMP) ## Build the engine (debug) into .venv
	$(BIN)/maturin develop -q

develop-release: $(STAMP) ## Build the engine (release) into .venv
	$(BIN)/maturin develop -q --release

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

test-python: develop browser ## pytest suites
	$(BIN)/python -m pytest -q

test: lint test-rust test-python ## Everything CI runs

bench: develop-release ## Benchmarks: engine against a bare Python loop, same run
	$(BIN)/python benches/run.py
	$(BIN)/python benches/cluster.py
	$(BIN)/python benches/resilience.py
	$(BIN)/python benches/kafka.py
	$(BIN)/python benches/star_leaders.py

clean: ## Remove build products and the venv
	rm -rf target $(VENV) artifacts
