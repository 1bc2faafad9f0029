# The two commands in the README: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m roma_ros.demo $(ARGS)

test: setup
	$(PY) -m pytest test $(ARGS)

bench: setup
	$(PY) bench/sampler.py

clean:
	rm -rf $(VENV) build *.egg-info demo_output
