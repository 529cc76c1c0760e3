#!/usr/bin/env bash
# Set up a fresh machine for byol-pipeline; safe to run again (it only redoes what changed).
#  1. Fashion-MNIST from Debian's package `dataset-fashion-mnist`, where apt-get exists,
#     copied into data/raw/fashion-mnist/ (params.yaml's data.source_dir; DVC tracks its listing).
#  2. A virtual environment in .venv with the project installed (editable) and its test tools.
#  3. dvc in an environment of its own (.venv-dvc), reached through .venv/bin/dvc.
#  4. PostgreSQL from Debian's package `postgresql`, for `make serve` (see scripts/serve.sh);
#     BYOL_SETUP_POSTGRESQL=no leaves it out (deploy/k8s/Dockerfile: the Helm chart runs PostgreSQL).
#  5. OpenSSH's server (`openssh-server`), for the shared-remote test.
#  6. Redis (`redis-server`), the Celery broker of `BYOL_WORKERS=N make serve` and of the
#     distributed test (not started here).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEBIAN=/usr/share/datasets/fashion-mnist
RAW=data/raw/fashion-mnist
FILES="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"

has_all() { for f in $FILES; do [ -f "$1/$f" ] || return 1; done; }

if ! has_all "$DEBIAN" && ! has_all "$RAW"; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "setup: installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: no apt-get here; put the four Fashion-MNIST .gz files in $RAW/" \
         "(byol ingest also tries torchvision's downloader)"
  fi
fi
mkdir -p "$RAW"
if ! has_all "$RAW" && has_all "$DEBIAN"; then
  for f in $FILES; do
    cp "$DEBIAN/$f" "$RAW/.$f.tmp" && mv "$RAW/.$f.tmp" "$RAW/$f"
  done
  echo "setup: copied Fashion-MNIST from $DEBIAN/ to $RAW/"
fi

# PostgreSQL, for `make serve` and its test: Debian's postgresql package, where apt-get exists.
if [ "${BYOL_SETUP_POSTGRESQL:-yes}" != no ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "setup: installing PostgreSQL (apt-get install postgresql)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
  else
    echo "setup: no apt-get here; install PostgreSQL for \`make serve\` (or point DAGSTER_PG_HOST at one)"
  fi
fi

# OpenSSH's server, for the test that shares a DVC remote over SSH between two checkouts.
if [ ! -x /usr/sbin/sshd ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing OpenSSH's server (apt-get install openssh-server; not started)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openssh-server >/dev/null
fi

# Redis, the broker between Dagster and the Celery workers (scripts/serve.sh, tests/test_distributed.py).
if [ ! -x /usr/bin/redis-server ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing Redis (apt-get install redis-server; not started)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: error: byol-pipeline needs Python >= 3.11 ($PYTHON is $("$PYTHON" -V 2>&1)); set PYTHON=..." >&2
  exit 1
fi

# Reinstall only when the dependency list changed.
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing the project into .venv (first time: a few minutes, torch is large)"
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# dvc: its own environment, pinned in scripts/dvc-requirements.txt. Nothing imports it.
dvc_stamp=".venv-dvc/.installed-$(sha256sum scripts/dvc-requirements.txt | cut -c1-16)"
if [ ! -f "$dvc_stamp" ]; then
  echo "setup: installing dvc into .venv-dvc (its own environment)"
  "$PYTHON" -m venv .venv-dvc
  .venv-dvc/bin/python -m pip install -q -r scripts/dvc-requirements.txt
  rm -f .venv-dvc/.installed-*
  touch "$dvc_stamp"
fi
# .venv/bin/dvc runs that dvc with .venv/bin first on PATH, so dvc.yaml's `byol` commands
# (and Dagster, which looks beside its own Python) find the project's command.
here=$(pwd)
cat > .venv/bin/.dvc.tmp <<SHIM
#!/bin/sh
# Written by scripts/setup.sh: dvc lives in $here/.venv-dvc (its own environment).
PATH="$here/.venv/bin:\$PATH" exec "$here/.venv-dvc/bin/dvc" "\$@"
SHIM
chmod +x .venv/bin/.dvc.tmp
mv .venv/bin/.dvc.tmp .venv/bin/dvc
echo "setup: ready (.venv/bin/byol, .venv/bin/dvc)"
