#!/usr/bin/env bash
# Set up a fresh machine for byol-pipeline; safe to run again (it only redoes what changed).
#  1. Fashion-MNIST from Debian's package `dataset-fashion-mnist`, where apt-get exists.
#  2. A virtual environment in .venv with the project installed (editable) and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
FASHION=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

if [ ! -f "$FASHION" ] && [ ! -f data/raw/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "setup: installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: no apt-get here; put the four Fashion-MNIST .gz files in data/raw/fashion-mnist/" \
         "(byol ingest also tries torchvision's downloader)"
  fi
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
echo "setup: ready (.venv/bin/byol)"
