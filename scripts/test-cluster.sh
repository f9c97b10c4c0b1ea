#!/usr/bin/env bash
# A throw-away PostgreSQL 15 cluster for the integration tests, owned by the postgres user,
# listening on 127.0.0.1 only. Usage: test-cluster.sh start|stop [dir] [port]
set -euo pipefail
BIN="$("${GN2PG_PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}" --bindir)"
DIR="${2:-${GN2PG_TEST_DIR:-/tmp/gn2pg-test}}"
PORT="${3:-${GN2PG_TEST_PGPORT:-55432}}"
as_pg() { if [ "$(id -un)" = postgres ]; then "$@"; else sudo -u postgres "$@"; fi; }

case "${1:-}" in
start)
    if [ -f "$DIR/data/postmaster.pid" ]; then as_pg "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true; fi
    rm -rf "$DIR"
    mkdir -p "$DIR"
    chown postgres:postgres "$DIR"
    as_pg "$BIN/initdb" -D "$DIR/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >> "$DIR/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
shared_preload_libraries = 'pg_cron'
cron.database_name = 'gn2pg_cron'
cron.use_background_workers = on
max_worker_processes = 32
max_connections = 100
log_min_messages = warning
CONF
    if [ -z "${GN2PG_CLUSTER_DURABLE:-}" ]; then
        # Test data is disposable: trade durability for speed (benchmarks keep the defaults).
        printf '%s\n' "fsync = off" "full_page_writes = off" "synchronous_commit = off" >> "$DIR/data/postgresql.conf"
    fi
    # Members of gn2pg_password_auth must give their password over TCP (the dashboard's tests
    # sign in with real passwords); everyone else is trusted, as before.
    sed -i '1i host all +gn2pg_password_auth 127.0.0.1/32 scram-sha-256' "$DIR/data/pg_hba.conf"
    as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start >/dev/null
    as_pg "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -qX -v ON_ERROR_STOP=1 \
        -c "CREATE ROLE gn2pg_password_auth NOLOGIN" >/dev/null
    # pg_cron's own database (cron.database_name): the launcher starts once the extension exists.
    as_pg "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -qX -v ON_ERROR_STOP=1 \
        -c "CREATE DATABASE gn2pg_cron" >/dev/null
    as_pg "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d gn2pg_cron -qX -v ON_ERROR_STOP=1 \
        -c "CREATE EXTENSION pg_cron" >/dev/null
    echo "test cluster on 127.0.0.1:$PORT (data $DIR/data, log $DIR/server.log)"
    ;;
stop)
    if [ -f "$DIR/data/postmaster.pid" ]; then as_pg "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null || true; fi
    ;;
*)
    echo "usage: $0 start|stop [dir] [port]" >&2
    exit 2
    ;;
esac
