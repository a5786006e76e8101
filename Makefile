# Two commands set everything up: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test clients lint typecheck bench loadtest clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

run: $(STAMP)
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

test: $(STAMP) clients
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.run

loadtest: $(STAMP)
	$(BIN)/python -m loadtests.run

clean:
	rm -rf $(VENV) $(TOOLS) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
