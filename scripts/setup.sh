#!/usr/bin/env bash
# Installs everything virtuos needs on a fresh Debian 12 machine, builds it, and runs the main
# job. Idempotent: what is already present is skipped.
#   scripts/setup.sh            install + build + main job
#   scripts/setup.sh --deps     install only (used by scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

APT_PACKAGES=(build-essential pkg-config git ca-certificates curl iproute2 python3 sqlite3 tar e2fsprogs util-linux busybox-static nginx wrk qemu-system-x86 cpio perl redis-server redis-tools libjemalloc2 libgoogle-perftools4 openssh-server openssh-client strace golang-go)
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


# eBPF toolchain (issue #6): bpf-linker built against rustc's own LLVM (no system LLVM needed),
# bpftool for inspection. The eBPF crate itself is built with nightly + rust-src (above).
if ! command -v bpftool >/dev/null; then
    step "apt: installing bpftool"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq bpftool || echo "bpftool not installable: tests fall back to the kernel's id enumeration"
fi
if ! command -v bpf-linker >/dev/null; then
    step "bpf-linker: building against rustc's LLVM (a few minutes, once)"
    t0=$(date +%s)
    sysroot=$(rustc +stable --print sysroot)
    llvm_real=$(ls "$sysroot"/lib/libLLVM.so.*-rust-* | head -n1)   # the library itself
    llvm_major=$(basename "$llvm_real" | sed -E 's/^libLLVM\.so\.([0-9]+)\..*/\1/')
    # A private copy, so that a later `rustup update` cannot pull the library from under it.
    LLVM_PREFIX_DIR="${CARGO_HOME:-$HOME/.cargo}/virtuos-llvm"
    mkdir -p "$LLVM_PREFIX_DIR/lib"
    cp -f "$llvm_real" "$LLVM_PREFIX_DIR/lib/"
    ln -sf "$(basename "$llvm_real")" "$LLVM_PREFIX_DIR/lib/libLLVM.so"
    LLVM_PREFIX="$LLVM_PREFIX_DIR" RUSTFLAGS="-C link-arg=-Wl,-rpath,$LLVM_PREFIX_DIR/lib" \
        cargo +stable install bpf-linker --version '~0.13' --locked --no-default-features --features "llvm-$llvm_major"
    echo "bpf-linker installed in $(( $(date +%s) - t0 ))s"
fi

[ "${1:-}" = "--deps" ] && exit 0

step "build: release workspace"
cargo build --release --workspace
step "build: eBPF programs (target/bpf/virtuos-ebpf.o)"
scripts/build-ebpf.sh

step "main job: virtuos-bench latency (native syscall, seccomp, ring round trips)"
mkdir -p results
./target/release/virtuos-bench latency --json results/latency.json --plot results/latency.svg
echo "wrote results/latency.json and results/latency.svg"

step "main job: nginx under wrk, native and through the network domain, the storage domain and both (virtuos-bench nginx --quick)"
./target/release/virtuos-bench nginx --quick --json results/nginx-quick.json --plot results/nginx-quick.svg
./target/release/virtuos-bench report --latency results/latency.json --nginx results/nginx-quick.json --out results/report.md
