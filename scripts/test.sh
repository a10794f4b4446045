#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs numpy (interop
# tests), moto's S3 server and boto3 (remote-store tests, on 127.0.0.1 only),
# pytest and maturin into a local virtualenv, and GSEGUtils 0.6.0 (the
# Python store the drop-in is tested against; scripts/install-gsegutils.sh);
# runs every Rust test; then
# builds the Python package (py/, from source) into the virtualenv and runs
# its pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import numpy, boto3, moto, pytest' 2>/dev/null \
    || [ ! -x .venv/bin/moto_server ] || [ ! -x .venv/bin/maturin ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check 'numpy>=2,<3' 'moto[server]>=5,<6' 'boto3>=1.34' \
        'pytest>=7' 'maturin>=1.5,<2'
fi
gseg=scripts/install-gsegutils.sh
if [ -f "$gseg" ] && ! .venv/bin/python -c 'import GSEGUtils.lazy_disk_cache' 2>/dev/null; then
    bash "$gseg" .venv
fi
export NDOFFLOAD_PYTHON="$repo/.venv/bin/python"
cargo test --all-features "$@"

# The Python package: rebuilt only when its sources or the crate's changed.
py_target=${NDOFFLOAD_PY_TARGET_DIR:-$repo/target/py}
stamp=.venv/.ndoffload-build
hash=$(find py/src py/python py/Cargo.toml py/Cargo.lock py/pyproject.toml src Cargo.toml \
        -type f ! -name '*.so' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
if [ "$(cat "$stamp" 2>/dev/null)" != "$hash" ] || ! .venv/bin/python -c 'import ndoffload' 2>/dev/null; then
    start=$(date +%s)
    echo "building the Python package (py/) into .venv"
    rm -f "$stamp"
    PATH="$repo/.venv/bin:$PATH" CARGO_TARGET_DIR="$py_target" \
        .venv/bin/pip install --quiet --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps ./py
    echo "$hash" > "$stamp"
    echo "built and installed the Python package in $(( $(date +%s) - start ))s"
fi
# The Rust writer example the readers' test runs (built by `cargo test`).
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target} .venv/bin/python -m pytest -p no:cacheprovider py/tests
