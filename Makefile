# The verbs people expect: demo, test, generate, lint, bench. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Python 3.9 is what the official TorchServe 0.12 images run; the py39 check installs there.
# The tests that need neither TorchServe nor torch, run on 3.9 with what its resolver picked.
PY39_TESTS := tests/test_context.py tests/test_signals.py tests/test_logs.py tests/test_exporter.py
PYTHON39 ?= $(firstword $(wildcard /root/.pyenv/versions/3.9*/bin/python3.9 /usr/bin/python3.9 /usr/local/bin/python3.9))

.PHONY: setup demo stack-up stack-down test lint py39 generate bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch pinned: a plain `torch` requirement pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0 -e '.[torchserve,generate,dev]'
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

py39:
	@test -n "$(PYTHON39)" || { echo "py39: no python3.9 found; set PYTHON39=/path/to/python3.9"; exit 1; }
	rm -rf .venv39 && $(PYTHON39) -m venv .venv39
	.venv39/bin/python -m pip install -q --upgrade pip
	# A real 3.9 resolver: pip refuses any dependency release whose Requires-Python excludes 3.9.
	.venv39/bin/python -m pip install -q '.' 'pytest>=7'
	.venv39/bin/python -m pytest -q -p no:cacheprovider $(PY39_TESTS)

generate: setup
	$(BIN)/torchserve-obs generate --out .

bench: setup
	$(BIN)/python benchmarks/mixin_overhead.py

test: lint py39
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .venv39 .demo .torchserve-obs
