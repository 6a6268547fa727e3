# `make demo` and `make test` are all a user types on a fresh clone: each creates .venv and installs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,ray]"
	# torchattacks (the peer library, for comparisons) declares torchvision and requests~=2.25 but imports
	# neither; resolving them would break transformers, so it goes in without its declared dependencies.
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt torchattacks==3.5.1
	touch $(STAMP)

# Pinned CPU kernels (README, Reproducibility): the demo's README numbers and the tests' thresholds are the same on
# every x86 CPU with AVX2. The demo and tests/conftest.py pin anyway; this says so where a user looks first.
REPRODUCIBLE := ROBUSTDISTILL_REPRODUCIBLE=1

demo: $(STAMP)
	$(REPRODUCIBLE) $(BIN)/robustdistill demo

# The layering contracts (pyproject.toml, [tool.importlinter]) first: a forbidden import fails the run in a second.
lint: $(STAMP)
	$(BIN)/lint-imports --no-cache

# Two test processes, each taking whole files (--dist loadfile: a file's module fixtures are built once): on 2 CPU
# cores the suite takes 510 s instead of 826 s in one process. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2

test: lint
	$(REPRODUCIBLE) $(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test-slow: $(STAMP)
	$(REPRODUCIBLE) $(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis reports/demo reports/demo-quick checkpoints
