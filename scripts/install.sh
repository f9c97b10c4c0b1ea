#!/usr/bin/env bash
# Builds gn2pg (release) and installs it into the system PostgreSQL 15, as root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PGRX_PG_CONFIG_PATH=/usr/lib/postgresql/15/bin/pg_config
cargo pgrx install --release --pg-config "$PGRX_PG_CONFIG_PATH" 2>&1 | grep -Ev '^\s*(Compiling|Checking)' || true
test -f "$(pg_config_dir=$("$PGRX_PG_CONFIG_PATH" --pkglibdir); echo "$pg_config_dir")/gn2pg.so" \
    || { echo "gn2pg.so was not installed" >&2; exit 1; }
