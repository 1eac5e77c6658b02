#!/usr/bin/env bash
# Installs what building (and, with --test, testing) Atmosphere needs on a fresh Debian
# machine with rustup. Everything already present is reused, so a second run is quick.
#   scripts/setup.sh          -> wasm target, trunk, wasm-bindgen-cli
#   scripts/setup.sh --test   -> also Chromium, ChromeDriver, coturn, zbar, nftables, iproute2, miniupnpd
set -euo pipefail
cd "$(dirname "$0")/.."

TRUNK_VERSION=0.21.14
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

# Debian packages -----------------------------------------------------------------------
need_pkgs=()
if [ "$want_test" = 1 ]; then
  command -v chromium >/dev/null || need_pkgs+=(chromium)
  command -v chromedriver >/dev/null || need_pkgs+=(chromium-driver)
  command -v turnserver >/dev/null || need_pkgs+=(coturn)
  [ -x /usr/sbin/miniupnpd ] || need_pkgs+=(miniupnpd-nftables)  # port-mapping router (netns_port_mapping)
  command -v zbarimg >/dev/null || need_pkgs+=(zbar-tools)
  command -v nft >/dev/null || need_pkgs+=(nftables)
  command -v ip >/dev/null || need_pkgs+=(iproute2)
  command -v nginx >/dev/null || need_pkgs+=(nginx-light)  # relay load-balancer test (docs/relay/nginx-lb.conf)
fi
command -v gzip >/dev/null || need_pkgs+=(gzip)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  step "apt-get install ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi
if [ "$want_test" = 1 ]; then
  # coturn's package may enable a system service; the tests start their own instances.
  if command -v systemctl >/dev/null && systemctl is-active --quiet coturn 2>/dev/null; then
    systemctl stop coturn || true
  fi
fi

# Rust targets and tools ----------------------------------------------------------------
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  step "rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

if ! trunk --version 2>/dev/null | grep -q " $TRUNK_VERSION"; then
  step "cargo install trunk $TRUNK_VERSION (about 7 minutes, once)"
  cargo install --locked trunk --version "$TRUNK_VERSION"
fi

# wasm-bindgen-cli must match the wasm-bindgen crate in Cargo.lock exactly.
wb_version=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/,""); print; exit}' Cargo.lock)
if [ -z "$wb_version" ]; then
  echo "cannot find wasm-bindgen in Cargo.lock" >&2
  exit 1
fi
if ! wasm-bindgen --version 2>/dev/null | grep -q " $wb_version\$"; then
  step "cargo install wasm-bindgen-cli $wb_version (about 2 minutes, once)"
  # Without --locked: with it, the install fails to resolve its webpki-roots dependency.
  cargo install wasm-bindgen-cli --version "$wb_version"
fi
