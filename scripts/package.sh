#!/usr/bin/env bash
# Builds the Debian package of gn2pg for Debian's PostgreSQL 15, as Debian names its own
# extension packages: postgresql-15-gn2pg_<version>-<revision>_amd64.deb. It holds the release
# build of the library, the control file, the install script of this version and of every
# released version (sql/released/), and every upgrade script, at Debian's paths
# (/usr/lib/postgresql/15/lib, /usr/share/postgresql/15/extension).
#
# When the source tree has the dashboard (dashboard/), its own package is built too:
# gn2pg-dashboard_<version>-<revision>_amd64.deb (see build_dashboard_deb below).
#
# Usage: scripts/package.sh [--source DIR] [--out DIR] [--target-dir DIR]
#   --source      the gn2pg source tree (default: this checkout); older versions are built from
#                 a `git archive` of their commit (scripts/package-test.sh does so for 0.2.0)
#   --out         where the .deb files go (default: <source>/target/debian)
#   --target-dir  cargo's target directory (default: cargo's own)
# Environment: GN2PG_PG_CONFIG (the PostgreSQL 15 to compile against; Debian's by default; only
# the compilation uses it, the package always targets Debian's paths), GN2PG_DEB_REVISION
# (default 1), GN2PG_DEB_MAINTAINER (default: the author of this checkout's last commit),
# GN2PG_DASHBOARD_BIN (a prebuilt gn2pg-dashboard binary: packages it without building).
# Needs cargo-pgrx 0.18.0 (scripts/setup.sh), dpkg-deb and dpkg-shlibdeps (dpkg-dev).
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
SRC="$HERE"
OUT=""
TARGET_DIR=""
while [ $# -gt 0 ]; do
    case "$1" in
    --source) SRC="$(cd "$2" && pwd)"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --target-dir) TARGET_DIR="$2"; shift 2 ;;
    *) echo "usage: $0 [--source DIR] [--out DIR] [--target-dir DIR]" >&2; exit 2 ;;
    esac
done
OUT="${OUT:-$SRC/target/debian}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
if [ -n "$TARGET_DIR" ]; then
    mkdir -p "$TARGET_DIR"
    export CARGO_TARGET_DIR="$(cd "$TARGET_DIR" && pwd)"
fi
log() { printf '\033[1m[package]\033[0m %s\n' "$*"; }

PG_CONFIG="${GN2PG_PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
export PGRX_PG_CONFIG_PATH="$PG_CONFIG"
PG_MAJOR=15
LIBDIR=usr/lib/postgresql/$PG_MAJOR/lib
EXTDIR=usr/share/postgresql/$PG_MAJOR/extension
NAME=postgresql-$PG_MAJOR-gn2pg

# The [package] version of the source tree's Cargo.toml.
VERSION=$(awk '/^\[package\]/ {p = 1; next} /^\[/ {p = 0} p && /^version *=/ {gsub(/[" ]/, "", $0); sub(/^version=/, ""); print; exit}' "$SRC/Cargo.toml")
[ -n "$VERSION" ] || { echo "no version in $SRC/Cargo.toml" >&2; exit 1; }
DEB_VERSION="$VERSION-${GN2PG_DEB_REVISION:-1}"
MAINTAINER="${GN2PG_DEB_MAINTAINER:-$(git -C "$HERE" log -1 --format='%an <%ae>' 2>/dev/null || true)}"
[ -n "$MAINTAINER" ] || { echo "set GN2PG_DEB_MAINTAINER ('Name <address>')" >&2; exit 1; }
# Reproducible: every date in the package is the commit's. A source tree outside git (a `git
# archive`) names its commit in .git-commit; give its date in SOURCE_DATE_EPOCH.
if [ "$(git -C "$SRC" rev-parse --show-toplevel 2>/dev/null)" = "$SRC" ]; then
    COMMIT="$(git -C "$SRC" rev-parse --short HEAD)"
    EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$SRC" log -1 --format=%ct)}"
else
    COMMIT="$(cut -c1-7 "$SRC/.git-commit" 2>/dev/null || echo unknown)"
    EPOCH="${SOURCE_DATE_EPOCH:-$(stat -c %Y "$SRC/Cargo.toml")}"
fi
export SOURCE_DATE_EPOCH="$EPOCH"
FIRST_YEAR="$(git -C "$HERE" log --format=%ad --date=format:%Y 2>/dev/null | tail -n 1)"
LAST_YEAR="$(date -u -d "@$EPOCH" +%Y)"
COPYRIGHT_YEARS="${FIRST_YEAR:-$LAST_YEAR}"
[ "$COPYRIGHT_YEARS" = "$LAST_YEAR" ] || COPYRIGHT_YEARS="$COPYRIGHT_YEARS-$LAST_YEAR"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Files of the package tree: directories 0755, files 0644 unless said otherwise, owned by root
# (dpkg-deb --root-owner-group), dated $EPOCH.
finish_tree() {
    local root="$1"
    find "$root" -path "$root/DEBIAN" -prune -o -type d -exec chmod 0755 {} +
    find "$root" -path "$root/DEBIAN" -prune -o -type f ! -perm -0100 -exec chmod 0644 {} +
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0r md5sum) > "$root/DEBIAN/md5sums"
    chmod 0644 "$root/DEBIAN/md5sums"
    find "$root" -exec touch -h -d "@$EPOCH" {} +
}

# Debian's dependency on the C libraries a binary links (libc6, libgcc-s1), as dh_shlibdeps.
shlib_depends() {
    local dir="$WORK/shlibs"
    mkdir -p "$dir/debian"
    printf 'Source: gn2pg\n\nPackage: gn2pg\nArchitecture: any\n' > "$dir/debian/control"
    (cd "$dir" && dpkg-shlibdeps -O "$@" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
}

# debian/copyright (machine-readable format): gn2pg, and the Rust crates compiled into the binary.
write_copyright() {
    local file="$1" package="$2" manifest="$3"
    {
        cat <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: gn2pg
Upstream-Contact: $MAINTAINER

Files: *
Copyright: $COPYRIGHT_YEARS gn2pg contributors
License: AGPL-3.0-or-later
 This program is free software: you can redistribute it and/or modify it under the terms of
 the GNU Affero General Public License as published by the Free Software Foundation, either
 version 3 of the License, or (at your option) any later version.
 .
 This program is distributed in the hope that it will be useful, but WITHOUT ANY WARRANTY;
 without even the implied warranty of MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.
 See the GNU Affero General Public License for more details.
 .
 You should have received a copy of the GNU Affero General Public License along with this
 program. If not, see <https://www.gnu.org/licenses/>.
EOF
        # The crates compiled into the binary: normal dependencies, for this target, deduplicated.
        local crates
        crates="$(cd "$(dirname "$manifest")" && cargo tree --manifest-path "$manifest" -p "$package" -e normal \
            --prefix none --target x86_64-unknown-linux-gnu -f '{p} {l}' 2>/dev/null \
            | sed -e 's/ (\*)$//' -e 's/ (proc-macro)//' | grep -v "^$package v" | grep -v '(/' | sort -u \
            | sed -e 's/^\([^ ]*\) v\([^ ]*\) \(.*\)$/ \1 \2: \3/' -e 's/^\([^ ]*\) v\([^ ]*\)$/ \1 \2: see the crate/')" \
            || crates=""
        if [ -n "$crates" ]; then
            echo
            echo "Comment: The binary also contains these Rust crates, each under its own license"
            echo " (SPDX expression), as published on crates.io:"
            printf '%s\n' "$crates"
        fi
    } > "$file"
}

# changelog.Debian.gz: one entry for this build.
write_changelog() {
    local file="$1" package="$2" text="$3"
    {
        printf '%s (%s) unstable; urgency=medium\n\n' "$package" "$DEB_VERSION"
        printf '  * %s\n' "$text"
        printf '    Built from commit %s.\n\n' "$COMMIT"
        printf ' -- %s  %s\n' "$MAINTAINER" "$(LC_ALL=C date -u -R -d "@$EPOCH")"
    } | gzip -9n > "$file"
}

# What lintian reports that does not apply to a package built outside Debian's archive.
write_lintian_overrides() {
    local root="$1" package="$2"
    mkdir -p "$root/usr/share/lintian/overrides"
    cat > "$root/usr/share/lintian/overrides/$package" <<EOF
# Built by the gn2pg project, not uploaded to Debian: there is no ITP bug to close.
$package: initial-upload-closes-no-bugs
EOF
}

build_extension_deb() {
    local root="$WORK/$NAME" stage="$WORK/stage"
    log "building gn2pg $VERSION (release) with cargo pgrx package"
    (cd "$SRC" && cargo pgrx package --manifest-path "$SRC/Cargo.toml" --pg-config "$PG_CONFIG" --out-dir "$stage" \
        2>&1 | grep -Ev '^\s*(Compiling|Checking|Finished|Building|Installing|Copying|Discovered|Writing)' || true)
    local so
    so="$(find "$stage" -name gn2pg.so -type f -print -quit)"
    [ -n "$so" ] || { echo "cargo pgrx package made no gn2pg.so" >&2; exit 1; }
    local stage_ext
    stage_ext="$(dirname "$(find "$stage" -name gn2pg.control -type f -print -quit)")"
    [ -f "$stage_ext/gn2pg--$VERSION.sql" ] || { echo "no install script gn2pg--$VERSION.sql" >&2; exit 1; }

    mkdir -p "$root/DEBIAN" "$root/$LIBDIR" "$root/$EXTDIR" "$root/usr/share/doc/$NAME"
    # Shared objects are installed stripped (Debian policy 10.1), without their symbol table.
    objcopy --strip-unneeded --remove-section=.comment --remove-section=.note "$so" "$root/$LIBDIR/gn2pg.so"
    chmod 0644 "$root/$LIBDIR/gn2pg.so"
    cp "$stage_ext"/gn2pg.control "$stage_ext"/gn2pg--*.sql "$root/$EXTDIR/"
    # Install scripts of released versions: CREATE EXTENSION gn2pg VERSION '<old>' (tests, restores).
    if compgen -G "$SRC/sql/released/gn2pg--*.sql" >/dev/null; then
        cp "$SRC"/sql/released/gn2pg--*.sql "$root/$EXTDIR/"
    fi
    gzip -9n < "$SRC/README.md" > "$root/usr/share/doc/$NAME/README.md.gz"
    write_copyright "$root/usr/share/doc/$NAME/copyright" gn2pg "$SRC/Cargo.toml"
    write_changelog "$root/usr/share/doc/$NAME/changelog.Debian.gz" "$NAME" "gn2pg $VERSION for PostgreSQL $PG_MAJOR."
    write_lintian_overrides "$root" "$NAME"

    local shlibs installed_size
    shlibs="$(shlib_depends "$root/$LIBDIR/gn2pg.so")"
    installed_size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
    cat > "$root/DEBIAN/control" <<EOF
Package: $NAME
Version: $DEB_VERSION
Architecture: amd64
Maintainer: $MAINTAINER
Installed-Size: $installed_size
Depends: postgresql-$PG_MAJOR, postgresql-$PG_MAJOR-postgis-3${shlibs:+, $shlibs}
Recommends: postgresql-$PG_MAJOR-cron
Section: database
Priority: optional
Description: harvest GeoNature exports into PostgreSQL $PG_MAJOR (gn2pg)
 gn2pg is a PostgreSQL extension that harvests biodiversity observations from
 GeoNature instances (the Export module's paged JSON API) into PostgreSQL and
 PostGIS. Harvests run in background workers of the database, incrementally,
 and can be scheduled with pg_cron; runs, errors and alerts are recorded in
 tables.
 .
 This package holds gn2pg $VERSION for PostgreSQL $PG_MAJOR: the library, the
 install scripts of this and earlier versions and the upgrade scripts. After
 installing it, run CREATE EXTENSION gn2pg CASCADE in a database, or ALTER
 EXTENSION gn2pg UPDATE in each database that has an earlier version.
EOF
    finish_tree "$root"
    local deb="$OUT/${NAME}_${DEB_VERSION}_amd64.deb"
    dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
    log "built $deb"
}

# The dashboard's package, when the source tree has it (dashboard/, binary gn2pg-dashboard): the
# binary, a hardened systemd unit, and its settings in /etc/gn2pg/dashboard.toml (the keys of
# dashboard/src/config.rs; scripts/package-test.sh starts the packaged binary with that file).
build_dashboard_deb() {
    local pkg=gn2pg-dashboard root="$WORK/gn2pg-dashboard" bin="${GN2PG_DASHBOARD_BIN:-}"
    if [ -z "$bin" ]; then
        log "building gn2pg-dashboard (release)"
        (cd "$SRC" && cargo build --release --locked -p gn2pg-dashboard 2>&1 | grep -Ev '^\s*(Compiling|Checking)' || true)
        bin="${CARGO_TARGET_DIR:-$SRC/target}/release/gn2pg-dashboard"
    fi
    [ -x "$bin" ] || { echo "no gn2pg-dashboard binary at $bin" >&2; exit 1; }
    mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/gn2pg" \
        "$root/usr/share/doc/$pkg" "$root/usr/share/man/man8"
    objcopy --strip-unneeded --remove-section=.comment --remove-section=.note "$bin" "$root/usr/bin/gn2pg-dashboard"
    chmod 0755 "$root/usr/bin/gn2pg-dashboard"
    cat > "$root/etc/gn2pg/dashboard.toml" <<'EOF'
# gn2pg-dashboard settings, read by the gn2pg-dashboard service (`gn2pg-dashboard --help` lists
# every key; README.md.gz in /usr/share/doc/gn2pg-dashboard/, "Web dashboard", says more).
#
# The dashboard connects as its own login role, over TCP with a password (scram-sha-256 in
# pg_hba.conf), to the database that has gn2pg:
#   CREATE ROLE gn2pg_dashboard LOGIN NOINHERIT PASSWORD '...';
#   GRANT <each person's login role> TO gn2pg_dashboard;
# Put the password in /etc/gn2pg/dashboard.password (owner root, group gn2pg-dashboard, mode
# 0640), set the database name below, then: systemctl start gn2pg-dashboard
database = "postgresql://gn2pg_dashboard@127.0.0.1:5432/postgres"
database_password_file = "/etc/gn2pg/dashboard.password"
# Keep it on the loopback interface (the unit allows nothing else) and publish it through a
# reverse proxy that terminates TLS.
listen = "127.0.0.1:8089"
# trusted_proxies = ["127.0.0.1"]
EOF
    cat > "$root/lib/systemd/system/gn2pg-dashboard.service" <<'EOF'
[Unit]
Description=gn2pg dashboard (GeoNature harvest flows)
Documentation=file:///usr/share/doc/gn2pg-dashboard/README.md.gz
After=network.target postgresql.service

[Service]
Type=simple
User=gn2pg-dashboard
Group=gn2pg-dashboard
ExecStart=/usr/bin/gn2pg-dashboard --config /etc/gn2pg/dashboard.toml
Restart=on-failure
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
# Only the loopback interface: the listen address in the configuration cannot widen it.
IPAddressDeny=any
IPAddressAllow=localhost

[Install]
WantedBy=multi-user.target
EOF
    printf '/etc/gn2pg/dashboard.toml\n' > "$root/DEBIAN/conffiles"
    cat > "$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd gn2pg-dashboard >/dev/null; then
        adduser --system --group --no-create-home --home /nonexistent --quiet gn2pg-dashboard
    fi
    # The configuration may hold a database password: readable by the service only, unless the
    # administrator chose otherwise (dpkg-statoverride).
    if ! dpkg-statoverride --list /etc/gn2pg/dashboard.toml >/dev/null; then
        chown root:gn2pg-dashboard /etc/gn2pg/dashboard.toml
        chmod 0640 /etc/gn2pg/dashboard.toml
    fi
fi
if [ "$1" = configure ] || [ "$1" = abort-upgrade ] || [ "$1" = abort-deconfigure ] || [ "$1" = abort-remove ]; then
    if deb-systemd-helper debian-installed gn2pg-dashboard.service >/dev/null 2>&1 \
       || [ -z "$2" ]; then
        deb-systemd-helper enable gn2pg-dashboard.service >/dev/null || true
    fi
    # Not started on a first install: it needs its database role and password first (see the
    # configuration file). An upgrade restarts it if it was running.
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        deb-systemd-invoke try-restart gn2pg-dashboard.service >/dev/null || true
    fi
fi
exit 0
EOF
    cat > "$root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    deb-systemd-invoke stop gn2pg-dashboard.service >/dev/null || true
fi
exit 0
EOF
    cat > "$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = remove ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper mask gn2pg-dashboard.service >/dev/null || true
fi
if [ "$1" = purge ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper purge gn2pg-dashboard.service >/dev/null || true
    deb-systemd-helper unmask gn2pg-dashboard.service >/dev/null || true
fi
exit 0
EOF
    chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
    cat <<'EOF' | gzip -9n > "$root/usr/share/man/man8/gn2pg-dashboard.8.gz"
.TH GN2PG-DASHBOARD 8 "" "gn2pg" "System Administration"
.SH NAME
gn2pg-dashboard \- web dashboard of gn2pg harvest flows
.SH SYNOPSIS
.B gn2pg-dashboard
.RB [ \-\-config
.IR file ]
.SH DESCRIPTION
.B gn2pg-dashboard
shows the harvest flows of a database with gn2pg (gn2pg.flow_status): their health, last runs
and open alerts. The Debian package runs it as the systemd service gn2pg-dashboard, as the
unprivileged system user gn2pg-dashboard, listening on 127.0.0.1 only.
.SH FILES
.I /etc/gn2pg/dashboard.toml
.SH SEE ALSO
.I /usr/share/doc/gn2pg-dashboard/README.md.gz
EOF
    gzip -9n < "$SRC/README.md" > "$root/usr/share/doc/$pkg/README.md.gz"
    write_copyright "$root/usr/share/doc/$pkg/copyright" gn2pg-dashboard "$SRC/Cargo.toml"
    write_changelog "$root/usr/share/doc/$pkg/changelog.Debian.gz" "$pkg" "gn2pg-dashboard $VERSION."
    write_lintian_overrides "$root" "$pkg"
    local shlibs installed_size
    shlibs="$(shlib_depends "$root/usr/bin/gn2pg-dashboard")"
    installed_size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
    cat > "$root/DEBIAN/control" <<EOF
Package: $pkg
Version: $DEB_VERSION
Architecture: amd64
Maintainer: $MAINTAINER
Installed-Size: $installed_size
Depends: adduser${shlibs:+, $shlibs}
Recommends: $NAME
Section: database
Priority: optional
Description: web dashboard of gn2pg harvest flows
 A small web server that shows the GeoNature harvest flows of a database with
 the gn2pg extension: health of each source, last runs, open alerts. It runs as
 the systemd service gn2pg-dashboard, as an unprivileged system user, and
 listens on 127.0.0.1 only (configuration: /etc/gn2pg/dashboard.toml).
EOF
    finish_tree "$root"
    chmod 0755 "$root/usr/bin/gn2pg-dashboard"
    local deb="$OUT/${pkg}_${DEB_VERSION}_amd64.deb"
    dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
    log "built $deb"
}

build_extension_deb
if [ -f "$SRC/dashboard/Cargo.toml" ] || [ -n "${GN2PG_DASHBOARD_BIN:-}" ]; then
    build_dashboard_deb
fi
