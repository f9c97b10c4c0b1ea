#!/usr/bin/env bash
# Benchmark of large real sources (issue 12): reconciliation by range counts vs a full run, and
# full harvests with 1, 2, 4 and 'auto' streams against sources that serve 2 or 8 requests at
# once, the fixture charging every request in proportion to the size of its view. Prints
# figures, asserts nothing.
#   bash bench/source.sh [--rows-a 1000000] [--cost-a 0.2] [--rows-b 200000] [--cost-b 1]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PGRX_PG_CONFIG_PATH="${GN2PG_PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
export GN2PG_TEST_DIR="${GN2PG_BENCH_DIR:-/tmp/gn2pg-bench}" GN2PG_TEST_PGPORT="${GN2PG_BENCH_PGPORT:-55472}" GN2PG_TEST_PGHOST=127.0.0.1
export GN2PG_CLUSTER_DURABLE=1

bash scripts/install.sh
cargo build --release -p gn2pg-pg-test --bin gn2pg-bench-source
bash scripts/test-cluster.sh start "$GN2PG_TEST_DIR" "$GN2PG_TEST_PGPORT"
trap 'bash scripts/test-cluster.sh stop "$GN2PG_TEST_DIR" "$GN2PG_TEST_PGPORT"' EXIT
mkdir -p bench/out
./target/release/gn2pg-bench-source "$@" | tee "bench/out/source-$(date +%Y%m%d-%H%M%S).txt"
