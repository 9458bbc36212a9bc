# Two commands do all the set-up on a fresh machine:
#   make demo   install, then train -> backtest -> report on the embedded EURUSD data
#   make test   install, then run the whole test suite (exactly what CI runs)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: install install-dev demo test lint gpu-check screenshot clean

# `make demo` installs only what the demo needs (the package); `make test` adds `.[dev]`
# (pytest, hypothesis, ruff, pyarrow, Ray).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/mlkv-trader demo

test: install-dev
	$(PY) -m pytest -q

lint: install-dev
	$(VENV)/bin/ruff check .

# on a machine with one GPU (< 8 min): the cuda tests and the GPU figures as one markdown
# table (docs/benchmarks.md, "GPU check"); without CUDA it says so and exits 0
gpu-check: install-dev
	$(PY) -m experiments.studies.bench.gpu_check

# docs/report.png: the ar1 demo's report, rendered by headless Chromium (needs `chromium`)
REPORT ?= runs/demo/ar1/ar1_ppo/report.html
screenshot:
	test -f $(REPORT) || $(VENV)/bin/mlkv-trader demo --market ar1
	chromium --headless --no-sandbox --hide-scrollbars --window-size=860,1400 \
		--screenshot=$(CURDIR)/docs/report.png file://$(abspath $(REPORT))

clean:
	rm -rf $(VENV) runs .pytest_cache
