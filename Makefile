# Developer entry points. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Pytest workers: the suite is CPU-bound; one per core.
JOBS   ?= $(shell $(PYTHON) -c "import os; print(min(4, os.cpu_count() or 1))")

.PHONY: venv demo compress-demo test test-all bench bench-real gpu-check-prepare coverage runtime-bundle clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned: pip takes the CPU build from the machine's local index.
	$(PY) -m pip install --quiet -e ".[compile,tvm,rpc,sign,test]"
	# The HLS target needs only the Xilinx ap_types headers that ship inside the hls4ml wheel;
	# --no-deps keeps its heavy ML dependencies out.
	$(PY) -m pip install --quiet --no-deps hls4ml==1.3.0
	touch $(STAMP)

demo: venv
	$(PY) examples/demo.py

compress-demo: venv
	$(PY) examples/compress_demo.py

test: venv
	$(PY) -m pytest -q -n $(JOBS) -m "not slow" tests

test-all: venv
	$(PY) -m pytest -q -n $(JOBS) tests

bench: venv
	$(PY) bench/bench.py

bench-real: venv
	$(PY) bench/bench_real.py

# The folder to copy to a GPU machine (sm_90): cuda artifacts, references, check.py (bench/gpu_check).
gpu-check-prepare: venv
	$(PY) bench/gpu_check/prepare.py --out build/gpu_check --arch sm_90

coverage: venv
	$(PY) scripts/op_coverage.py --update-readme

# A directory running artifacts where only Python and numpy are installed:
# make runtime-bundle BUNDLE_PYTHON=3.12 BUNDLE_DIR=out/runtime-bundle
BUNDLE_DIR    ?= out/runtime-bundle
BUNDLE_PYTHON ?= $(shell $(PY) -c "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
runtime-bundle: venv
	rm -rf $(BUNDLE_DIR) $(BUNDLE_DIR).tar.gz
	$(PY) -m compiler.driver.tool bundle $(BUNDLE_DIR) --python $(BUNDLE_PYTHON) --tarball

clean:
	rm -rf out build *.egg-info .pytest_cache
