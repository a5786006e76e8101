# Two commands set everything up: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One stamp per set of extras: `make run` installs the runtime only, `make test` adds the
# dev tools, `make bench` / `make loadtest` add the benchmark tools on top.
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev
BENCH := $(VENV)/.installed-bench

.PHONY: run test clients lint typecheck bench bench-targets loadtest image image-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(RUNTIME)

$(BENCH): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $@ $(DEV) $(RUNTIME)

run: $(RUNTIME)
	@echo "operator commands: $(CURDIR)/$(BIN)/antex (or: export PATH=\"$(CURDIR)/$(BIN):\$$PATH\")"
	$(BIN)/antex serve --demo

# The real CLI clients the integration tests drive, pinned, each in its own npm prefix under
# $(TOOLS)/ (the tests look there first). The stamp is named by version: a bump reinstalls.
TOOLS := .tools
NPM ?= $(shell command -v npm)

define npm_client  # folder, package, version
$(TOOLS)/$(1)/.installed-$(3):
	rm -rf $(TOOLS)/$(1)
	$(NPM) install --prefix $(TOOLS)/$(1) --save-exact --no-audit --no-fund --loglevel=error $(2)@$(3)
	touch $$@
CLIENT_STAMPS += $(TOOLS)/$(1)/.installed-$(3)
endef

$(eval $(call npm_client,claude-code,@anthropic-ai/claude-code,2.1.332))
$(eval $(call npm_client,claude-code-2.1.197,@anthropic-ai/claude-code,2.1.197))
$(eval $(call npm_client,codex,@openai/codex,0.171.0))
$(eval $(call npm_client,opencode,opencode-ai,1.18.33))
# OpenCode installs this into its config folder on first start; the tests seed it from here.
$(eval $(call npm_client,opencode-plugin,@opencode-ai/plugin,1.18.33))

ifeq ($(NPM),)
clients:
	@echo "npm not found: the Claude Code, Codex and OpenCode tests will skip"
else
clients: $(CLIENT_STAMPS)
endif

test: $(DEV) clients
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: $(DEV)
	$(BIN)/ruff check .

typecheck: $(DEV)
	$(BIN)/mypy

bench: $(BENCH)
	$(BIN)/python -m bench.run

# The hot-path targets alone (CPU and req/s vs bare, added latency, Valkey round trips, RSS
# per stream, wrong-secret flood) with a pass/fail table: about 5 minutes.
bench-targets: $(BENCH)
	$(BIN)/python -m bench.targets

loadtest: $(BENCH)
	$(BIN)/python -m loadtests.run

# The container image; `make image BASE=...` picks another Python base image.
BASE ?= python:3.11-slim
image:
	podman build --format docker --build-arg BASE=$(BASE) -t antex-gateway:latest -f Containerfile .

# Offline proof of the image (root, podman, runc, debootstrap); not part of `make test`.
image-test: $(RUNTIME)
	PY=$(BIN)/python ops/image-test.sh

clean:
	rm -rf $(VENV) $(TOOLS) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
