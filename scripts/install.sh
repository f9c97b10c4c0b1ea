#!/usr/bin/env bash
# Builds gn2pg (release) and installs it into the system PostgreSQL 15, as root: the library,
# the control file, the current version's script and the upgrade scripts (sql/gn2pg--A--B.sql),
# plus the install scripts of released versions (sql/released/), so that a database can be
# created at an older version and moved with ALTER EXTENSION gn2pg UPDATE.
set -euo pipefail
cd "$(dirname "$0")/.."
# GN2PG_PG_CONFIG: another PostgreSQL 15 installation than Debian's (its pg_config).
export PGRX_PG_CONFIG_PATH="${GN2PG_PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
cargo pgrx install --release --pg-config "$PGRX_PG_CONFIG_PATH" 2>&1 | grep -Ev '^\s*(Compiling|Checking)' || true
test -f "$("$PGRX_PG_CONFIG_PATH" --pkglibdir)/gn2pg.so" || { echo "gn2pg.so was not installed" >&2; exit 1; }
install -m 644 sql/released/gn2pg--*.sql "$("$PGRX_PG_CONFIG_PATH" --sharedir)/extension/"
