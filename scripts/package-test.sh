#!/usr/bin/env bash
# The Debian package, end to end, as root on a Debian 12 machine with PostgreSQL 15, PostGIS and
# lintian (scripts/setup.sh):
#   1. builds the package of this checkout and the one of the previous release (0.2.0, from its
#      commit in git history, built once and cached under target/package-0.2.0/) and runs lintian;
#   2. installs 0.2.0 with dpkg into the system PostgreSQL, creates the extension in a database of
#      a throw-away cluster (127.0.0.1, port $GN2PG_PKG_PGPORT, default 55514) and harvests the
#      fixture source; starts a slow harvest and installs the new package over the old one while
#      it runs; the run ends well, the database says to update, ALTER EXTENSION gn2pg UPDATE,
#      harvests again;
#   3. creates the extension in a fresh database and harvests;
#   4. removes the package: its files are gone, and DROP EXTENSION still works without them.
# The gn2pg files found in the system PostgreSQL before the test (a development install made by
# scripts/install.sh) are put back at the end. Prints "package test: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PORT="${GN2PG_PKG_PGPORT:-55514}"
SYS_BIN=/usr/lib/postgresql/15/bin
SYS_LIB=/usr/lib/postgresql/15/lib
SYS_EXT=/usr/share/postgresql/15/extension
PKG=postgresql-15-gn2pg
ROWS=3000

passed=0
failed=0
log() { printf '\033[1m[package-test]\033[0m %s\n' "$*"; }
ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $1${2:+: $2}"; }
# check "what" command...: passes when the command succeeds.
check() { local what="$1"; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else not_ok "$what"; fi; }
# expect "what" got want
expect() { if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1" "got '$2', want '$3'"; fi; }
finish() {
    log "took $SECONDS s"
    echo "package test: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit $?
}
fatal() { not_ok "$1" "${2:-}"; cleanup; finish; }

[ "$(id -u)" -eq 0 ] || { echo "scripts/package-test.sh installs packages: run it as root" >&2; exit 1; }

# One run at a time on a machine: dpkg and the system PostgreSQL's files are shared.
exec 9>/var/lock/gn2pg-package-test.lock
flock -w 1800 9 || { echo "another package test holds /var/lock/gn2pg-package-test.lock" >&2; exit 1; }

TMP="$(mktemp -d /tmp/gn2pg-package-test.XXXXXX)"
chmod 0755 "$TMP"
SAVED="$TMP/saved-system-files"
FIXTURE_PIDS=()
cleanup() {
    for p in "${FIXTURE_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    if [ -f "$TMP/cluster/data/postmaster.pid" ]; then
        sudo -u postgres "$SYS_BIN/pg_ctl" -D "$TMP/cluster/data" -m immediate -w stop >/dev/null 2>&1
    fi
    if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q installed; then
        dpkg --purge "$PKG" >/dev/null 2>&1
    fi
    # The development install that was there before, exactly.
    if [ -d "$SAVED" ]; then
        [ -d "$SAVED/lib" ] && cp -a "$SAVED/lib/." "$SYS_LIB/"
        [ -d "$SAVED/ext" ] && cp -a "$SAVED/ext/." "$SYS_EXT/"
    fi
    rm -rf "$TMP"
}
trap 'cleanup; exit 1' INT TERM

# ---------------------------------------------------------------------------------------------
# 1. Packages.
log "building the package of this checkout"
if ! bash scripts/package.sh --out "$TMP/new" > "$TMP/package-new.log" 2>&1; then
    cat "$TMP/package-new.log" >&2
    fatal "scripts/package.sh builds the package of this checkout"
fi
NEW_DEB="$(ls "$TMP"/new/${PKG}_*_amd64.deb 2>/dev/null | head -n 1)"
NEW_VERSION="$(awk '/^\[package\]/ {p = 1; next} /^\[/ {p = 0} p && /^version *=/ {gsub(/[" ]/, ""); sub(/^version=/, ""); print; exit}' Cargo.toml)"
expect "the package is named like Debian's extension packages" "$(basename "$NEW_DEB")" "${PKG}_${NEW_VERSION}-1_amd64.deb"

# The previous release: the commit before the one that bumped Cargo.toml to 0.3.0.
BUMP="$(git log --format=%H -1 -S'version = "0.3.0"' -- Cargo.toml 2>/dev/null)"
OLD_COMMIT="$(git rev-parse --verify -q "${BUMP}^" 2>/dev/null)"
[ -n "$OLD_COMMIT" ] && git show "$OLD_COMMIT:Cargo.toml" | grep -q '^version = "0.2.0"' \
    || fatal "the 0.2.0 sources are in git history" "no commit with version 0.2.0 before the 0.3.0 bump (shallow clone?)"
OLD_DIR="$ROOT/target/package-0.2.0"
if [ "$(cat "$OLD_DIR/src/.git-commit" 2>/dev/null)" != "$OLD_COMMIT" ]; then
    rm -rf "$OLD_DIR/src"
    mkdir -p "$OLD_DIR/src"
    git archive "$OLD_COMMIT" | tar -x -C "$OLD_DIR/src"
    echo "$OLD_COMMIT" > "$OLD_DIR/src/.git-commit"
fi
log "building the 0.2.0 package (commit ${OLD_COMMIT:0:10}; cached in target/package-0.2.0)"
started=$SECONDS
if ! SOURCE_DATE_EPOCH="$(git log -1 --format=%ct "$OLD_COMMIT")" \
    bash scripts/package.sh --source "$OLD_DIR/src" --target-dir "$OLD_DIR/target" --out "$TMP/old" \
    > "$TMP/package-old.log" 2>&1; then
    cat "$TMP/package-old.log" >&2
    fatal "scripts/package.sh builds the 0.2.0 package from its sources"
fi
log "0.2.0 package built in $((SECONDS - started)) s"
OLD_DEB="$(ls "$TMP"/old/${PKG}_0.2.0-1_amd64.deb 2>/dev/null | head -n 1)"
check "the 0.2.0 package is built" test -f "$OLD_DEB"

contents="$(dpkg-deb -c "$NEW_DEB" | awk '{print $6}')"
for f in "$SYS_LIB/gn2pg.so" "$SYS_EXT/gn2pg.control" "$SYS_EXT/gn2pg--$NEW_VERSION.sql" \
         "$SYS_EXT/gn2pg--0.1.0.sql" "$SYS_EXT/gn2pg--0.2.0.sql" "$SYS_EXT/gn2pg--0.1.0--0.2.0.sql" \
         "$SYS_EXT/gn2pg--0.2.0--$NEW_VERSION.sql" "/usr/share/doc/$PKG/copyright" \
         "/usr/share/doc/$PKG/changelog.Debian.gz"; do
    if grep -qx ".$f" <<< "$contents"; then ok "the package has $f"; else not_ok "the package has $f"; fi
done
expect "Depends" "$(dpkg-deb -f "$NEW_DEB" Depends | grep -o 'postgresql-15, postgresql-15-postgis-3')" \
    "postgresql-15, postgresql-15-postgis-3"
expect "Recommends" "$(dpkg-deb -f "$NEW_DEB" Recommends)" "postgresql-15-cron"
expect "Section" "$(dpkg-deb -f "$NEW_DEB" Section)" "database"
check "the library is stripped" bash -c "dpkg-deb --fsys-tarfile '$NEW_DEB' | tar -xO .$SYS_LIB/gn2pg.so > '$TMP/so' && ! readelf -S '$TMP/so' | grep -q ' .symtab'"

if command -v lintian >/dev/null; then
    for deb in "$NEW_DEB" "$OLD_DEB"; do
        out="$(lintian -I --fail-on error,warning "$deb" 2>&1)"
        status=$?
        [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/    lintian: /'
        if [ $status -eq 0 ]; then ok "lintian: no error or warning ($(basename "$deb"))"; else not_ok "lintian: no error or warning ($(basename "$deb"))"; fi
    done
else
    not_ok "lintian is installed (scripts/setup.sh)"
fi

# The dashboard's package, with the real binary: its files, and the packaged binary started with
# the packaged settings (their keys must be the ones the program reads).
DASH_DEB="$(ls "$TMP"/new/gn2pg-dashboard_*_amd64.deb 2>/dev/null | head -n 1)"
DASH_WHAT="gn2pg-dashboard package"
if [ -n "$DASH_DEB" ]; then
    dash="$(dpkg-deb -c "$DASH_DEB" | awk '{print $6}')"
    check "$DASH_WHAT: binary, systemd unit, configuration" bash -c \
        "grep -qx ./usr/bin/gn2pg-dashboard <<< '$dash' && grep -qx ./lib/systemd/system/gn2pg-dashboard.service <<< '$dash' && grep -qx ./etc/gn2pg/dashboard.toml <<< '$dash'"
    dpkg-deb -x "$DASH_DEB" "$TMP/dash-files"
    # The packaged settings with the real binary: the settings parse (exit status 2 and the usage
    # otherwise), and it goes as far as connecting (to a port nothing listens on).
    printf 'secret\n' > "$TMP/dash-password"
    out="$(cd "$TMP" && GN2PG_DASHBOARD_DATABASE_PASSWORD_FILE="$TMP/dash-password" timeout 60 \
        "$TMP/dash-files/usr/bin/gn2pg-dashboard" --config "$TMP/dash-files/etc/gn2pg/dashboard.toml" \
        --database "postgresql://gn2pg_dashboard@127.0.0.1:9/sinp" --listen 127.0.0.1:0 2>&1)"
    status=$?
    if [ $status -eq 1 ] && ! grep -q '^usage' <<< "$out"; then
        ok "$DASH_WHAT: the packaged binary reads the packaged settings and connects"
    else
        not_ok "$DASH_WHAT: the packaged binary reads the packaged settings and connects" "exit $status: $out"
    fi
    expect "$DASH_WHAT: the unit starts it with the packaged settings" \
        "$(grep '^ExecStart=' "$TMP/dash-files/lib/systemd/system/gn2pg-dashboard.service")" \
        "ExecStart=/usr/bin/gn2pg-dashboard --config /etc/gn2pg/dashboard.toml"
    dpkg-deb -e "$DASH_DEB" "$TMP/dash-control"
    check "$DASH_WHAT: the unit runs as the unprivileged user, the configuration binds 127.0.0.1" bash -c \
        "dpkg-deb --fsys-tarfile '$DASH_DEB' | tar -xO ./lib/systemd/system/gn2pg-dashboard.service | grep -qx 'User=gn2pg-dashboard' \
         && dpkg-deb --fsys-tarfile '$DASH_DEB' | tar -xO ./etc/gn2pg/dashboard.toml | grep -q '^listen = \"127.0.0.1:' \
         && grep -q 'adduser --system' '$TMP/dash-control/postinst' && grep -qx /etc/gn2pg/dashboard.toml '$TMP/dash-control/conffiles'"
    if command -v lintian >/dev/null; then
        out="$(lintian -I --fail-on error,warning "$DASH_DEB" 2>&1)"
        status=$?
        [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/    lintian: /'
        if [ $status -eq 0 ]; then ok "lintian: $DASH_WHAT"; else not_ok "lintian: $DASH_WHAT"; fi
    fi
else
    not_ok "$DASH_WHAT is built" "$(tail -n 5 "$TMP/package-new.log" 2>/dev/null)"
fi

# ---------------------------------------------------------------------------------------------
# 2. Install 0.2.0, harvest, upgrade in place while a harvest runs.
# The gn2pg files of the system PostgreSQL with their checksums.
system_files() { md5sum "$SYS_LIB"/gn2pg.so "$SYS_EXT"/gn2pg.control "$SYS_EXT"/gn2pg--*.sql 2>/dev/null | sort; }
mkdir -p "$SAVED/lib" "$SAVED/ext"
if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q installed; then
    dpkg --purge "$PKG" >/dev/null   # left by an interrupted run of this test
fi
BEFORE="$(system_files)"
cp -a "$SYS_LIB"/gn2pg.so "$SAVED/lib/" 2>/dev/null
cp -a "$SYS_EXT"/gn2pg.control "$SYS_EXT"/gn2pg--*.sql "$SAVED/ext/" 2>/dev/null
log "saved $(find "$SAVED" -type f | wc -l) gn2pg files of a development install, put back at the end"

log "dpkg -i $(basename "$OLD_DEB")"
check "dpkg installs the 0.2.0 package" dpkg -i "$OLD_DEB"
expect "the 0.2.0 package is installed" "$(dpkg-query -W -f='${Version} ${Status}' "$PKG" 2>/dev/null)" "0.2.0-1 install ok installed"
expect "its control file says 0.2.0" "$(grep -o "default_version = '[^']*'" "$SYS_EXT/gn2pg.control")" "default_version = '0.2.0'"

cargo build --release -q -p gn2pg-pg-test --bin gn2pg-fixture-source >/dev/null 2>&1
FIXTURE="$ROOT/target/release/gn2pg-fixture-source"
[ -x "$FIXTURE" ] || fatal "the fixture source is built"
# start_fixture <args>: starts the fixture on a free port; its base URL in $FIXTURE_URL. (Not in
# a subshell, so that cleanup knows its pid; without the lock's descriptor, so that it cannot
# hold the lock if it outlives the test.)
start_fixture() {
    local out="$TMP/fixture-${#FIXTURE_PIDS[@]}.log"
    "$FIXTURE" --listen 127.0.0.1:0 "$@" > "$out" 2>&1 9>&- &
    FIXTURE_PIDS+=($!)
    for _ in $(seq 1 100); do
        grep -qo 'http://[^ ]*' "$out" && break
        sleep 0.1
    done
    FIXTURE_URL="$(grep -o 'http://[^ ]*' "$out" | head -n 1)"
}
start_fixture --rows "$ROWS"
FAST_URL="$FIXTURE_URL"
# Another seed: a uuid is stored once across sources.
start_fixture --rows "$ROWS" --seed 7 --slow-ms 250
SLOW_URL="$FIXTURE_URL"
[ -n "$FAST_URL" ] && [ -n "$SLOW_URL" ] || fatal "the fixture sources start"

mkdir -p "$TMP/cluster"
chown postgres:postgres "$TMP/cluster"
sudo -u postgres "$SYS_BIN/initdb" -D "$TMP/cluster/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null \
    || fatal "initdb of the throw-away cluster"
cat >> "$TMP/cluster/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$TMP/cluster'
max_worker_processes = 16
fsync = off
log_min_messages = warning
CONF
sudo -u postgres "$SYS_BIN/pg_ctl" -D "$TMP/cluster/data" -l "$TMP/cluster/server.log" -w -t 60 start >/dev/null 9>&- \
    || fatal "the throw-away cluster starts on 127.0.0.1:$PORT" "$(tail -n 5 "$TMP/cluster/server.log")"
# sql <db> <statement>: one value, errors on stderr.
sql() { "$SYS_BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d "$1" -XAtq -v ON_ERROR_STOP=1 -c "$2"; }
sql_err() { "$SYS_BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d "$1" -XAtq -v ON_ERROR_STOP=1 -c "$2" 2>&1 >/dev/null; }
rows() { sql "$1" "SELECT count(*) || ' ' || count(DISTINCT uuid) || ' ' || count(geom) FROM gn2pg.observation WHERE source = '$2'"; }

sql postgres "CREATE DATABASE upgraded" >/dev/null
check "CREATE EXTENSION gn2pg CASCADE with the 0.2.0 package" sql upgraded "CREATE EXTENSION gn2pg CASCADE"
expect "the database has gn2pg 0.2.0" "$(sql upgraded "SELECT extversion FROM pg_extension WHERE extname = 'gn2pg'")" "0.2.0"
sql upgraded "SELECT gn2pg_add_source('pub', '$FAST_URL', 3)" >/dev/null
expect "0.2.0 harvests the fixture" "$(sql upgraded "SELECT gn2pg_harvest('pub', 'full') ->> 'status'")" "success"
expect "0.2.0 stored every row (rows, uuids, geometries)" "$(rows upgraded pub)" "$ROWS $ROWS $ROWS"

sql upgraded "SELECT gn2pg_add_source('slow', '$SLOW_URL', 3, options => '{\"page_size\": 100}')" >/dev/null
RUN="$(sql upgraded "SELECT gn2pg_harvest_async('slow', 'full')")"
for _ in $(seq 1 300); do
    [ "$(sql upgraded "SELECT coalesce((SELECT pages_done FROM gn2pg.run_log WHERE id = $RUN), 0) >= 2")" = t ] && break
    sleep 0.1
done
WORKER_PID="$(sql upgraded "SELECT worker_pid FROM gn2pg.run_log WHERE id = $RUN")"
log "run $RUN of source slow is running in worker $WORKER_PID; dpkg -i $(basename "$NEW_DEB")"
check "dpkg installs the new package over 0.2.0" dpkg -i "$NEW_DEB"
expect "the new package is installed" "$(dpkg-query -W -f='${Version}' "$PKG" 2>/dev/null)" "$NEW_VERSION-1"
expect "the harvest was still running when the library was replaced" \
    "$(sql upgraded "SELECT status FROM gn2pg.run_log WHERE id = $RUN")" "running"
check "the running worker keeps the replaced library mapped" grep -q "$SYS_LIB/gn2pg.so (deleted)" "/proc/$WORKER_PID/maps"
err="$(sql_err upgraded "SELECT gn2pg_harvest('pub')")"
if grep -q "this database has gn2pg 0.2.0: run ALTER EXTENSION gn2pg UPDATE" <<< "$err"; then
    ok "a new session says the database must be updated"
else
    not_ok "a new session says the database must be updated" "$err"
fi
err="$(sql_err upgraded "ALTER EXTENSION gn2pg UPDATE")"
if grep -q "cannot update while harvests run in this database" <<< "$err"; then
    ok "ALTER EXTENSION gn2pg UPDATE waits until no harvest runs"
else
    not_ok "ALTER EXTENSION gn2pg UPDATE waits until no harvest runs" "$err"
fi
for _ in $(seq 1 600); do
    [ "$(sql upgraded "SELECT status FROM gn2pg.run_log WHERE id = $RUN")" != running ] && break
    sleep 0.2
done
expect "the harvest running across the upgrade succeeded" "$(sql upgraded "SELECT status FROM gn2pg.run_log WHERE id = $RUN")" "success"
expect "... and stored every row" "$(rows upgraded slow)" "$ROWS $ROWS $ROWS"
check "ALTER EXTENSION gn2pg UPDATE" sql upgraded "ALTER EXTENSION gn2pg UPDATE"
expect "the database has gn2pg $NEW_VERSION" "$(sql upgraded "SELECT extversion FROM pg_extension WHERE extname = 'gn2pg'")" "$NEW_VERSION"
expect "the updated database harvests again" "$(sql upgraded "SELECT gn2pg_harvest('pub', 'full') ->> 'status'")" "success"
expect "... finding every row unchanged" "$(sql upgraded "SELECT rows_unchanged FROM gn2pg.run_log WHERE source = 'pub' ORDER BY id DESC LIMIT 1")" "$ROWS"
expect "source ids go on after the update" "$(sql upgraded "SELECT gn2pg_add_source('third', '$FAST_URL', 5)")" "3"

# ---------------------------------------------------------------------------------------------
# 3. A fresh database on the new package.
sql postgres "CREATE DATABASE fresh" >/dev/null
check "CREATE EXTENSION gn2pg CASCADE with the new package" sql fresh "CREATE EXTENSION gn2pg CASCADE"
expect "the fresh database has gn2pg $NEW_VERSION" "$(sql fresh "SELECT extversion FROM pg_extension WHERE extname = 'gn2pg'")" "$NEW_VERSION"
sql fresh "SELECT gn2pg_add_source('pub', '$FAST_URL', 2, token => '0123456789abcdef0123456789abcdef')" >/dev/null
expect "the new package harvests the fixture" "$(sql fresh "SELECT gn2pg_harvest('pub') ->> 'status'")" "success"
expect "... every row" "$(rows fresh pub)" "$ROWS $ROWS $ROWS"
err="$(sql_err fresh "DROP EXTENSION gn2pg CASCADE")"
expect "DROP EXTENSION gn2pg without pg_cron: no error, no warning" "$err" ""

# ---------------------------------------------------------------------------------------------
# 4. Removal.
FILES="$(dpkg -L "$PKG" 2>/dev/null)"
check "dpkg removes the package" dpkg --purge "$PKG"
left=""
while IFS= read -r f; do
    [ -f "$f" ] && left="$left $f"
done <<< "$FILES"
expect "no file of the package is left" "$left" ""
expect "no gn2pg file is left in the system PostgreSQL" "$(ls "$SYS_LIB"/gn2pg* "$SYS_EXT"/gn2pg* 2>/dev/null)" ""
err="$(sql_err upgraded "DROP EXTENSION gn2pg CASCADE")"
if [ "$(sql upgraded "SELECT count(*) FROM pg_extension WHERE extname = 'gn2pg'")" = 0 ]; then
    ok "DROP EXTENSION gn2pg still works once the package is removed"
else
    not_ok "DROP EXTENSION gn2pg still works once the package is removed" "$err"
fi

cleanup
expect "the gn2pg files of the system PostgreSQL are back as they were before the test" "$(system_files)" "$BEFORE"
finish
