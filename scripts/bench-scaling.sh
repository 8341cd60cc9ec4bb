#!/usr/bin/env bash
# Scaling run of the nginx benchmark, for a machine with more cores than the development VM.
#
#   scripts/bench-scaling.sh [MAX_WORKERS] [extra virtuos-bench nginx options...]
#
# Uses the release binaries already built in target/release (copy the tree, or carry
# target/release/{virtuos-bench,virtuos-net,virtuos-storage,virtuos-redirect,libvirtuos_preload.so}
# to the bigger machine: nothing is compiled here). Needs nginx and wrk on PATH there. Writes
# results into $OUT (a device run's output folder) or results/.
set -euo pipefail
cd "$(dirname "$0")/.."
max=${1:-4}
shift || true
out=${OUT:-results}
mkdir -p "$out"
for b in virtuos-bench virtuos-net virtuos-storage virtuos-redirect libvirtuos_preload.so; do
    [ -e "target/release/$b" ] || { echo "target/release/$b missing: run 'cargo build --release --workspace' first" >&2; exit 2; }
done
for t in nginx wrk; do
    command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || { echo "$t not found: install it (apt-get install -y nginx-light wrk)" >&2; exit 2; }
done
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
./target/release/virtuos-bench nginx --scale "$max" --json "$out/nginx-scaling.json" --plot "$out/nginx-scaling.svg" "$@"
