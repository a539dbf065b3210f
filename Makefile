# Two entry points: `make quickstart` and `make test`. Both create .venv when missing.
VENV ?= .venv
PYTHON ?= python3
# CPU wheel by default; on a GPU machine use e.g. TORCH_SPEC='torch>=2.4' (keeps the CUDA build).
TORCH_SPEC ?= torch==2.13.0
CORES ?= 2
PY := $(VENV)/bin/python
STAMP := $(VENV)/.icae-installed

.PHONY: install quickstart test clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev,gguf]'
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	PATH="$(abspath $(VENV))/bin:$$PATH" snakemake --cores $(CORES) --resources gpu=1 \
	  --workflow-profile workflow/profiles/default

test: install
	$(PY) -m pytest -q -n $(CORES) --dist loadgroup

clean:
	rm -rf results logs .snakemake
