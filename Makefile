# Every target sets itself up in .venv on a fresh machine.
# CPU-only machines get the CPU build of torch first (a bare `torch` requirement would pull
# a multi-GB CUDA build); machines with nvidia-smi keep whatever torch pip resolves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/attnres-search
STAMP := $(VENV)/.installed
CPU_TORCH ?= torch==2.13.0

.PHONY: setup demo test bench gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then echo "GPU found: installing torch from pyproject's range"; \
	  else echo "no GPU: installing $(CPU_TORCH) (CPU build)"; $(PY) -m pip install -q "$(CPU_TORCH)"; fi; \
	fi
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(CLI) demo

test: $(STAMP)
	$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

bench: $(STAMP)
	$(CLI) bench kernels
	$(CLI) bench step

# No setup step: a lent GPU machine has the dependencies but no network; the script runs
# from the working tree and writes under OUT (default results/gpu_check). One GPU window of
# at most TOTAL (540) s: STUDY=1 adds the GPU study after the checks, STUDY=only runs it
# alone (TIME_LIMIT=S), QUICK=1 is a dry run on a CPU (see the script's header).
gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
