#!/usr/bin/env bash
# Installs everything virtuos needs on a fresh Debian 12 machine, builds it, and runs the main
# job. Idempotent: what is already present is skipped.
#   scripts/setup.sh            install + build + main job
#   scripts/setup.sh --deps     install only (used by scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

APT_PACKAGES=(build-essential pkg-config git ca-certificates curl iproute2)
missing=()
for p in "${APT_PACKAGES[@]}"; do have_pkg "$p" || missing+=("$p"); done
if ((${#missing[@]})); then
    step "apt: installing ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
else
    step "apt: all packages present"
fi

if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v rustup >/dev/null || { echo "rustup not found: install Rust from https://rustup.rs first" >&2; exit 1; }

step "rust: stable with clippy/rustfmt, nightly with miri and rust-src"
rustup component list --toolchain stable --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt --toolchain stable
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
installed_nightly=$(rustup component list --toolchain nightly --installed 2>/dev/null)
for c in miri rust-src; do
    grep -q "^$c" <<<"$installed_nightly" || rustup component add "$c" --toolchain nightly
done
if ! command -v cargo-fuzz >/dev/null; then
    step "cargo-fuzz: installing (a few minutes, once)"
    cargo install cargo-fuzz --locked
fi

[ "${1:-}" = "--deps" ] && exit 0

step "build: release workspace"
cargo build --release --workspace

step "main job: virtuos-bench latency (native syscall, seccomp, ring round trips)"
mkdir -p results
./target/release/virtuos-bench latency --json results/latency.json --plot results/latency.svg
echo "wrote results/latency.json and results/latency.svg"
