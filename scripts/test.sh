#!/usr/bin/env bash
# Runs every virtuos test: formatting, lints, unit/property/integration tests, Miri on the ring
# logic, short fuzz runs of every decoder, and a quick latency benchmark smoke run.
# Installs what is missing first (scripts/setup.sh --deps). Set FUZZ_SECONDS to fuzz longer.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --deps

step() { printf '\n==> %s\n' "$*"; }
FUZZ_SECONDS=${FUZZ_SECONDS:-15}

step "ebpf: build (nightly + bpf-linker), fmt, clippy"
scripts/build-ebpf.sh
(cd ebpf && cargo fmt --check && cargo clippy --release -q -- -D warnings)
# redirector/tests/bpf.rs (attach/detach/status/top, run --enforce on the real kernel) runs in
# the workspace tests below; as root it must not skip.
if [ "$(id -u)" -eq 0 ]; then export VIRTUOS_BPF_REQUIRE=1; fi
step "fmt"
cargo fmt --all --check
step "clippy"
cargo clippy --workspace --all-targets -- -D warnings
step "tests (debug)"
# The integration tests run the real binaries and the preload shim (a cdylib that `cargo test`
# alone does not build).
cargo build --workspace
cargo test --workspace
step "tests (release: the transport and runtime at full speed, incl. the 8x100k stress test)"
# The integration suites of the redirector and the servers ran above against the debug build;
# the release binaries (built here) serve the benchmark smoke runs and the VM harness below.
cargo build --release --workspace
cargo test --release -p virtuos-abi -p xen-transport -p virtuos-service
step "miri: ring and record logic"
cargo +nightly miri test -p virtuos-abi -p xen-transport --lib
step "fuzz: ${FUZZ_SECONDS}s per target"
(cd fuzz && for t in $(cargo +nightly fuzz list); do
    echo "-- $t"
    cargo +nightly fuzz run "$t" -- -max_total_time="$FUZZ_SECONDS" 2>&1 | tail -n 2
done)
step "bench smoke: virtuos-bench latency --quick"
cargo build --release --workspace
./target/release/virtuos-bench latency --quick --json target/latency-quick.json --plot target/latency-quick.svg
python3 - <<'PY'
import json
r = json.load(open("target/latency-quick.json"))
names = {x["name"] for x in r["results"]}
want = {"native_syscall", "ring_spin", "ring_sleep", "seccomp_user_notif", "seccomp_trap_sigsys"}
missing = want - names
assert not missing, f"latency results missing {missing}"
assert all(x["median_ns"] > 0 for x in r["results"])
print("latency report complete:", sorted(names))
PY
step "bench smoke: virtuos-bench nginx --quick (every mode serves correct bytes, req/s > 0)"
./target/release/virtuos-bench nginx --quick --json target/nginx-quick.json
python3 - <<'PY'
import json
r = json.load(open("target/nginx-quick.json"))
rps = [(c["mode"], c["keepalive"], (c["requests_per_s"] or {}).get("median", 0)) for c in r["summary"]]
for mode in ("native", "net", "storage", "both"):
    mine = [v for m, _, v in rps if m == mode]
    assert mine and all(v > 0 for v in mine), f"nginx quick: no requests/s for {mode}: {rps}"
assert all(v["ok"] for s in r["stacks"] for v in s["verified"]), "nginx quick: a mode served wrong bytes"
print("nginx quick report (mode, keep-alive, req/s):", [(m, k, round(v)) for m, k, v in rps],
      "skipped:", [s["mode"] for s in r["skipped"]])
PY
step "bench smoke: virtuos-bench redis --quick (redis-server native and through the network domain, SET/GET at pipeline 1 and 16)"
./target/release/virtuos-bench redis --quick --json target/redis-quick.json
python3 - <<'PY'
import json
r = json.load(open("target/redis-quick.json"))
rps = {(c["mode"], c["test"], c["pipeline"]): (c["requests_per_s"] or {}).get("median", 0) for c in r["summary"]}
skipped = [s["mode"] for s in r["skipped"]]
# Both modes must have run: the network domain is built and started by the bench itself.
assert not skipped, f"redis quick: modes skipped: {r['skipped']}"
for mode in ("native", "net"):
    for test in ("SET", "GET"):
        for p in (1, 16):
            assert rps.get((mode, test, p), 0) > 0, f"redis quick: no requests/s for {mode} {test} pipeline {p}: {rps}"
assert all(s["check_ok"] for s in r["stacks"]), "redis quick: a mode did not return the value it stored"
print("redis quick report (mode, test, pipeline, req/s):", [(m, t, p, round(v)) for (m, t, p), v in rps.items()],
      "skipped:", skipped)
PY
step "bench smoke: virtuos-bench storage --quick (cached reads native and through the storage domain)"
./target/release/virtuos-bench storage --quick --json target/storage-quick.json
python3 - <<'PY'
import json
r = json.load(open("target/storage-quick.json"))
got = {(c["mode"], c["threads"], c["op"]) for c in r["cells"] if c["ops_per_s"] > 0}
want = {(m, t, o) for m in ("native", "storage") for t in (1, 4) for o in ("lseek", "pread-1B", "pread-4K-seq", "pread-4K-rand")}
assert want <= got, f"storage results missing {sorted(want - got)}"
print("storage report complete:", len(got), "cells")
PY
step "Xen in a VM: vm/xen-test.sh (Xen 4.17 + Debian 6.1 dom0 + storage domU under QEMU TCG, BPF LSM)"
vm/xen-test.sh

echo; echo "all tests passed"
