"""Fixtures of the Python package's tests: the repository, a Rust writer
process, an S3 server on 127.0.0.1 (moto), GSEGUtils when installed."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI") == "true"


def need(what: str, reason: str):
    """Skip, except in CI, where a missing tool is a failure."""
    if IN_CI:
        pytest.fail(f"{what} is missing in CI: {reason}")
    pytest.skip(f"{what}: {reason}")


@pytest.fixture(scope="session")
def writer_exe() -> Path:
    """The crate's `replace_writer` example (built by `cargo test`; built here
    if missing)."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    exe = target / "debug" / "examples" / "replace_writer"
    if not exe.exists():
        if shutil.which("cargo") is None:
            need("cargo", "needed to build the Rust writer example")
        subprocess.run(["cargo", "build", "--example", "replace_writer"], cwd=REPO, check=True)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """An S3 server (moto) on 127.0.0.1 and a bucket; yields the endpoint."""
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        need("moto_server", f"not next to {sys.executable}")
    try:
        import boto3
    except ImportError:
        need("boto3", "not installed")
    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.1)
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ENDPOINT": endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="ndo-py-test")
        yield endpoint
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def gsegutils():
    try:
        import GSEGUtils.lazy_disk_cache as g
    except ImportError:
        need("GSEGUtils", "install it with scripts/install-gsegutils.sh .venv")
    return g
