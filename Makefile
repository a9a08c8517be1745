# compactsearch — set up, test, lint, benchmark.
#   make test     create .venv if missing (CPU torch only where no torch is installed), install, run the tests
#   make demo     the whole loop on the bundled tiny model, on the CPU: profile -> search -> validate -> evaluate
#   make lint     ruff
#   make bench-cpu  CPU benchmarks (mask build speed, search speed)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint env bench-cpu clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# Keep an installed torch (e.g. a CUDA build on a GPU machine); otherwise take the CPU build 2.13.0.
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

env: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	TRITON_INTERPRET=1 $(PY) -m pytest -q

demo: $(STAMP)
	PYTHON=$(PY) bash scripts/demo.sh recipes/tiny.yaml --out demo-out

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench-cpu: $(STAMP)
	$(PY) benchmarks/masks.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
