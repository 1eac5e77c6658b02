#!/usr/bin/env bash
# Runs every check and test suite: formatting, clippy, the wasm build of `shared`, unit and
# property tests, end-to-end tests with real processes, the real-Chromium browser tests and
# the network-namespace scenarios. Installs what they need first (scripts/setup.sh --test).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# Network safety: nothing in a test run may query a public STUN server.
export ATMOSPHERE_STUN_SERVERS="${ATMOSPHERE_STUN_SERVERS:-none}"
# ... and no port mapping (SSDP multicast, PCP/NAT-PMP to the gateway) outside the test
# namespaces; the namespace harness turns it on for hosts inside them.
export ATMOSPHERE_NO_PORT_MAPPING=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
start=$(date +%s)

scripts/setup.sh --test

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p atmosphere-web --target wasm32-unknown-unknown -- -D warnings

step "shared builds for wasm32-unknown-unknown"
cargo build --target wasm32-unknown-unknown -p atmosphere-shared

step "web UI (trunk build --release)"
trunk build --release

step "atmosphere binary"
cargo build -p atmosphere-server

step "cargo test (unit, property, end-to-end, browser, namespaces)"
cargo test --workspace

step "all checks passed in $(( $(date +%s) - start )) s"
