# The course's two commands: `make lab` (set up, open the course) and `make test` (set up, run every check).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
JOBS ?= 2

.PHONY: lab test quick setup lint clean exercises chromium

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade -c constraints.txt pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	@touch $(STAMP)

setup: $(STAMP)

# Opens JupyterLab on the first chapter; with no display it prints the URL to open instead.
lab: setup
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ] || [ "$$(uname)" = Darwin ]; then browser=; else browser=--no-browser; fi; \
	if [ "$$(id -u)" = 0 ]; then root=--allow-root; else root=; fi; \
	$(VENV)/bin/jupyter lab $$browser $$root notebooks/00_start_here.ipynb

lint: setup
	$(VENV)/bin/ruff check minimoe tests notebooks solutions exercises
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
quick: setup
	$(PY) -m pytest -n $(JOBS) -m "not slow and not browser" tests

# Rewrite exercises/ from solutions/ (a test fails when they are stale).
exercises: setup
	$(PY) -m minimoe.course.notebooks generate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
