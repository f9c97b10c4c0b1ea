#!/usr/bin/env bash
# Benchmark: gn2pg vs COPY vs GN2PG (gn2pg-client from PyPI), side by side in one run, on a
# dedicated cluster with durable settings. Prints figures and ratios; asserts nothing.
#   bash bench/run.sh [--rows 1000000] [--peer-rows 20000] [--workers 2] [--destination]
# --destination adds the GeoNature destination: the same full harvest into a GeoNature-shaped
# database, GeoNature's own cost of taking those rows, and the incremental run's destination cost.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PGRX_PG_CONFIG_PATH="${GN2PG_PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
export GN2PG_TEST_DIR="${GN2PG_BENCH_DIR:-/tmp/gn2pg-bench}" GN2PG_TEST_PGPORT="${GN2PG_BENCH_PGPORT:-55472}" GN2PG_TEST_PGHOST=127.0.0.1
export GN2PG_CLUSTER_DURABLE=1

VENV=bench/.venv
if [ ! -x "$VENV/bin/gn2pg_cli" ]; then
    echo "[bench] installing gn2pg-client 1.10.1 (the peer) in $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q "gn2pg-client==1.10.1"
fi

bash scripts/install.sh
cargo build --release -p gn2pg-pg-test --bin gn2pg-bench
bash scripts/test-cluster.sh start
trap 'bash scripts/test-cluster.sh stop' EXIT
mkdir -p bench/out
./target/release/gn2pg-bench --gn2pg-cli "$VENV/bin/gn2pg_cli" "$@" | tee "bench/out/$(date +%Y%m%d-%H%M%S).txt"
