#!/usr/bin/env bash
# Dashboard benchmark: fills a database, directly in SQL, with 50 sources, 10,000 runs and
# 5,000,000 observation rows (with their CA/JDD metadata, rejected rows and alerts), starts
# gn2pg-dashboard against it, signs in and times every page (best and median of 7 requests).
# Prints figures; asserts nothing. (What the row counts cost a harvest is in bench/run.sh's
# figures, compared with 0.2.0 in README.)
#   bash bench/dashboard.sh [--rows 5000000]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=5000000
while [ $# -gt 0 ]; do
    case "$1" in
    --rows) ROWS="$2"; shift 2 ;;
    *) echo "usage: bench/dashboard.sh [--rows N]" >&2; exit 2 ;;
    esac
done
bash scripts/setup.sh
export PGRX_PG_CONFIG_PATH="${GN2PG_PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
export GN2PG_TEST_DIR=/tmp/gn2pg-bench-dashboard GN2PG_TEST_PGPORT="${GN2PG_BENCH_PGPORT:-55473}"
PORT=$GN2PG_TEST_PGPORT
BIN="$("$PGRX_PG_CONFIG_PATH" --bindir)"
DASH_PORT=8797
log() { printf '\033[1m[bench]\033[0m %s\n' "$*"; }

bash scripts/install.sh
cargo build --release -p gn2pg-dashboard --bin gn2pg-dashboard 2>&1 \
    | grep -Ev '^\s*(Compiling|Checking)' || true
bash scripts/test-cluster.sh start
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    bash scripts/test-cluster.sh stop
}
trap cleanup EXIT
psql_su() { sudo -u postgres "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -qX "$@"; }

log "filling database dash: 50 sources, 10,000 runs, $ROWS observations (takes a while)"
psql_su -d postgres -c "CREATE DATABASE dash"
psql_su -d dash <<'SQL'
CREATE EXTENSION gn2pg CASCADE;
CREATE ROLE bench_dashboard LOGIN NOINHERIT PASSWORD 'bench-auth' IN ROLE gn2pg_password_auth;
CREATE ROLE bench_admin LOGIN PASSWORD 'bench-admin' IN ROLE gn2pg_password_auth, gn2pg_admin;
GRANT bench_admin TO bench_dashboard;
SELECT gn2pg_add_source(format('src%s', i), 'http://127.0.0.1:9/geonature', 1,
                        options => jsonb_build_object('organism', format('Organisme %s', i), 'organism_id', (1000 + i)::text))
  FROM generate_series(1, 50) i;
-- 200 runs per source over 200 days: mostly successes, some failures.
INSERT INTO gn2pg.run_log (id, source, mode, status, started_at, finished_at, pages_done, rows_received,
                           rows_upserted, rows_unchanged, rows_failed, http_requests, bytes_received, error)
SELECT nextval('gn2pg.run_log_id_seq'), format('src%s', s), CASE WHEN r % 7 = 0 THEN 'full' ELSE 'incremental' END,
       CASE WHEN r % 23 = 0 THEN 'failed' ELSE 'success' END,
       now() - make_interval(days => 200 - r) + make_interval(mins => s),
       now() - make_interval(days => 200 - r) + make_interval(mins => s, secs => 30 + (r * s) % 900),
       (r * s) % 100, (r * s * 37) % 100000, (r * s * 13) % 5000, (r * s * 31) % 90000, CASE WHEN r % 50 = 0 THEN 20 ELSE 0 END,
       (r * s) % 100 + 2, (r * s * 37 % 100000) * 1800,
       CASE WHEN r % 23 = 0 THEN format('source "src%s": http://127.0.0.1:9/geonature/api/exports/api/1 answered HTTP 502: Bad Gateway', s) END
  FROM generate_series(1, 50) s, generate_series(1, 200) r
 ORDER BY r, s;
-- Rejected rows of some runs.
INSERT INTO gn2pg.run_error (run_id, source, id_data, uuid, item, error)
SELECT l.id, l.source, g, gen_random_uuid()::text, jsonb_build_object('id_synthese', g, 'nom_cite', 'Vulpes vulpes', 'date_debut', 'not a date'),
       'invalid timestamp in date_debut: "not a date"'
  FROM gn2pg.run_log l, generate_series(1, 20) g WHERE l.rows_failed > 0;
-- CA and JDD of each source: 5 CA, 20 JDD.
INSERT INTO gn2pg.metadata (source, level, uuid, name, parent_uuid)
SELECT format('src%s', s), 'ca', md5(format('ca %s %s', s, c))::uuid, format('Cadre %s de la source %s', c, s), NULL
  FROM generate_series(1, 50) s, generate_series(0, 4) c;
INSERT INTO gn2pg.metadata (source, level, uuid, name, parent_uuid)
SELECT format('src%s', s), 'jdd', md5(format('jdd %s %s', s, j))::uuid, format('Jeu %s de la source %s', j, s),
       md5(format('ca %s %s', s, j % 5))::uuid
  FROM generate_series(1, 50) s, generate_series(0, 19) j;
SQL
BATCH=500000
for ((start = 1; start <= ROWS; start += BATCH)); do
    end=$((start + BATCH - 1)); [ "$end" -gt "$ROWS" ] && end=$ROWS
    psql_su -d dash -c "
INSERT INTO gn2pg.observation (source, id_data, uuid, item, geom, ca_uuid, jdd_uuid, source_ca_uuid, source_jdd_uuid,
                               source_updated_at, run_id, content_hash)
SELECT format('src%s', i % 50 + 1), i, md5('obs' || i)::uuid,
       jsonb_build_object('id_synthese', i, 'nom_cite', 'Vulpes vulpes', 'cd_nom', 60585, 'date_debut', '2024-05-01 08:00:00',
                          'observateurs', 'Dupont Jean', 'comment_releve', repeat('x', 200)),
       public.ST_SetSRID(public.ST_MakePoint(5 + (i % 1000) / 1000.0, 44 + (i % 997) / 1000.0), 4326),
       md5(format('ca %s %s', i % 50 + 1, (i / 50) % 20 % 5))::uuid, md5(format('jdd %s %s', i % 50 + 1, (i / 50) % 20))::uuid,
       md5(format('ca %s %s', i % 50 + 1, (i / 50) % 20 % 5))::uuid, md5(format('jdd %s %s', i % 50 + 1, (i / 50) % 20))::uuid,
       '2024-05-01', 1, i
  FROM generate_series($start, $end) i"
    log "  $end rows"
done
psql_su -d dash -c "VACUUM ANALYZE"

log "counting rows per (source, CA, JDD) by scanning gn2pg.observation (what 0.2.0's views did on every read)"
psql_su -d dash -c '\timing on' -c "SELECT count(*) FROM (SELECT source, source_ca_uuid, source_jdd_uuid, count(*) FROM gn2pg.observation GROUP BY 1, 2, 3) x" | grep -E "^Time"
log "the same counts from gn2pg.observation_count, and the two views"
psql_su -d dash -c '\timing on' \
    -c "SELECT count(*) FROM (SELECT source, source_ca_uuid, source_jdd_uuid, sum(rows) FROM gn2pg.observation_count GROUP BY 1, 2, 3) x" \
    -c "SELECT count(*) FROM gn2pg.metadata_mapping" \
    -c "SELECT count(*) FROM gn2pg.metadata_mapping WHERE source = 'src7'" \
    -c "SELECT count(*) FROM gn2pg.flow_status" | grep -E "^Time"

log "starting gn2pg-dashboard on 127.0.0.1:$DASH_PORT"
./target/release/gn2pg-dashboard --database "postgresql://bench_dashboard:bench-auth@127.0.0.1:$PORT/dash" \
    --listen "127.0.0.1:$DASH_PORT" > "$GN2PG_TEST_DIR/dashboard.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$DASH_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
JAR="$GN2PG_TEST_DIR/cookies"
rm -f "$JAR"
token=$(curl -s -c "$JAR" "http://127.0.0.1:$DASH_PORT/sign-in" | grep -o 'name="csrf" value="[0-9a-f]*"' | head -1 | grep -o '[0-9a-f]\{64\}')
curl -s -b "$JAR" -c "$JAR" -o /dev/null -d "login=bench_admin&password=bench-admin&csrf=$token&next=/flows" \
    "http://127.0.0.1:$DASH_PORT/sign-in"
RUN=$(psql_su -d dash -tAc "SELECT min(run_id) FROM gn2pg.run_error WHERE source = 'src7'")
PAGES=(/flows /flows/table "/flows?health=failing" /sources/src7 /sources/src7/progress "/sources/src7/runs/$RUN"
       /alerts "/alerts?state=all" /admin/sources /admin/sources/src7/edit)
log "page timings (7 requests each, as bench_admin): best / median, target < 200 ms"
printf '%-28s %8s %8s %6s %s\n' page best_ms median_ms http verdict
for p in "${PAGES[@]}"; do
    times=()
    code=0
    for _ in 1 2 3 4 5 6 7; do
        out=$(curl -s -b "$JAR" -o /dev/null -w '%{http_code} %{time_total}' "http://127.0.0.1:$DASH_PORT$p")
        code=${out% *}
        times+=("$(awk -v t="${out#* }" 'BEGIN { printf "%.1f", t * 1000 }')")
    done
    sorted=$(printf '%s\n' "${times[@]}" | sort -n)
    best=$(echo "$sorted" | head -1)
    median=$(echo "$sorted" | sed -n 4p)
    verdict=$(awk -v m="$median" -v c="$code" 'BEGIN { print (c != 200 ? "ERROR" : (m < 200 ? "ok" : "SLOW")) }')
    printf '%-28s %8s %8s %6s %s\n' "$p" "$best" "$median" "$code" "$verdict"
done

