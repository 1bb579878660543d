# The two commands of README.md. Both set up .venv/ first (skipped when up to date).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast clean-venv

setup:
	@bash tools/install_env.sh

demo: setup
	@bash tools/demo.sh

test: setup
	@$(PY) -m pytest tests -q $(PYTEST_ARGS)

# the fast subset while iterating (CI runs everything: make test)
test-fast: setup
	@$(PY) -m pytest tests -q -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf .venv
