# The two front-door commands (see README.md):
#   make run   set up, then run the four stages on params.yaml (Fashion-MNIST by default)
#   make test  set up, then run the test suite
.PHONY: setup run test

BYOL := .venv/bin/byol

setup:
	@scripts/setup.sh

run: setup
	$(BYOL) ingest
	$(BYOL) pretrain
	$(BYOL) evaluate
	$(BYOL) export

test: setup
	.venv/bin/python -m pytest
