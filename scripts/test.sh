#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs numpy into a local
# virtualenv (for the interop tests), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import numpy' 2>/dev/null; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check 'numpy>=2,<3'
fi
export NDOFFLOAD_PYTHON="$PWD/.venv/bin/python"
cargo test --all-features "$@"
