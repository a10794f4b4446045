#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs numpy (interop
# tests), moto's S3 server and boto3 (remote-store tests, on 127.0.0.1 only)
# into a local virtualenv, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import numpy, boto3, moto' 2>/dev/null \
    || [ ! -x .venv/bin/moto_server ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check 'numpy>=2,<3' 'moto[server]>=5,<6' 'boto3>=1.34'
fi
export NDOFFLOAD_PYTHON="$PWD/.venv/bin/python"
cargo test --all-features "$@"
