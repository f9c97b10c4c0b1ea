#!/usr/bin/env bash
# Fuzzes gn2pg's parsers and encoders (fuzz/fuzz_targets/parsers.rs) with libFuzzer for a given
# time, one job, and prints libFuzzer's figures. Not part of the test suite.
#   bash scripts/fuzz.sh <seconds>
# Needs a nightly toolchain (rustup toolchain list) and cargo-fuzz (installed here if missing).
# The corpus grows in fuzz/corpus/parsers (kept between runs, not committed); a crash is saved
# in fuzz/artifacts/parsers/ and replayed with: cargo +nightly fuzz run parsers <file>
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_TO_RUN="${1:?usage: scripts/fuzz.sh <seconds>}"
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "scripts/fuzz.sh needs a nightly Rust toolchain (rustup toolchain install nightly)" >&2
    exit 2
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p corpus/parsers
cp -n seeds/parsers/* corpus/parsers/
# -rss_limit_mb: a run that needs more than this is a finding too; inputs up to 256 KB.
exec cargo +nightly fuzz run parsers --jobs 1 -- \
    -max_total_time="$SECONDS_TO_RUN" -max_len=262144 -rss_limit_mb=2048 -print_final_stats=1 \
    -timeout=20 corpus/parsers
