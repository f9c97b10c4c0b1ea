#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine as root:
#   set-up (idempotent) -> build and install gn2pg -> throw-away cluster -> every cargo test.
# Unit tests (protocol, paging, fixture) need no database; the integration tests in pg_test/
# harvest the fixture GeoNature over HTTP into the cluster and compare rows.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export PGRX_PG_CONFIG_PATH="${GN2PG_PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
export GN2PG_TEST_DIR="${GN2PG_TEST_DIR:-/tmp/gn2pg-test}"
export GN2PG_TEST_PGPORT="${GN2PG_TEST_PGPORT:-55432}"
export GN2PG_TEST_PGHOST=127.0.0.1

echo "[test] formatting and lints"
cargo fmt --all -- --check
mkdir -p "$GN2PG_TEST_DIR.logs"
if ! cargo clippy --release --workspace --all-targets -- -D warnings > "$GN2PG_TEST_DIR.logs/clippy.log" 2>&1; then
    grep -Ev '^\s*(Compiling|Checking)' "$GN2PG_TEST_DIR.logs/clippy.log" >&2
    echo "[test] clippy found problems" >&2
    exit 1
fi

echo "[test] building and installing gn2pg"
bash scripts/install.sh

bash scripts/test-cluster.sh start "$GN2PG_TEST_DIR" "$GN2PG_TEST_PGPORT"
trap 'bash scripts/test-cluster.sh stop "$GN2PG_TEST_DIR" "$GN2PG_TEST_PGPORT"' EXIT

echo "[test] cargo test (release: shares the build with the installed extension)"
status=0
cargo test --release --workspace --no-fail-fast 2>&1 | tee "$GN2PG_TEST_DIR/cargo-test.log" || status=$?
if [ "$status" -ne 0 ]; then
    echo "[test] failures; last lines of the test cluster log:" >&2
    tail -n 40 "$GN2PG_TEST_DIR/server.log" >&2 || true
fi
# The Debian package (scripts/package-test.sh) installs into the system PostgreSQL: it runs where
# the suite uses the system PostgreSQL (CI: GN2PG_PG_CONFIG unset) or when asked with
# GN2PG_PACKAGE_TEST=1, after the cargo tests, since removing the package removes the development
# install made above (the test puts it back).
pkg_passed=0
pkg_failed=0
if [ -z "${GN2PG_PG_CONFIG:-}" ] || [ "${GN2PG_PACKAGE_TEST:-}" = 1 ]; then
    echo "[test] the Debian package (scripts/package-test.sh)"
    bash scripts/package-test.sh 2>&1 | tee "$GN2PG_TEST_DIR/package-test.log" || status=1
    pkg_passed=$(sed -n 's/^package test: \([0-9]*\) passed, \([0-9]*\) failed$/\1/p' "$GN2PG_TEST_DIR/package-test.log")
    pkg_failed=$(sed -n 's/^package test: \([0-9]*\) passed, \([0-9]*\) failed$/\2/p' "$GN2PG_TEST_DIR/package-test.log")
    if [ -z "$pkg_passed" ]; then
        pkg_passed=0
        pkg_failed=1
        status=1
    fi
else
    echo "[test] package test skipped: it installs into the system PostgreSQL and GN2PG_PG_CONFIG points to another one (GN2PG_PACKAGE_TEST=1 runs it)"
fi
# The runner's own summary, as the last line.
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$GN2PG_TEST_DIR/cargo-test.log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '; [0-9]+ failed' "$GN2PG_TEST_DIR/cargo-test.log" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}')
echo "$((passed + pkg_passed)) passed, $((failed + pkg_failed)) failed"
exit "$status"
