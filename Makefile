# The course's two commands: `make lab` (set up, open the course) and `make test` (set up, run every check).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# `make lab` installs what the course needs; `make test` adds the test-only tools. Each has its stamp.
COURSE_STAMP := $(VENV)/.course-stamp
TEST_STAMP := $(VENV)/.test-stamp
JOBS ?= 2

.PHONY: lab test quick setup reset lint clean exercises chromium book

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade -c constraints.txt pip

$(COURSE_STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[course]"
	@touch $(COURSE_STAMP)

$(TEST_STAMP): $(COURSE_STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[course,test]"
	@touch $(TEST_STAMP)

setup: $(COURSE_STAMP)

# The course as a website: the lessons executed (outputs cached in build/book/_build/.jupyter_cache,
# so a rebuild re-executes only the lessons that changed), built by Jupyter Book 1 into
# build/book/_build/html (open index.html; any static file server will do). The lessons run in the
# environment `make test` runs them in (chapter 01 compares with HF transformers); the test extra
# includes the book extra.
book: $(TEST_STAMP)
	$(PY) -m minimoe.course.book build --out build/book

# JupyterLab on the whole course, opened at chapter 00 (notebooks/00_start_here.ipynb). Your work
# lives in workspace/ (git-ignored), filled from the course on the first run and never overwritten;
# the link printed (and, on a desktop, opened) carries the server's token.
lab: $(COURSE_STAMP)
	$(PY) -m minimoe lab

# Put the shipped version of one notebook back in workspace/ (yours moves to workspace/backups/):
#   make reset NB=exercises/01_dense_to_experts.ipynb
reset: $(COURSE_STAMP)
	@test -n "$(NB)" || { echo "usage: make reset NB=exercises/01_dense_to_experts.ipynb"; exit 2; }
	$(PY) -m minimoe lab --reset "$(NB)"

# Lint, formatting (ruff format, never by hand), the core's types (mypy; the files are listed in
# pyproject.toml), and notebooks stored without outputs. .pre-commit-config.yaml runs the same.
lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check minimoe tests notebooks solutions exercises
	$(VENV)/bin/ruff format --check minimoe tests
	$(VENV)/bin/mypy
	$(PY) -m minimoe.course.notebooks check-clean notebooks solutions exercises

# The browser tests drive the system's Chromium. Installed with apt-get where it is missing and we
# are root (as on CI); elsewhere the browser tests skip and print why.
chromium:
	@if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium with apt-get (for the browser tests)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "chromium could not be installed: the browser tests will skip"; \
	else echo "chromium is missing and this is not root: the browser tests will skip"; fi

# Every check: lint, stripped notebooks, unit + parity tests, notebooks via nbval, grading, browser.
test: lint chromium
	$(PY) -m pytest -n $(JOBS) --dist loadfile -m "not browser" tests
	$(PY) -m pytest -m browser tests
	$(PY) -m pytest -n $(JOBS) --dist loadfile -p no:randomly --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=600 notebooks solutions exercises

# The inner loop: unit tests only, no notebooks, no parity, no browser.
quick: $(TEST_STAMP)
	$(PY) -m pytest -n $(JOBS) -m "not slow and not browser" tests

# Rewrite exercises/ from solutions/ (a test fails when they are stale).
exercises: $(COURSE_STAMP)
	$(PY) -m minimoe.course.notebooks generate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
