#!/bin/bash
# Every group of `cargo bench --features remote --bench remote` in one
# session, each in its own process under /usr/bin/time -v (peak RSS of the
# bench process alone), against one moto server started here.
#
#   scripts/bench_remote.sh [BENCH_DIR]
#
# BENCH_DIR: where the cache directories go (default: the system temporary
# directory; a fresh file system is best, see docs/benchmarks.md).
# NDOFFLOAD_MOTO: the moto_server executable (default .venv/bin/moto_server).
set -u
cd "$(dirname "$0")/.."
MOTO=${NDOFFLOAD_MOTO:-.venv/bin/moto_server}
PORT=${NDOFFLOAD_BENCH_PORT:-5944}
cargo bench --features remote --bench remote --no-run >/dev/null 2>&1 || {
  echo "bench build failed" >&2
  exit 1
}
B=$(cargo bench --features remote --bench remote --no-run 2>&1 | sed -n 's/.*(\(.*remote-[0-9a-f]*\))$/\1/p' | tail -1)
"$MOTO" -H 127.0.0.1 -p "$PORT" >/dev/null 2>&1 &
MPID=$!
trap 'kill $MPID 2>/dev/null' EXIT
sleep 5
export NDOFFLOAD_MOTO_PORT=$PORT NDOFFLOAD_MOTO_PID=$MPID
if [ $# -ge 1 ]; then export NDOFFLOAD_BENCH_DIR=$1; fi
echo "binary $B, commit $(git rev-parse --short HEAD)"
run() {
  echo "=== $* $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  env "$@" 2>&1 | grep -E "^(remote bench|ram-upload|small|upload|first get|window|view)|Elapsed|Maximum resident"
}
run NDOFFLOAD_BENCH_MIB=256 NDOFFLOAD_BENCH_ROUNDS=3 /usr/bin/time -v "$B" ram-upload
run NDOFFLOAD_BENCH_MIB=1024 NDOFFLOAD_BENCH_ROUNDS=2 /usr/bin/time -v "$B" ram-upload
run NDOFFLOAD_BENCH_SMALL=200 /usr/bin/time -v "$B" small
run NDOFFLOAD_BENCH_MIB=256 /usr/bin/time -v "$B" download
run NDOFFLOAD_BENCH_MIB=1024 "$B" window-setup
for m in window-read window-view window-full window; do
  run NDOFFLOAD_BENCH_MIB=1024 NDOFFLOAD_BENCH_ROUNDS=1 /usr/bin/time -v "$B" $m
done
run NDOFFLOAD_BENCH_MIB=1024 /usr/bin/time -v "$B" download
echo "=== done $(date -u +%T)"
