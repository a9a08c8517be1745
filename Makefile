# compactsearch — set up, test, lint, benchmark.
#   make test     create .venv if missing (CPU torch only where no torch is installed), install, run the tests
#   make demo     the whole loop on the bundled tiny model, on the CPU: profile -> search -> validate -> evaluate
#   make lint     ruff
#   make bench-cpu  CPU benchmarks (mask build speed, search speed)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint env bench-cpu clean browser

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# Keep an installed torch (e.g. a CUDA build on a GPU machine); otherwise take the CPU build 2.13.0.
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

env: $(STAMP)

# The report's browser test needs Chromium: installed here when missing and possible (root with apt-get);
# otherwise (or with COMPACTSEARCH_NO_BROWSER=1) that test runs the report's static checks only, and says so.
BROWSERS := chromium chromium-browser google-chrome google-chrome-stable
have_browser = $(firstword $(foreach b,$(BROWSERS),$(shell command -v $(b) 2>/dev/null)))

browser:
	@if [ -z "$(have_browser)" ] && [ "$$COMPACTSEARCH_NO_BROWSER" != 1 ] && [ "$$(id -u)" = 0 ] \
	    && command -v apt-get >/dev/null; then \
	  echo "make: installing chromium for the report's browser test (apt-get)"; \
	  (timeout 600 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq \
	    chromium >/dev/null) || echo "make: could not install chromium"; \
	fi

test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	@if [ -n "$(have_browser)" ] || [ "$$COMPACTSEARCH_NO_BROWSER" = 1 ]; then \
	  TRITON_INTERPRET=1 $(PY) -m pytest -q; \
	else \
	  echo "make test: no Chromium: the report's browser test runs its static checks only (install chromium," \
	    "e.g. apt-get install chromium, to open the report in a browser too)"; \
	  COMPACTSEARCH_NO_BROWSER=1 TRITON_INTERPRET=1 $(PY) -m pytest -q; \
	fi

demo: $(STAMP)
	PYTHON=$(PY) bash scripts/demo.sh recipes/tiny.yaml --out demo-out

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench-cpu: $(STAMP)
	$(PY) benchmarks/masks.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
