#!/usr/bin/env bash
# The main job on the embedded default, on a fresh Debian 12 machine as root:
#   set-up -> start the fixture GeoNature (100,000 observations) on 127.0.0.1 ->
#   build and install gn2pg into the local PostgreSQL 15 cluster (created and started if
#   needed, with PostGIS and pg_cron) -> register source 'demo' -> SELECT gn2pg_harvest('demo')
#   -> print the run log row and the row counts.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${GN2PG_DEMO_ROWS:-100000}"
PORT="${GN2PG_DEMO_PORT:-8765}"
DB="${GN2PG_DEMO_DB:-gn2pg_demo}"
log() { printf '\033[1m[demo]\033[0m %s\n' "$*"; }

bash scripts/setup.sh
export PGRX_PG_CONFIG_PATH=/usr/lib/postgresql/15/bin/pg_config

log "building the fixture source and the extension (release)"
cargo build --release -p gn2pg-pg-test --bin gn2pg-fixture-source 2>&1 | grep -Ev '^\s*(Compiling|Checking)' || true
bash scripts/install.sh

# The local cluster: Debian's 15/main, created if absent, with pg_cron preloaded.
if ! pg_lsclusters -h | awk '$1 == "15" && $2 == "main"' | grep -q .; then
    log "creating PostgreSQL cluster 15/main"
    pg_createcluster 15 main >/dev/null
fi
CONF=/etc/postgresql/15/main/conf.d/gn2pg.conf
WANT="shared_preload_libraries = 'pg_cron'
cron.database_name = '$DB'
cron.use_background_workers = on
max_worker_processes = 16"
if [ "$(cat "$CONF" 2>/dev/null)" != "$WANT" ]; then
    mkdir -p "$(dirname "$CONF")"
    printf '%s\n' "$WANT" > "$CONF"
    log "configured $CONF; (re)starting 15/main"
    pg_ctlcluster 15 main restart 2>/dev/null || pg_ctlcluster 15 main start
else
    pg_ctlcluster 15 main start 2>/dev/null || true
fi
# After an install, a running cluster must load the new gn2pg.so in new backends only; a
# restart is needed only when gn2pg is preloaded, which the demo does not do.
PGPORT_MAIN=$(pg_lsclusters -h | awk '$1 == "15" && $2 == "main" {print $3}')
psql_pg() { sudo -u postgres psql -p "$PGPORT_MAIN" -v ON_ERROR_STOP=1 -X "$@"; }

log "starting the fixture GeoNature with $ROWS observations on 127.0.0.1:$PORT"
./target/release/gn2pg-fixture-source --listen "127.0.0.1:$PORT" --rows "$ROWS" > /tmp/gn2pg-demo-fixture.log 2>&1 &
FIXTURE_PID=$!
trap 'kill $FIXTURE_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
    grep -q "listening" /tmp/gn2pg-demo-fixture.log 2>/dev/null && break
    kill -0 $FIXTURE_PID 2>/dev/null || { cat /tmp/gn2pg-demo-fixture.log; exit 1; }
    sleep 0.2
done
cat /tmp/gn2pg-demo-fixture.log

psql_pg -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 \
    || psql_pg -d postgres -c "CREATE DATABASE $DB" >/dev/null
psql_pg -d "$DB" -q <<SQL
-- gn2pg_demo is a scratch database: start from a fresh install of the build just made.
DROP EXTENSION IF EXISTS gn2pg CASCADE;
CREATE EXTENSION gn2pg CASCADE;
CREATE EXTENSION IF NOT EXISTS pg_cron;
SELECT gn2pg_add_source(
    name      => 'demo',
    url       => 'http://127.0.0.1:$PORT/geonature',
    export_id => 1,
    auth      => 'login',
    login     => 'harvester',
    password  => 'secret') AS source_id \gset
SQL

log "SELECT gn2pg_harvest('demo')"
psql_pg -d "$DB" <<'SQL'
\timing on
SELECT jsonb_pretty(gn2pg_harvest('demo')) AS run;
\timing off
\x on
SELECT id, source, mode, status, started_at, finished_at, finished_at - started_at AS duration,
       pages_done, rows_received, rows_upserted, rows_unchanged, rows_deleted, rows_failed,
       http_requests, http_retries, bytes_received, error
  FROM gn2pg.run_log WHERE source = 'demo' ORDER BY id DESC LIMIT 1;
\x off
SELECT count(*) AS observations, count(geom) AS with_geometry, count(DISTINCT jdd_uuid) AS datasets,
       count(DISTINCT ca_uuid) AS frameworks
  FROM gn2pg.observation WHERE source = 'demo';
SQL
log "follow the flows in a browser: bash scripts/dashboard.sh (then open http://127.0.0.1:8089)"
