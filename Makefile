# The two commands of the README: `make demo` and `make test`. Both work on a fresh clone with
# nothing but Python 3.11+ and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,test,ray

.PHONY: install demo test lint typecheck protos bench clean mutation

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-$(EXTRAS): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

# pytest exits 5 when it collected no test: that is a failure, never a pass.
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# Mutation testing of the core modules: kill rate per module, surviving mutants listed (docs/mutation.md).
# Not part of `make test`: it runs the guarding tests once per mutant. MUTATION_ARGS picks modules.
mutation:
	$(MAKE) install EXTRAS=$(EXTRAS),mutation
	$(BIN)/python scripts/mutation.py $(MUTATION_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy through the `cnnserve.*` names (scripts/typecheck.py lays the package-dir mapping out for it).
typecheck: install
	$(BIN)/python scripts/typecheck.py

protos: install
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) runs model_repository demo_output .pytest_cache
