#!/usr/bin/env bash
# Sets up zf_jax on a fresh Debian/Ubuntu machine: the embedded dataset
# (Debian's dataset-fashion-mnist) and a virtual environment .venv with the
# package (CPU build of JAX) and the test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else SUDO="none"; fi
  if [ "$SUDO" != none ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's dataset-fashion-mnist (the embedded default dataset)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: warning: cannot install dataset-fashion-mnist (needs apt-get as root);" \
         "use --dataset=fashion_mnist (tfds, online) instead" >&2
  fi
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "setup: installing zf_jax and its dependencies into .venv (a few minutes the first time)"
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup: done"
