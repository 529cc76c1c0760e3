# The two front-door commands (see README.md):
#   make run   set up, then `dvc repro`: the four stages on params.yaml (Fashion-MNIST by default)
#   make test  set up, then run the test suite
.PHONY: setup run test

setup:
	@scripts/setup.sh

run: setup
	.venv/bin/dvc repro

test: setup
	.venv/bin/python -m pytest
