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
CHAPTERS := $(shell grep -l '^```{code-cell}' book/*.md)

.PHONY: install system-packages book-system-packages book book-clean test lint release notebooks clean distclean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0 -c constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' -c constraints.txt
	@touch $@

# What the chapters' outputs depend on besides their own code cells. Jupyter Book's execution
# cache (_build/.jupyter_cache) only notices edits to code cells, so it is dropped when these change.
BOOK_INPUTS := bncourse solutions exercises nbgrader_config.py

## Build the book into _build/html, executing every chapter whose outputs may have changed: first in
## parallel into the execution cache (scripts/execute_chapters.py), then the build reads the cache.
book: book-system-packages install
	@hash=$$(find $(BOOK_INPUTS) -type f \( -name '*.py' -o -name '*.ipynb' \) \
	    -not -path '*/__pycache__/*' -not -path '*/.ipynb_checkpoints/*' -print0 \
	  | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1); \
	if [ "$$(cat _build/.book-inputs 2>/dev/null)" != "$$hash" ]; then \
	  rm -rf _build/.jupyter_cache; \
	fi; \
	python scripts/execute_chapters.py _build/.jupyter_cache $(CHAPTERS); \
	jupyter-book build $(BOOK_FLAGS) .; \
	echo "$$hash" > _build/.book-inputs

## Build the book from an empty _build, as CI does.
book-clean: install
	rm -rf _build
	$(MAKE) --no-print-directory book

## Debian packages the tests need (the sandbox, Chromium, PostgreSQL), installed when missing;
## the book needs the sandbox only (its chapter for instructors grades in it). Checked before
## the (slow) set-up of .venv, so a missing package stops `make` in its first seconds.
system-packages:
	@bash scripts/system-packages.sh test

book-system-packages:
	@bash scripts/system-packages.sh book

## The whole suite: lint, a clean book build, then every test (autograder round trips included),
## each test file on one of three processes (many tests wait on kernels and browsers, so three
## keep two cores busy).
test: system-packages install
	ruff check .
	ruff format --check .
	$(MAKE) --no-print-directory book-clean
	python -m pytest -n 3 --dist loadfile

lint: install
	ruff check .
	ruff format --check .

## Regenerate the student notebooks in exercises/ from solutions/ with nbgrader, and the test
## versions installed with the package for `bncourse check` (bncourse/instructor/assignments/),
## and the package's copy of the book's URL (bncourse/published.py, from _config.yml).
release: install
	python scripts/setup_cells.py
	python scripts/book_url.py
	@for a in $(ASSIGNMENTS); do \
	  nbgrader generate_assignment "$$a" --force --no-db --log-level=WARN; \
	done
	python -m bncourse.instructor.packaged solutions

## Write book/<chapter>.ipynb, the notebook twin (no outputs) of every chapter that runs code: the
## book's Colab and Binder buttons open it. The chapters' .md files stay the source.
notebooks: install
	python scripts/setup_cells.py
	@for f in $(CHAPTERS); do jupytext --quiet --to ipynb "$$f"; done

clean:
	rm -rf _build .pytest_cache .ruff_cache gradebook.db .nbgrader.log

distclean: clean
	rm -rf $(VENV) .cache
