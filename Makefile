# Everyday entry points. Every target creates the virtual environment first when it is missing.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# nbgrader runs the `alembic` executable and notebooks start `python` kernels: use the venv's.
export PATH := $(BIN):$(PATH)
export PYTHONHASHSEED := 0
STAMP := $(VENV)/.installed-stamp
BOOK_FLAGS := --all -W -n --keep-going
ASSIGNMENTS := $(notdir $(wildcard solutions/*))

.PHONY: install book book-clean test lint release clean distclean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0 -c constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' -c constraints.txt
	@touch $@

## Build the book into _build/html, executing every chapter (experiments reuse .cache/ when unchanged).
book: install
	jupyter-book build $(BOOK_FLAGS) .

## Build the book from an empty _build, as CI does.
book-clean: install
	rm -rf _build
	jupyter-book build $(BOOK_FLAGS) .

## The whole suite: lint, a clean book build, then every test (autograder round trips included).
test: install
	ruff check .
	ruff format --check .
	$(MAKE) --no-print-directory book-clean
	python -m pytest

lint: install
	ruff check .
	ruff format --check .

## Regenerate the student notebooks in exercises/ from solutions/ with nbgrader.
release: install
	@for a in $(ASSIGNMENTS); do \
	  nbgrader generate_assignment "$$a" --force --no-db --log-level=WARN; \
	done

clean:
	rm -rf _build .pytest_cache .ruff_cache gradebook.db .nbgrader.log

distclean: clean
	rm -rf $(VENV) .cache
