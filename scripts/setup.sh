#!/usr/bin/env bash
# Installs everything gn2pg needs on Debian 12, as root. Idempotent: every step checks first.
#   apt: PostgreSQL 15 (server, dev headers), PostGIS 3, pg_cron, clang (bindgen), sudo,
#        lintian (checks the Debian package, scripts/package-test.sh)
#   cargo: cargo-pgrx 0.18.0, then `cargo pgrx init` against the system PostgreSQL 15
#   browser tests of the dashboard: Debian's chromium, and playwright-core from npm (npm ci)
set -euo pipefail

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-15-postgis-3 postgresql-15-cron
          clang libclang-dev pkg-config libssl-dev sudo curl ca-certificates build-essential
          lintian chromium)

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/setup.sh must run as root (it installs Debian packages)" >&2
    exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "Debian packages present"
fi

if ! command -v cargo >/dev/null; then
    # shellcheck disable=SC1091
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null || { echo "cargo (Rust toolchain) is required" >&2; exit 1; }

if [ "$(cargo pgrx --version 2>/dev/null || true)" != "cargo-pgrx 0.18.0" ]; then
    log "installing cargo-pgrx 0.18.0"
    cargo install cargo-pgrx --version 0.18.0 --locked
else
    log "cargo-pgrx 0.18.0 present"
fi

PGRX_HOME="${PGRX_HOME:-$HOME/.pgrx}"
if ! grep -qs "pg15 = \"$PG_CONFIG\"" "$PGRX_HOME/config.toml"; then
    log "cargo pgrx init --pg15 $PG_CONFIG"
    cargo pgrx init --pg15 "$PG_CONFIG"
else
    log "pgrx configured for $PG_CONFIG"
fi

# The dashboard's browser tests drive Debian's chromium with npm's playwright-core (no browser
# download): dashboard/e2e/package-lock.json pins it.
if ! command -v npm >/dev/null; then
    log "installing nodejs and npm"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
E2E="$(dirname "$0")/../dashboard/e2e"
if [ ! -f "$E2E/node_modules/.package-lock.json" ] || [ "$E2E/package-lock.json" -nt "$E2E/node_modules/.package-lock.json" ]; then
    log "npm ci in dashboard/e2e (playwright-core)"
    (cd "$E2E" && npm ci --no-audit --no-fund --loglevel=error)
else
    log "playwright-core present"
fi
