#!/usr/bin/env bash
# The one benchmark command: builds the release `atmosphere` binary and the bench (and the
# web bundle if dist/ has none), runs every benchmark on loopback, and writes the results
# into docs/BENCHMARKS.md (generated block) and target/bench/results.json.
#
#   scripts/bench.sh                       # everything (about 7 minutes once built)
#   scripts/bench.sh --only relay,mint     # some sections: connect, relay, mint, bundle, host,
#                                          # handshake, messages
#   scripts/bench.sh --help                # all knobs (runs, seconds per sample, sessions …)
#
# Not part of scripts/test.sh: benchmarks need a release build and minutes of wall time,
# and timing is never a test assertion.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# Network safety: nothing started here may query a public STUN server.
export ATMOSPHERE_STUN_SERVERS=none
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
target="${CARGO_TARGET_DIR:-target}"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if ! ls dist/*.wasm >/dev/null 2>&1; then
  command -v trunk >/dev/null || scripts/setup.sh
  step "web bundle (trunk build --release)"
  trunk build --release
fi

step "release build (atmosphere, atmosphere-bench)"
cargo build --release -p atmosphere-server -p atmosphere-bench

step "benchmarks"
exec "$target/release/atmosphere-bench" --bin "$target/release/atmosphere" "$@"
