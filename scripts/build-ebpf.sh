#!/usr/bin/env bash
# Builds the eBPF programs (ebpf/, nightly + bpf-linker from scripts/setup.sh --deps) and puts
# the object where virtuos-redirect looks for it: target/bpf/virtuos-ebpf.o (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/bpf/virtuos-ebpf.o}
command -v bpf-linker >/dev/null || { echo "bpf-linker missing: run scripts/setup.sh --deps" >&2; exit 1; }
(cd ebpf && cargo +nightly build --release -Z build-std=core --target bpfel-unknown-none)
mkdir -p "$(dirname "$out")"
cp -f ebpf/target/bpfel-unknown-none/release/virtuos-ebpf "$out"
echo "eBPF object: $out"
