# The verbs people expect: demo, test, generate, lint, bench. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip's choice of torch 2.13.0: from the public index on Linux x86_64 it is the CUDA build
# (several GB with its nvidia-* packages); a CPU-only host wants the CPU build:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
# Python 3.9 is what the official TorchServe 0.12 images run. With a 3.9 interpreter the py39
# check installs there and runs the tests that need neither TorchServe nor torch; without one
# (`make test PYTHON39=`, or none found) it checks the 3.9 resolver, syntax and stdlib use.
PY39_TESTS := tests/test_context.py tests/test_signals.py tests/test_logs.py tests/test_exporter.py
PYTHON39 ?= $(firstword $(wildcard /root/.pyenv/versions/3.9*/bin/python3.9 /usr/bin/python3.9 /usr/local/bin/python3.9))

.PHONY: setup demo stack-up stack-down test lint py39 generate bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "== installing torch 2.13.0, TorchServe 0.12 and this package (a few minutes: torch is about 200 MB as a CPU build, several GB as a CUDA build)"
	$(BIN)/python -m pip install torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	# PYTHONWARNINGS: setuptools' editable install prints a warning box nobody can act on.
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install -e '.[torchserve,generate,dev]'
	@$(BIN)/python -c 'import torch; print("== torch", torch.__version__, "(CUDA " + str(torch.version.cuda) + ")" if torch.version.cuda else "(CPU build)")'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/torchserve-obs demo

stack-up: setup
	$(BIN)/torchserve-obs stack up

stack-down: setup
	$(BIN)/torchserve-obs stack down

lint: setup
	$(BIN)/ruff check .

py39: setup
	$(BIN)/python .ci/py39.py --python "$(PYTHON39)" --extras torchserve,generate --tests $(PY39_TESTS)

generate: setup
	$(BIN)/torchserve-obs generate --out .

bench: setup
	$(BIN)/python benchmarks/mixin_overhead.py

test: lint py39
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .venv39 .demo .torchserve-obs
