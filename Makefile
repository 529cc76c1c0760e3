# The two front-door commands (see README.md and docs/getting-started.md):
#   make run   set up, then `dvc repro`: scan the source, then the five stages on params.yaml (Fashion-MNIST by default)
#   make test  set up, then run the test suite
# and one for the speed comparison:
#   make bench set up, install the peers (lightly, byol-pytorch), then time our step against theirs
# and the Dagster UI:
#   make ui    `dg dev` with a persistent DAGSTER_HOME (.dagster/home): history survives a restart;
#              Ctrl-C stops it and every process it started (scripts/ui.sh)
#   make serve PostgreSQL, dagster-daemon and dagster-webserver on 127.0.0.1 (scripts/serve.sh);
#              with BYOL_WORKERS=N also Redis and N Celery workers, each in a clone of its own
#              (docs/machines.md)
#   make stop  stop what `make serve` started
# and for a warm start (docs/pipeline.md, "Warm start"):
#   make promote  `byol promote` (the last pretrain's state -> paths.start, its sha256 -> params.yaml),
#              then `dvc add` that file; commit the .dvc file and params.yaml after it
# and the documentation:
#   make docs  build the site from docs/ into site/ (mkdocs.yml; open site/index.html)
.PHONY: setup run test bench ui serve stop promote docs

setup:
	@scripts/setup.sh

run: setup
	.venv/bin/dvc repro

test: setup
	.venv/bin/python -m pytest

# lightly pulls hydra-core, whose antlr4-python3-runtime 4.9 pin breaks Dagster's string
# asset selections; lightly's BYOL parts never import hydra, so Dagster's antlr goes back.
bench: setup
	.venv/bin/pip install -q -e '.[bench]'
	.venv/bin/pip install -q 'antlr4-python3-runtime==4.13.2'
	.venv/bin/python benchmarks/step_vs_peers.py

ui: setup
	scripts/ui.sh

serve: setup
	scripts/serve.sh start

stop:
	scripts/serve.sh stop

promote: setup
	.venv/bin/byol promote
	.venv/bin/dvc add "$$(.venv/bin/python -c 'import os; from byol_core.config import load_params; print(os.path.relpath(load_params().paths.start))')"

docs: setup
	NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict
