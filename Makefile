# Two commands for users: `make demo` and `make test`. Both install first.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || { echo "Python 3.11+ not found; set PY=/path/to/python3.11"; exit 1; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so nothing else pulls a CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[all]"
	touch $(STAMP)

demo: install
	$(BIN)/tether run configs/quickstart.yaml

test: install
	$(BIN)/python -m pytest -q tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not browser" tests

# tether vs TRL on this machine: two TRL venvs beside .venv (bench/setup_trl.sh), then every benchmark
bench: install
	PY=$(PY) bash bench/setup_trl.sh
	$(BIN)/python bench/run.py

bench-quick: install
	PY=$(PY) bash bench/setup_trl.sh
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf runs .pytest_cache
