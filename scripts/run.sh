#!/usr/bin/env bash
# Builds everything and runs the host: `./scripts/run.sh [serve flags…]`.
# Open the admin link it prints (http://127.0.0.1:11451/?admin=…) in a browser.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh
printf '\n\033[1m==> building the web UI (trunk build --release)\033[0m\n'
trunk build --release
printf '\n\033[1m==> building the atmosphere binary\033[0m\n'
cargo build --release -p atmosphere-server
printf '\n\033[1m==> starting atmosphere serve\033[0m (the admin link below opens the UI)\n'
exec target/release/atmosphere serve --web-dir dist "$@"
