# The two commands of README.md. Both set up .venv/ first (skipped when up to date).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast test-long clean-venv

setup:
	@bash tools/install_env.sh

demo: setup
	@bash tools/demo.sh

# what CI runs: everything but the long soak tier
test: setup
	@$(PY) -m pytest tests -q -m "not long" $(PYTEST_ARGS)

# the fast subset while iterating
test-fast: setup
	@$(PY) -m pytest tests -q -m "not slow and not long" $(PYTEST_ARGS)

# the long tier: 24 kills during saves, a real full tmpfs, two-process resume, full-size recipe builds
test-long: setup
	@$(PY) -m pytest tests -q -m long $(PYTEST_ARGS)

clean-venv:
	rm -rf .venv
