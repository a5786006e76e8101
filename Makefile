# Two commands set everything up: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench loadtest image image-test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/antex serve --demo

test: $(STAMP)
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

# The container image; `make image BASE=...` picks another Python base image.
BASE ?= python:3.11-slim
image:
	podman build --format docker --build-arg BASE=$(BASE) -t antex-gateway:latest -f Containerfile .

# Offline proof of the image (root, podman, runc, debootstrap); not part of `make test`.
image-test: $(STAMP)
	PY=$(BIN)/python ops/image-test.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
