# Two commands do all the set-up on a fresh machine with Python 3.11 and pip:
#   make demo   creates .venv, installs convlens, runs `convlens demo` (writes demo-out/index.html;
#               about a CPU minute; `make demo DEMO_ARGS=--full` for everything)
#   make test   installs the dev extras, runs the whole test suite
# Running either again reinstalls nothing unless pyproject.toml changed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= demo-out
PYTEST_ARGS ?=

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.stamp-install: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-install
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# glibc keeps freed memory instead of returning it to the OS (the demo spent 40% of its CPU
# time in the kernel without this); `convlens demo` sets the same with mallopt at start.
# DEMO_ARGS=--full shows every method and the live feature gallery (about 10 CPU minutes).
DEMO_ARGS ?=
demo: $(VENV)/.stamp-install
	MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 \
	  $(BIN)/convlens demo --out $(OUT) $(DEMO_ARGS)

# The browser tests (tests/app/test_browser.py) drive the system's Chromium through Playwright
# (Playwright's own browser download is not used); without /usr/bin/chromium they skip, unless
# CONVLENS_REQUIRE_BROWSER=1 (CI) makes that a failure. The example notebooks run too.
# The Ray engine's tests (tests/engines/test_ray.py) start one local Ray instance in one test
# process (--dist loadgroup keeps them together); without Ray they skip, unless
# CONVLENS_REQUIRE_RAY=1 (CI).
test: $(VENV)/.stamp-dev
	$(BIN)/ruff check src tests benchmarks examples/render.py examples/screenshot_app.py
	@test -x /usr/bin/chromium || test -n "$$CONVLENS_CHROMIUM" || \
	  echo "note: browser tests will skip: apt-get install chromium (or set CONVLENS_CHROMIUM)"
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

bench: $(VENV)/.stamp-dev
	MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 \
	  $(BIN)/python benchmarks/bench_attribution.py

clean:
	rm -rf $(VENV) $(OUT) convlens-out .pytest_cache
