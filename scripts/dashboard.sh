#!/usr/bin/env bash
# Starts gn2pg-dashboard, as root on Debian 12.
#   bash scripts/dashboard.sh                       # against the demo database (scripts/demo.sh)
#   bash scripts/dashboard.sh --database URL [--listen 127.0.0.1:8089]
# Against the demo database it first makes sure of two roles in the local cluster 15/main: the
# dashboard's own login role gn2pg_dashboard (NOINHERIT, a fresh password each start, passed in
# the environment) and a person to sign in as, gn2pg_demo_admin (gn2pg_admin), whose new password
# it prints. With --database, the URL is used as it is (see README, "Web dashboard").
set -euo pipefail
cd "$(dirname "$0")/.."
DB="${GN2PG_DEMO_DB:-gn2pg_demo}"
DATABASE=""
LISTEN="127.0.0.1:8089"
while [ $# -gt 0 ]; do
    case "$1" in
    --database) DATABASE="$2"; shift 2 ;;
    --listen) LISTEN="$2"; shift 2 ;;
    *) echo "usage: scripts/dashboard.sh [--database URL] [--listen ADDR:PORT]" >&2; exit 2 ;;
    esac
done
log() { printf '\033[1m[dashboard]\033[0m %s\n' "$*"; }

log "building gn2pg-dashboard (release)"
cargo build --release -p gn2pg-dashboard 2>&1 | grep -Ev '^\s*(Compiling|Checking)' || true

if [ -z "$DATABASE" ]; then
    PORT=$(pg_lsclusters -h 2>/dev/null | awk '$1 == "15" && $2 == "main" {print $3}')
    [ -n "$PORT" ] || { echo "no PostgreSQL cluster 15/main: run scripts/demo.sh first, or give --database" >&2; exit 1; }
    psql_pg() { sudo -u postgres psql -p "$PORT" -v ON_ERROR_STOP=1 -qX "$@"; }
    psql_pg -d "$DB" -tAc "SELECT 1 FROM pg_extension WHERE extname = 'gn2pg'" | grep -q 1 \
        || { echo "database $DB has no gn2pg: run scripts/demo.sh first" >&2; exit 1; }
    AUTH_PW=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    ADMIN_PW=$(head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n')
    psql_pg -d "$DB" -v auth_pw="$AUTH_PW" -v admin_pw="$ADMIN_PW" <<'SQL'
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gn2pg_dashboard') AS missing \gset
\if :missing
CREATE ROLE gn2pg_dashboard LOGIN NOINHERIT;
\endif
ALTER ROLE gn2pg_dashboard LOGIN NOINHERIT PASSWORD :'auth_pw';
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gn2pg_demo_admin') AS missing \gset
\if :missing
CREATE ROLE gn2pg_demo_admin LOGIN;
\endif
ALTER ROLE gn2pg_demo_admin LOGIN PASSWORD :'admin_pw';
GRANT gn2pg_admin TO gn2pg_demo_admin;
GRANT gn2pg_demo_admin TO gn2pg_dashboard;
SQL
    export GN2PG_DASHBOARD_DATABASE="postgresql://gn2pg_dashboard:$AUTH_PW@127.0.0.1:$PORT/$DB"
    log "sign in at http://$LISTEN as gn2pg_demo_admin, password $ADMIN_PW"
else
    export GN2PG_DASHBOARD_DATABASE="$DATABASE"
fi
exec ./target/release/gn2pg-dashboard --listen "$LISTEN"
